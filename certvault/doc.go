// Package certvault owns ferry's client-certificate stores: certificates
// with their private keys, addressed as BITS addresses them
// (SetClientCertificateByID/ByName: a BG_CERT_STORE_LOCATION, a store name,
// a SHA-1 thumbprint or a subject name), kept in the JetStream KV bucket
// ferry_certs with every private key encrypted at rest (an AES-256-GCM
// envelope: a random data key per record, wrapped by a versioned
// key-encryption key from a Keyring), imported from PEM or PKCS#12, listed
// as metadata only, released to the release endpoint through Vault.Key
// alone, and audited: every import, removal, release and refused release is
// an event on ferry.evt.vault.<sha1> (rotations on ferry.evt.vault.keyring),
// appended before the change it records takes effect.
//
// It also keeps the values of jobs' write-only custom headers (BITS
// MakeCustomHeadersWriteOnly; StoreHeaders, DeleteHeaders): one record per
// job in the same bucket, sealed with the same envelope, rewrapped by the
// same rotations, audited on ferry.evt.vault.headers-<job> with header
// names only, and released like a key — to the agent holding the job's
// lease, over the channel-bound, HPKE-sealed release
// (HeadersReleaseHandler, FetchHeaders) — only while the job's events list
// the headers.
//
// # Store locations
//
// The caller (Caller: a principal and a role, given by the identity layer)
// and the location decide whose store a name designates and what the caller
// may do with it; anything else is E_ACCESSDENIED:
//
//	location                        store                                    read              change
//	CURRENT_USER (0)                the caller's own                         the caller        the caller
//	LOCAL_MACHINE (1)               shared                                   every role        admin
//	CURRENT_SERVICE (2)             the calling service's own                role service      role service
//	SERVICES (3)                    "<principal>\<store>": that principal's  admin             admin
//	                                CURRENT_SERVICE store
//	USERS (4)                       "<principal>\<store>": that principal's  admin             admin
//	                                CURRENT_USER store
//	CURRENT_USER_GROUP_POLICY (5)   shared, policy for users                 user, admin       admin
//	LOCAL_MACHINE_GROUP_POLICY (6)  shared, machine policy                   every role        admin
//	LOCAL_MACHINE_ENTERPRISE (7)    shared, enterprise-wide                  every role        admin
//
// USERS and SERVICES name stores as Windows does for those locations
// ("<SID>\<store>", "<service>\<store>"), split at the last backslash;
// that is why store names may not contain one. MY, CA, ROOT and SPC exist
// (empty) everywhere; other names are created by their first import and
// remain when emptied. Store names are case-insensitive (stored upper-case)
// and at most 255 UTF-16 code units.
//
// docs/certvault.md has the full rules: codes, the subject-name rule,
// encryption and rotation, the audit events and the HTTP API.
//
// certvault imports job (the error vocabulary) and events; never agent,
// coordinator or services.
package certvault
