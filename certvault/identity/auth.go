package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/job"
)

// ServerTLSConfig is the TLS configuration of a ferry server: cert as its
// identity, and a request (not a demand) for a client certificate.
//
// ClientAuth is tls.RequestClientCert: the TLS stack asks for a certificate
// and checks that the client holds its key, but does not judge it. A caller
// with an expired certificate, one from another CA, or one without the
// clientAuth usage therefore completes the handshake and gets an answer that
// says so (401 problem+json with CERT_E_EXPIRED, CERT_E_UNTRUSTEDROOT,
// CERT_E_WRONG_USAGE, and GET /v1/session/client-certificate shows what was
// received) instead of a bare "remote error: tls: bad certificate" (the
// step-ca lesson: mTLS errors must be explained). The price is that every
// request must go through Authenticator, which verifies the chain itself;
// Middleware does that. clientCAs is only advertised (certificate_authorities
// in the CertificateRequest) to help clients with several certificates pick
// one; it is not used to verify.
//
// MinVersion is TLS 1.2, not 1.3-only, so that ordinary clients of the
// coordinator keep working; RFC 9266 channel binding still works in TLS 1.2
// because Go negotiates the Extended Master Secret by default and refuses to
// export keying material without it (CheckChannelBinding then fails closed).
// certvault, whose release protocol depends on channel binding, sets
// MinVersion to TLS 1.3 on the returned config itself (research decision 1).
func ServerTLSConfig(cert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		ClientCAs:    clientCAs,
	}
}

// ClientTLSConfig is the TLS configuration of a ferry client: it trusts
// servers whose certificate chains to roots (nil: the system roots) and
// presents cert whenever a server asks for a client certificate.
//
// It always presents cert, even when the server's list of acceptable CAs
// does not include its issuer (Go's default would then silently send no
// certificate): ferry clients have one identity, and a server that reports
// "your certificate is from an untrusted CA" is more useful than one that
// says "you sent none".
func ClientTLSConfig(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	c := cert
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &c, nil
		},
	}
}

// FlagOK is the single verdict flag of a certificate that verified.
const FlagOK = "OK"

// Session is what a server knows about the caller of a request: the
// client certificate it received and the verdict of its own verification.
//
// Only a Verified session identifies anyone: then Principal, Role and Chain
// come from the chain this package's verification built. An unverified
// session reports what was received (Leaf, Chain as sent by the peer, Flags
// saying what is wrong) and has Principal "" and Role RoleNone.
type Session struct {
	// Principal is the verified identity (see Principal); "" unless
	// Verified.
	Principal string
	// Role is Roles.RoleOf(Principal); RoleNone unless Verified.
	Role Role
	// Leaf is the client's certificate.
	Leaf *x509.Certificate
	// Chain is the verified chain, leaf first and root last, when Verified;
	// otherwise the certificates the peer sent, in its order.
	Chain []*x509.Certificate
	// Verified reports whether the chain verified against the roots for
	// client authentication at the time of the request and names exactly
	// one principal.
	Verified bool
	// Flags is the verdict: ["OK"] when Verified, else the symbols of what
	// is wrong (CERT_E_EXPIRED, CERT_E_UNTRUSTEDROOT, CERT_E_UNTRUSTEDCA,
	// CERT_E_WRONG_USAGE, CERT_E_CN_NO_MATCH, CERT_E_REVOKED), most
	// important first.
	Flags []string
	// DeniedByMapper reports a verified principal that the role mapper
	// gives no role (RoleNone).
	DeniedByMapper bool

	err error // why the session does not authenticate: the first verdict
}

// Err is nil when the session may proceed to authorization (verified, with
// a role). Otherwise it is the *job.Error a server answers with: the first
// verdict (e.g. CERT_E_EXPIRED, 401) for an unverified certificate,
// E_ACCESSDENIED (403) when the mapper denied the principal, and
// E_UNAUTHENTICATED (401) for a nil session.
func (s *Session) Err() error {
	switch {
	case s == nil:
		return errNoCertificate
	case !s.Verified:
		if s.err != nil {
			return s.err
		}
		return job.Errorf(job.E_UNAUTHENTICATED, "the client certificate did not verify")
	case s.DeniedByMapper:
		return job.Errorf(job.E_ACCESSDENIED, "principal %s is authenticated but has no role here (denied by the role mapper); an administrator can give it one", s.Principal)
	}
	return nil
}

// RequireRole returns Err, or E_ACCESSDENIED when the session's role is not
// one of roles.
func (s *Session) RequireRole(roles ...Role) error {
	if err := s.Err(); err != nil {
		return err
	}
	if !slices.Contains(roles, s.Role) {
		want := make([]string, len(roles))
		for i, r := range roles {
			want[i] = r.String()
		}
		return job.Errorf(job.E_ACCESSDENIED, "principal %s has role %s; this needs %s", s.Principal, s.Role, strings.Join(want, " or "))
	}
	return nil
}

