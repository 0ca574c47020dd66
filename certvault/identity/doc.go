// Package identity owns ferry's X.509 identities: the deployment CA and
// issuance of identities (ECDSA P-256, one spiffe://<trust-domain>/<role>/<name>
// URI SAN each), the files of a credentials directory, principals and roles,
// authentication of TLS callers by their client certificate, the report of
// what a server received from a caller (the analog of the HTTP Server API's
// HttpReceiveClientCertificate, served at GET /v1/session/client-certificate),
// and RFC 9266 tls-exporter channel binding on both ends.
//
// It is imported by coordinator, certvault, agent and services, and imports
// only job (for the error vocabulary) and the standard library.
//
// # Authentication model
//
// Servers ask for a client certificate without letting the TLS stack judge it
// (tls.RequestClientCert, see ServerTLSConfig): a caller whose certificate is
// expired, untrusted or has the wrong usage still completes the handshake, so
// the server can tell it exactly what is wrong (problem+json with
// CERT_E_EXPIRED, CERT_E_UNTRUSTEDROOT, …) instead of a bare TLS alert.
// Authenticator then verifies the peer's chain itself, on every request,
// against the deployment's roots. Authorization reads only what that
// verification produced (Session.Principal, Session.Role, Session.Chain when
// Session.Verified); tls.ConnectionState.PeerCertificates alone is never
// trusted.
package identity
