package events

import "time"

// Certificate-vault audit event types. certvault appends one of these for
// every import, removal, key release, refused release and key-encryption-key
// rotation, on ferry.evt.vault.<id>: <id> is the certificate's SHA-1
// thumbprint in lower-case hex for the events about one certificate (so a
// thumbprint's whole history, in every store, is one subject),
// VaultKeyringID for rotations, and VaultHeadersID(job) for a job's
// write-only custom headers.
//
// The payloads carry thumbprints, names and outcomes only: never key bytes,
// passwords, header values, grants or channel-binding values. The names and their fields
// are a public API (docs/events.md, docs/certvault.md); never change their
// meaning, add a version instead.
const (
	TypeCertificateImported = "CertificateImported"
	TypeCertificateRemoved  = "CertificateRemoved"
	TypeKeyReleased         = "KeyReleased"
	TypeKeyReleaseDenied    = "KeyReleaseDenied"
	TypeVaultKeysRewrapped  = "VaultKeysRewrapped"

	TypeWriteOnlyHeadersStored        = "WriteOnlyHeadersStored"
	TypeWriteOnlyHeadersDeleted       = "WriteOnlyHeadersDeleted"
	TypeWriteOnlyHeadersReleased      = "WriteOnlyHeadersReleased"
	TypeWriteOnlyHeadersReleaseDenied = "WriteOnlyHeadersReleaseDenied"
)

// VaultKeyringID is the aggregate ID of the vault's keyring events
// (VaultKeysRewrapped). It cannot be mistaken for a thumbprint, which is 40
// hex digits.
const VaultKeyringID = "keyring"

// VaultHeadersPrefix starts the aggregate ID of a job's write-only header
// events: VaultHeadersID(jobID) is "headers-<jobID>".
const VaultHeadersPrefix = "headers-"

// VaultHeadersID is the aggregate ID of the vault events about job jobID's
// write-only custom headers (WriteOnlyHeaders*): one subject holds their
// whole history. It cannot be mistaken for a thumbprint or VaultKeyringID.
// It is a valid ID when ValidID(VaultHeadersID(jobID)) holds.
func VaultHeadersID(jobID string) string { return VaultHeadersPrefix + jobID }

// CertificateImported: a certificate with its private key was stored. The
// store is named canonically: Scope is the principal owning a per-principal
// store (CURRENT_USER, CURRENT_SERVICE) and empty for a shared one; Location
// is the BG_CERT_STORE_LOCATION name without its prefix; Store is upper-case.
// An import that replaced the same certificate in the same store is another
// CertificateImported with Replaced set.
type CertificateImported struct {
	Scope    string `json:"scope,omitempty"`
	Location string `json:"location"`
	Store    string `json:"store"`
	SHA1     string `json:"sha1"`
	SHA256   string `json:"sha256"`
	Subject  string `json:"subject"`
	Issuer   string `json:"issuer"`
	Serial   string `json:"serial"`
	// NotAfter is the end of the certificate's validity.
	NotAfter time.Time `json:"not_after"`
	// ChainLen counts the stored certificates, the leaf included.
	ChainLen int `json:"chain_len"`
	// Format is "pem" or "pfx".
	Format string `json:"format"`
	// KEKVersion is the key-encryption key that wraps the record's data key.
	KEKVersion int  `json:"kek_version"`
	Replaced   bool `json:"replaced,omitempty"`
}

// CertificateRemoved: a certificate and its encrypted key were deleted from
// a store.
type CertificateRemoved struct {
	Scope    string `json:"scope,omitempty"`
	Location string `json:"location"`
	Store    string `json:"store"`
	SHA1     string `json:"sha1"`
	SHA256   string `json:"sha256"`
}

// KeyReleased: a certificate's private key left the vault for an agent that
// holds a job's lease. It is appended before the key is handed out.
type KeyReleased struct {
	Scope    string `json:"scope,omitempty"`
	Location string `json:"location"`
	Store    string `json:"store"`
	SHA1     string `json:"sha1"`
	SHA256   string `json:"sha256"`
	// Owner is the job owner on whose behalf the store was read.
	Owner string `json:"owner"`
	// Agent is the principal the key was released to.
	Agent string `json:"agent"`
	Job   string `json:"job,omitempty"`
	Lease string `json:"lease,omitempty"`
	// GrantID is the jti of the release grant.
	GrantID string `json:"grant_id,omitempty"`
}

// KeyReleaseDenied: a key release was refused. Code and HResult are the
// answer the requester got; Reason says which check failed. Location and
// Store are as requested when they do not name a store (Scope is then
// empty).
type KeyReleaseDenied struct {
	Scope    string `json:"scope,omitempty"`
	Location string `json:"location"`
	Store    string `json:"store"`
	SHA1     string `json:"sha1"`
	Owner    string `json:"owner"`
	Agent    string `json:"agent"`
	Job      string `json:"job,omitempty"`
	Lease    string `json:"lease,omitempty"`
	GrantID  string `json:"grant_id,omitempty"`
	Code     string `json:"code"`
	HResult  string `json:"hresult"`
	Reason   string `json:"reason"`
}