var errNoCertificate = job.Errorf(job.E_UNAUTHENTICATED, "the connection carries no client certificate; connect over TLS with a certificate from the deployment's CA")

// Authenticator verifies the client certificates of requests. Its zero value
// trusts no CA (an empty pool, never the system roots) and maps no roles.
type Authenticator struct {
	// Roots are the CAs whose client certificates are accepted. nil means
	// none.
	Roots *x509.CertPool
	// Roles gives verified principals their roles.
	Roles RoleMap
	// Now is the clock verification uses; nil means time.Now. Verification
	// happens on every request, so a certificate that expires during a
	// long-lived connection stops working.
	Now func() time.Time
	// Revoked, if set, is asked about every verified leaf: true refuses it
	// with CERT_E_REVOKED (passive revocation by a deny-list of principals
	// or serials, research decision 13).
	Revoked func(leaf *x509.Certificate) bool
}

// Authenticate verifies the client certificate of r. Without TLS or without
// a client certificate it returns a nil session and E_UNAUTHENTICATED.
// Otherwise it returns the session, and an error exactly when the session is
// not Verified (its first verdict; see Session.Err). A verified session
// whose principal has no role is returned with a nil error: that is an
// authorization decision (Session.Err, Middleware).
func (a *Authenticator) Authenticate(r *http.Request) (*Session, error) {
	if r.TLS == nil {
		return nil, job.Errorf(job.E_UNAUTHENTICATED, "the connection is not TLS; use https with a client certificate from the deployment's CA")
	}
	return a.AuthenticateTLS(r.TLS)
}

// AuthenticateTLS is Authenticate for a connection's state.
func (a *Authenticator) AuthenticateTLS(cs *tls.ConnectionState) (*Session, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return nil, errNoCertificate
	}
	peers := cs.PeerCertificates
	now := time.Now()
	if a.Now != nil {
		now = a.Now()
	}
	s := &Session{Leaf: peers[0]}
	chain, verdicts := a.verify(peers, now)
	if _, err := Principal(peers[0]); err != nil {
		verdicts = append(verdicts, &job.Error{Code: job.CERT_E_CN_NO_MATCH,
			Detail: fmt.Sprintf("client certificate %s names no usable identity: %s", describe(peers[0]), strings.TrimPrefix(err.Error(), "identity: ")), Err: err})
	}
	if len(verdicts) == 0 && a.Revoked != nil && a.Revoked(chain[0]) {
		verdicts = append(verdicts, job.Errorf(job.CERT_E_REVOKED, "client certificate %s (serial %x) is revoked", describe(peers[0]), peers[0].SerialNumber))
	}
	if len(verdicts) > 0 {
		s.Chain = slices.Clone(peers)
		var details []string
		for _, v := range verdicts {
			if !slices.Contains(s.Flags, v.Code.Symbol) {
				s.Flags = append(s.Flags, v.Code.Symbol)
				details = append(details, v.Detail)
			}
		}
		first := verdicts[0]
		s.err = &job.Error{Code: first.Code, Detail: strings.Join(details, "; "), Err: first.Err}
		return s, s.err
	}
	// Everything below reads only the chain verification built.
	s.Chain = chain
	s.Leaf = chain[0]
	s.Principal, _ = Principal(chain[0])
	s.Role = a.Roles.RoleOf(s.Principal)
	s.Verified = true
	s.Flags = []string{FlagOK}
	s.DeniedByMapper = s.Role == RoleNone
	return s, nil
}

// verify verifies peers[0] for client authentication with peers[1:] as
// intermediates. On failure it keeps probing with the failed check relaxed
// (time moved into the leaf's validity, any key usage) so that the verdict
// lists every problem it can find ("expired and from an untrusted CA"), not
// only the first.
func (a *Authenticator) verify(peers []*x509.Certificate, now time.Time) ([]*x509.Certificate, []*job.Error) {
	leaf := peers[0]
	roots := a.Roots
	if roots == nil {
		roots = x509.NewCertPool() // never the system roots
	}
	inter := x509.NewCertPool()
	for _, c := range peers[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		CurrentTime:   now,
	}
	var verdicts []*job.Error
	for range 4 {
		chains, err := leaf.Verify(opts)
		if err == nil {
			if len(verdicts) > 0 {
				break
			}
			if chains[0][0].IsCA {
				return nil, []*job.Error{job.Errorf(job.CERT_E_WRONG_USAGE, "client certificate %s is a CA certificate, not a client identity", describe(leaf))}
			}
			return chains[0], nil
		}
		v, relaxed := classify(err, leaf, &opts)
		verdicts = append(verdicts, v)
		if !relaxed {
			break
		}
	}
	return nil, verdicts
}

