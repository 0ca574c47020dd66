package job

import (
	"github.com/ferry-dev/ferry/events"
)

// CertRef names a job's HTTPS client certificate: where it is in certvault
// and which one. It never holds key material; the agent fetches the key
// from certvault when it needs it.
type CertRef struct {
	Location string `json:"location"` // BG_CERT_STORE_LOCATION name
	Store    string `json:"store"`
	SHA1     string `json:"sha1"`
	Subject  string `json:"subject,omitempty"`
}

// Certificate commands (IBackgroundCopyJobHttpOptions, IBackgroundCopyJob).
type (
	// SetClientCertificate names the job's client certificate
	// (SetClientCertificateByID / ByName). The caller has already resolved
	// the certificate in certvault as the owner; only the owner may set it.
	SetClientCertificate struct {
		Location     int    // BG_CERT_STORE_LOCATION value, 0..7
		LocationName string // its name, "CURRENT_USER"
		Store        string // canonical store name
		SHA1         string // 40 lower-case hex digits
		Subject      string
		// By is "id" (by thumbprint) or "name" (by subject name).
		By              string
		CallerPrincipal string
	}
	// RemoveClientCertificate removes the job's client certificate; only
	// the owner may. No certificate set: nothing to do (S_FALSE).
	RemoveClientCertificate struct {
		CallerPrincipal string
	}
	// TakeOwnership makes NewOwner the job's owner. Only administrators may
	// (the coordinator enforces it). A client certificate set by the
	// previous owner is removed in the same decision.
	TakeOwnership struct {
		NewOwner string
	}
)

func (SetClientCertificate) commandName() string    { return "set the client certificate of" }
func (RemoveClientCertificate) commandName() string { return "remove the client certificate of" }
func (TakeOwnership) commandName() string           { return "take ownership of" }

// Ways a certificate is named (ClientCertificateSet.By).
const (
	CertByID   = "id"
	CertByName = "name"
)

func decideSetCert(j *Job, c SetClientCertificate) ([]events.Payload, error) {
	if err := ownerOnly(j, c.CallerPrincipal, "set"); err != nil {
		return nil, err
	}
	if err := notFinal(j, c); err != nil {
		return nil, err
	}
	switch {
	case c.Location < 0 || c.Location > 7 || c.LocationName == "":
		return nil, Errorf(E_NOTIMPL, "store location %d is not a BG_CERT_STORE_LOCATION value (0..7)", c.Location)
	case c.Store == "":
		return nil, Errorf(RPC_X_NULL_REF_POINTER, "the store name is required")
	case c.SHA1 == "":
		return nil, Errorf(RPC_X_NULL_REF_POINTER, "the certificate thumbprint is required")
	case !isLowerHex(c.SHA1, 40):
		return nil, Errorf(RPC_X_BAD_STUB_DATA, "the thumbprint must be 40 lower-case hex digits (20 bytes)")
	case c.By != CertByID && c.By != CertByName:
		return nil, Errorf(E_INVALIDARG, "a certificate is named by %q or %q, not %q", CertByID, CertByName, c.By)
	}
	ref := CertRef{Location: c.LocationName, Store: c.Store, SHA1: c.SHA1, Subject: c.Subject}
	if j.ClientCertificate != nil && *j.ClientCertificate == ref {
		return nil, nil
	}
	return one(&events.ClientCertificateSet{Location: c.LocationName, Store: c.Store, SHA1: c.SHA1, Subject: c.Subject, By: c.By}), nil
}

func decideRemoveCert(j *Job, c RemoveClientCertificate) ([]events.Payload, error) {
	if err := ownerOnly(j, c.CallerPrincipal, "remove"); err != nil {
		return nil, err
	}
	if err := notFinal(j, c); err != nil {
		return nil, err
	}
	if j.ClientCertificate == nil {
		return nil, nil
	}
	return one(&events.ClientCertificateRemoved{Reason: events.CertRemovedByOwner}), nil
}

func decideTakeOwnership(j *Job, c TakeOwnership) ([]events.Payload, error) {
	if c.NewOwner == "" {
		return nil, Errorf(RPC_X_NULL_REF_POINTER, "the new owner is required")
	}
	if err := notFinal(j, c); err != nil {
		return nil, err
	}
	if c.NewOwner == j.Owner {
		return nil, nil
	}
	out := []events.Payload{&events.JobOwnerChanged{From: j.Owner, To: c.NewOwner}}
	if j.ClientCertificate != nil {
		// BITS: the certificate is removed when the job changes owner.
		out = append(out, &events.ClientCertificateRemoved{Reason: events.CertRemovedOwnershipMoved})
	}
	if len(j.Options.CustomHeaders) > 0 || len(j.Options.WriteOnlyHeaders) > 0 || j.Options.Notify != nil {
		// BITS: so are the custom headers (they may carry credentials) and
		// the notification target (BITS: the notify command line).
		opts := cloneOptions(j.Options)
		opts.CustomHeaders, opts.WriteOnlyHeaders, opts.Notify = nil, nil, nil
		out = append(out, &events.JobModified{Options: &opts, Reason: events.CertRemovedOwnershipMoved})
	}
	return out, nil
}

// ownerOnly refuses anyone but the job's owner, administrators included:
// BITS lets only the owner name the job's client certificate.
func ownerOnly(j *Job, principal, what string) error {
	if principal == "" || principal != j.Owner {
		return Errorf(E_ACCESSDENIED, "only the job's owner may %s its client certificate", what)
	}
	return nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