// VaultKeysRewrapped: a rotation rewrapped the data keys of Rewrapped records
// with key-encryption key ActiveVersion; FromVersions are the versions they
// were wrapped with before. Key-encryption keys are never in the event.
type VaultKeysRewrapped struct {
	ActiveVersion int   `json:"active_version"`
	FromVersions  []int `json:"from_versions"`
	Rewrapped     int   `json:"rewrapped"`
}

// Reasons of WriteOnlyHeadersDeleted.
const (
	HeadersDeletedByOwner        = "removed"
	HeadersDeletedOwnershipMoved = "ownership-changed"
	// HeadersDeletedNotApplied: the values were stored but the job refused
	// to list them (it changed meanwhile), so they were taken back.
	HeadersDeletedNotApplied = "not-applied"
)

// WriteOnlyHeadersStored: the values of a job's write-only custom headers
// (MakeCustomHeadersWriteOnly) were stored, encrypted like private keys,
// replacing any the job had (Replaced). Names are the header names, one
// per header line, in order; the values are never in an event.
type WriteOnlyHeadersStored struct {
	Job   string   `json:"job"`
	Owner string   `json:"owner"`
	Names []string `json:"names"`
	// KEKVersion is the key-encryption key that wraps the record's data key.
	KEKVersion int  `json:"kek_version"`
	Replaced   bool `json:"replaced,omitempty"`
}

// WriteOnlyHeadersDeleted: a job's write-only header values were deleted.
// Reason is "removed" (the owner cleared them), "ownership-changed" or
// "not-applied".
type WriteOnlyHeadersDeleted struct {
	Job    string   `json:"job"`
	Names  []string `json:"names"`
	Reason string   `json:"reason"`
}

// WriteOnlyHeadersReleased: a job's write-only header values left the vault
// for the agent that holds the job's lease. It is appended before they are
// handed out.
type WriteOnlyHeadersReleased struct {
	Job     string   `json:"job"`
	Owner   string   `json:"owner"`
	Agent   string   `json:"agent"`
	Lease   string   `json:"lease,omitempty"`
	GrantID string   `json:"grant_id,omitempty"`
	Names   []string `json:"names"`
}

// WriteOnlyHeadersReleaseDenied: a release of a job's write-only header
// values was refused. Code and HResult are the answer the requester got;
// Reason says which check failed.
type WriteOnlyHeadersReleaseDenied struct {
	Job     string `json:"job"`
	Owner   string `json:"owner,omitempty"`
	Agent   string `json:"agent"`
	Lease   string `json:"lease,omitempty"`
	GrantID string `json:"grant_id,omitempty"`
	Code    string `json:"code"`
	HResult string `json:"hresult"`
	Reason  string `json:"reason"`
}

func (*CertificateImported) EventType() string { return TypeCertificateImported }
func (*CertificateRemoved) EventType() string  { return TypeCertificateRemoved }
func (*KeyReleased) EventType() string         { return TypeKeyReleased }
func (*KeyReleaseDenied) EventType() string    { return TypeKeyReleaseDenied }
func (*VaultKeysRewrapped) EventType() string  { return TypeVaultKeysRewrapped }

func (*WriteOnlyHeadersStored) EventType() string        { return TypeWriteOnlyHeadersStored }
func (*WriteOnlyHeadersDeleted) EventType() string       { return TypeWriteOnlyHeadersDeleted }
func (*WriteOnlyHeadersReleased) EventType() string      { return TypeWriteOnlyHeadersReleased }
func (*WriteOnlyHeadersReleaseDenied) EventType() string { return TypeWriteOnlyHeadersReleaseDenied }

func (*CertificateImported) EventVersion() int { return 1 }
func (*CertificateRemoved) EventVersion() int  { return 1 }
func (*KeyReleased) EventVersion() int         { return 1 }
func (*KeyReleaseDenied) EventVersion() int    { return 1 }
func (*VaultKeysRewrapped) EventVersion() int  { return 1 }

func (*WriteOnlyHeadersStored) EventVersion() int        { return 1 }
func (*WriteOnlyHeadersDeleted) EventVersion() int       { return 1 }
func (*WriteOnlyHeadersReleased) EventVersion() int      { return 1 }
func (*WriteOnlyHeadersReleaseDenied) EventVersion() int { return 1 }

func init() {
	register(func() Payload { return new(CertificateImported) })
	register(func() Payload { return new(CertificateRemoved) })
	register(func() Payload { return new(KeyReleased) })
	register(func() Payload { return new(KeyReleaseDenied) })
	register(func() Payload { return new(VaultKeysRewrapped) })
	register(func() Payload { return new(WriteOnlyHeadersStored) })
	register(func() Payload { return new(WriteOnlyHeadersDeleted) })
	register(func() Payload { return new(WriteOnlyHeadersReleased) })
	register(func() Payload { return new(WriteOnlyHeadersReleaseDenied) })
}