// classify turns a verification error into a verdict and, where it can,
// relaxes opts so that the next attempt looks for further problems.
func classify(err error, leaf *x509.Certificate, opts *x509.VerifyOptions) (*job.Error, bool) {
	name := describe(leaf)
	var inv x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &inv):
		switch inv.Reason {
		case x509.Expired:
			if inv.Cert != nil && inv.Cert != leaf {
				return &job.Error{Code: job.CERT_E_EXPIRED, Err: err, Detail: fmt.Sprintf("CA certificate %s in the chain of client certificate %s is not valid at %s (valid %s to %s)",
					inv.Cert.Subject, name, stamp(opts.CurrentTime), stamp(inv.Cert.NotBefore), stamp(inv.Cert.NotAfter))}, false
			}
			v := &job.Error{Code: job.CERT_E_EXPIRED, Err: err, Detail: fmt.Sprintf("client certificate %s is not valid at %s (valid %s to %s); get a new one",
				name, stamp(opts.CurrentTime), stamp(leaf.NotBefore), stamp(leaf.NotAfter))}
			t := opts.CurrentTime
			if t.After(leaf.NotAfter) {
				t = leaf.NotAfter
			} else if t.Before(leaf.NotBefore) {
				t = leaf.NotBefore
			}
			relaxed := !t.Equal(opts.CurrentTime)
			opts.CurrentTime = t
			return v, relaxed
		case x509.IncompatibleUsage, x509.CANotAuthorizedForExtKeyUsage:
			v := &job.Error{Code: job.CERT_E_WRONG_USAGE, Err: err, Detail: fmt.Sprintf("client certificate %s is not valid for client authentication (it lacks the clientAuth extended key usage, or a CA in its chain does not allow it)", name)}
			if slices.Contains(opts.KeyUsages, x509.ExtKeyUsageAny) {
				return v, false
			}
			opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
			return v, true
		default:
			return &job.Error{Code: job.CERT_E_UNTRUSTEDCA, Err: err, Detail: fmt.Sprintf("client certificate %s has a chain the server does not accept: %v", name, err)}, false
		}
	case errors.As(err, &ua):
		return &job.Error{Code: job.CERT_E_UNTRUSTEDROOT, Err: err, Detail: fmt.Sprintf("client certificate %s was issued by %q, which this server does not trust; use a certificate from the deployment's CA", name, leaf.Issuer)}, false
	default:
		return &job.Error{Code: job.CERT_E_UNTRUSTEDCA, Err: err, Detail: fmt.Sprintf("client certificate %s does not verify: %v", name, err)}, false
	}
}

// describe names a certificate for messages: its URI SANs, else its subject.
func describe(c *x509.Certificate) string {
	if len(c.URIs) > 0 {
		s := make([]string, len(c.URIs))
		for i, u := range c.URIs {
			s[i] = u.String()
		}
		return fmt.Sprintf("%q", strings.Join(s, ", "))
	}
	return fmt.Sprintf("%q", c.Subject.String())
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// Middleware authenticates every request before next sees it. It puts the
// session (when the caller sent a certificate) in the request's context
// (SessionFrom), and refuses callers that are not verified with a role:
// 401 problem+json with E_UNAUTHENTICATED (no TLS, no certificate) or the
// verdict's code (CERT_E_EXPIRED, CERT_E_UNTRUSTEDROOT, …), and 403
// E_ACCESSDENIED for a principal the role mapper denied.
//
// Requests for one of allowUnverifiedPaths (exact URL paths, e.g.
// "/v1/session/client-certificate") reach next whatever the verdict, so that
// a caller can be shown what the server received.
func (a *Authenticator) Middleware(next http.Handler, allowUnverifiedPaths ...string) http.Handler {
	allowed := make(map[string]bool, len(allowUnverifiedPaths))
	for _, p := range allowUnverifiedPaths {
		allowed[p] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := a.Authenticate(r)
		if s != nil {
			r = r.WithContext(NewContext(r.Context(), s))
			err = s.Err()
		}
		if err != nil && !allowed[r.URL.Path] {
			writeProblem(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

type sessionKey struct{}

// NewContext returns ctx carrying s.
func NewContext(ctx context.Context, s *Session) context.Context {
	return context.WithValue(ctx, sessionKey{}, s)
}

// SessionFrom returns the session Middleware put in ctx. A session may be
// unverified (on the allowed paths): check Session.Err or RequireRole before
// trusting it.
func SessionFrom(ctx context.Context) (*Session, bool) {
	s, ok := ctx.Value(sessionKey{}).(*Session)
	return s, ok && s != nil
}
