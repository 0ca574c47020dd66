package identity

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/ferry-dev/ferry/job"
)

// SessionPath is where ferry servers serve SessionHandler.
const SessionPath = "/v1/session/client-certificate"

// ClientCertInfo is the body of GET /v1/session/client-certificate: what the
// server received from the caller, and its verdict — ferry's
// HTTP_SSL_CLIENT_CERT_INFO.
type ClientCertInfo struct {
	// Certificate is the client's certificate (DER; base64 in JSON).
	Certificate []byte `json:"certificate"`
	// Chain is Session.Chain: the verified chain, leaf first and root last,
	// when Verified; otherwise the certificates the client sent. Chain[0]
	// is Certificate.
	Chain [][]byte `json:"chain"`
	// SHA1 and SHA256 are lowercase hex thumbprints of Certificate (as
	// openssl x509 -fingerprint, and nginx's $ssl_client_fingerprint).
	SHA1   string `json:"sha1"`
	SHA256 string `json:"sha256"`
	// Subject and Issuer are RFC 4514 distinguished names.
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	// Serial is the serial number in lowercase hex.
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Flags, Verified, Principal, Role and DeniedByMapper are the verdict
	// (see Session).
	Flags          []string `json:"flags"`
	Verified       bool     `json:"verified"`
	Principal      string   `json:"principal"`
	Role           Role     `json:"role"`
	DeniedByMapper bool     `json:"denied_by_mapper"`
	// ChannelBinding is "tls-exporter=<base64url>" of the connection, when
	// asked for with ?channel_binding=true (HTTP_RECEIVE_SECURE_CHANNEL_TOKEN).
	ChannelBinding string `json:"channel_binding,omitempty"`
}

// Info reports the session as ClientCertInfo (without channel binding).
func (s *Session) Info() ClientCertInfo {
	leaf := s.Leaf
	if leaf == nil {
		return ClientCertInfo{Chain: [][]byte{}, Flags: slices.Clone(s.Flags)}
	}
	sha1Sum := sha1.Sum(leaf.Raw)
	sha256Sum := sha256.Sum256(leaf.Raw)
	chain := make([][]byte, 0, len(s.Chain))
	for _, c := range s.Chain {
		chain = append(chain, c.Raw)
	}
	return ClientCertInfo{
		Certificate:    leaf.Raw,
		Chain:          chain,
		SHA1:           hex.EncodeToString(sha1Sum[:]),
		SHA256:         hex.EncodeToString(sha256Sum[:]),
		Subject:        leaf.Subject.String(),
		Issuer:         leaf.Issuer.String(),
		Serial:         fmt.Sprintf("%x", leaf.SerialNumber),
		NotBefore:      leaf.NotBefore.UTC(),
		NotAfter:       leaf.NotAfter.UTC(),
		Flags:          slices.Clone(s.Flags),
		Verified:       s.Verified,
		Principal:      s.Principal,
		Role:           s.Role,
		DeniedByMapper: s.DeniedByMapper,
	}
}

// SessionHandler serves GET (and HEAD) /v1/session/client-certificate, the
// analog of HttpReceiveClientCertificate: ClientCertInfo for the caller's
// certificate whatever its verdict, with "channel_binding" added when the
// query is ?channel_binding=true. Mount it behind Middleware with SessionPath
// among the allowed paths (it then reuses the session Middleware made), or
// on its own.
//
// Errors (problem+json): no certificate → 404 ERROR_NOT_FOUND (0x80070490);
// a query parameter other than channel_binding, or a value that is not a
// boolean → 400 E_INVALIDARG; another method → 405; a connection that cannot
// export keying material (TLS 1.2 without Extended Master Secret) → 400
// E_NOTIMPL.
func (a *Authenticator) SessionHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeProblem(w, r, &job.Error{Code: withStatus(job.E_INVALIDARG, http.StatusMethodNotAllowed),
				Detail: fmt.Sprintf("method %s is not allowed; use GET", r.Method)})
			return
		}
		binding, err := parseSessionQuery(r.URL.RawQuery)
		if err != nil {
			writeProblem(w, r, err)
			return
		}
		s, ok := SessionFrom(r.Context())
		if !ok {
			s, _ = a.Authenticate(r)
		}
		if s == nil {
			writeProblem(w, r, job.Errorf(job.ERROR_NOT_FOUND, "the connection carries no client certificate"))
			return
		}
		info := s.Info()
		if binding {
			cb, err := ChannelBinding(r.TLS)
			if err != nil {
				writeProblem(w, r, &job.Error{Code: job.E_NOTIMPL, Detail: "this connection has no tls-exporter channel binding (TLS 1.2 without Extended Master Secret); connect with TLS 1.3", Err: err})
				return
			}
			info.ChannelBinding = cb
		}
		writeJSON(w, http.StatusOK, info)
	})
}

func parseSessionQuery(raw string) (binding bool, err error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return false, job.Errorf(job.E_INVALIDARG, "the query string is malformed: %v", err)
	}
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if k != "channel_binding" {
			return false, job.Errorf(job.E_INVALIDARG, "unknown query parameter %q; the only one is channel_binding", k)
		}
	}
	v, ok := q["channel_binding"]
	if !ok {
		return false, nil
	}
	if len(v) != 1 {
		return false, job.Errorf(job.E_INVALIDARG, "query parameter channel_binding is given %d times", len(v))
	}
	b, err := strconv.ParseBool(v[0])
	if err != nil {
		return false, job.Errorf(job.E_INVALIDARG, "query parameter channel_binding=%q is not true or false", v[0])
	}
	return b, nil
}
