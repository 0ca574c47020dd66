package identity

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
)

// identities is every kind of caller the matrix tries.
type identities struct {
	ca, other *CA
	certs     map[string]*tls.Certificate // nil entry: no certificate
}

func newIdentities(t *testing.T) identities {
	ca := newTestCA(t, testTD)
	other := newTestCA(t, "other.ferry")
	now := time.Now()
	id := func(c tls.Certificate) *tls.Certificate { return &c }
	uri := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	return identities{ca: ca, other: other, certs: map[string]*tls.Certificate{
		"none":    nil,
		"user":    id(issue(t, ca, IssueRequest{Role: RoleUser, Name: "alice"})),
		"admin":   id(issue(t, ca, IssueRequest{Role: RoleAdmin, Name: "root"})),
		"agent":   id(issue(t, ca, IssueRequest{Role: RoleAgent, Name: "host-1"})),
		"service": id(issue(t, ca, IssueRequest{Role: RoleService, Name: "coordinator", DNSNames: []string{"localhost"}})),
		"dn-override": id(craft(t, ca, func(c *x509.Certificate) {
			c.Subject = pkix.Name{CommonName: "Alice", Organization: []string{"Example"}}
		})),
		"override-none":    id(issue(t, ca, IssueRequest{Role: RoleUser, Name: "mallory"})),
		"unknown-role":     id(craft(t, ca, func(c *x509.Certificate) { c.URIs = []*url.URL{uri("spiffe://test.ferry/robot/r2")} })),
		"foreign-domain":   id(craft(t, ca, func(c *x509.Certificate) { c.URIs = []*url.URL{uri("spiffe://other.ferry/admin/eve")} })),
		"expired":          id(issueAt(t, ca, now.Add(-48*time.Hour), IssueRequest{Role: RoleUser, Name: "old", Validity: time.Hour})),
		"not-yet-valid":    id(issueAt(t, ca, now.Add(48*time.Hour), IssueRequest{Role: RoleUser, Name: "early", Validity: time.Hour})),
		"other-ca":         id(issue(t, other, IssueRequest{Role: RoleAdmin, Name: "root"})),
		"other-ca-expired": id(issueAt(t, other, now.Add(-48*time.Hour), IssueRequest{Role: RoleUser, Name: "old", Validity: time.Hour})),
		"no-clientauth-eku": id(craft(t, ca, func(c *x509.Certificate) {
			c.URIs = []*url.URL{uri("spiffe://test.ferry/user/server-only")}
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		})),
		"two-uri-sans": id(craft(t, ca, func(c *x509.Certificate) {
			c.URIs = []*url.URL{uri("spiffe://test.ferry/user/bob"), uri("spiffe://test.ferry/admin/bob")}
		})),
		"ca-as-client": id(caAsClient(ca)),
		"revoked":      id(issue(t, ca, IssueRequest{Role: RoleAgent, Name: "stolen"})),
	}}
}

func (ids identities) authenticator() *Authenticator {
	return &Authenticator{
		Roots: ids.ca.Pool(),
		Roles: RoleMap{TrustDomain: testTD, Overrides: map[string]Role{
			"x509:CN=Alice,O=Example":          RoleAdmin,
			"spiffe://test.ferry/user/mallory": RoleNone,
		}},
		Revoked: func(leaf *x509.Certificate) bool {
			return len(leaf.URIs) == 1 && leaf.URIs[0].String() == "spiffe://test.ferry/agent/stolen"
		},
	}
}

// matrixCase is what a server using ServerTLSConfig (RequestClientCert)
// answers a caller.
type matrixCase struct {
	cert string
	// /v1/whoami: 200 with principal and role, else status and code.
	status    int
	code      job.Code
	principal string
	role      Role
	// the session report (ignored when cert is "none": 404).
	verified bool
	flags    []string
	denied   bool
}

var matrix = []matrixCase{
	{cert: "none", status: 401, code: job.E_UNAUTHENTICATED},
	{cert: "user", status: 200, principal: "spiffe://test.ferry/user/alice", role: RoleUser, verified: true, flags: []string{"OK"}},
	{cert: "admin", status: 200, principal: "spiffe://test.ferry/admin/root", role: RoleAdmin, verified: true, flags: []string{"OK"}},
	{cert: "agent", status: 200, principal: "spiffe://test.ferry/agent/host-1", role: RoleAgent, verified: true, flags: []string{"OK"}},
	{cert: "service", status: 200, principal: "spiffe://test.ferry/service/coordinator", role: RoleService, verified: true, flags: []string{"OK"}},
	{cert: "dn-override", status: 200, principal: "x509:CN=Alice,O=Example", role: RoleAdmin, verified: true, flags: []string{"OK"}},
	{cert: "override-none", status: 403, code: job.E_ACCESSDENIED, principal: "spiffe://test.ferry/user/mallory", verified: true, flags: []string{"OK"}, denied: true},
	{cert: "unknown-role", status: 403, code: job.E_ACCESSDENIED, principal: "spiffe://test.ferry/robot/r2", verified: true, flags: []string{"OK"}, denied: true},
	{cert: "foreign-domain", status: 403, code: job.E_ACCESSDENIED, principal: "spiffe://other.ferry/admin/eve", verified: true, flags: []string{"OK"}, denied: true},
	{cert: "expired", status: 401, code: job.CERT_E_EXPIRED, flags: []string{"CERT_E_EXPIRED"}},
	{cert: "not-yet-valid", status: 401, code: job.CERT_E_EXPIRED, flags: []string{"CERT_E_EXPIRED"}},
	{cert: "other-ca", status: 401, code: job.CERT_E_UNTRUSTEDROOT, flags: []string{"CERT_E_UNTRUSTEDROOT"}},
	{cert: "other-ca-expired", status: 401, code: job.CERT_E_EXPIRED, flags: []string{"CERT_E_EXPIRED", "CERT_E_UNTRUSTEDROOT"}},
	{cert: "no-clientauth-eku", status: 401, code: job.CERT_E_WRONG_USAGE, flags: []string{"CERT_E_WRONG_USAGE"}},
	{cert: "two-uri-sans", status: 401, code: job.CERT_E_CN_NO_MATCH, flags: []string{"CERT_E_CN_NO_MATCH"}},
	{cert: "ca-as-client", status: 401, code: job.CERT_E_WRONG_USAGE, flags: []string{"CERT_E_WRONG_USAGE"}},
	{cert: "revoked", status: 401, code: job.CERT_E_REVOKED, flags: []string{"CERT_E_REVOKED"}},
}

// TestMatrix runs every caller against Middleware and SessionHandler over
// real TLS, for each TLS version, with the server's ClientAuth as
// ServerTLSConfig sets it (RequestClientCert) and, for contrast, the two
// modes in which the TLS stack verifies (bad certificates then fail the
// handshake and cannot be reported; good ones give the same session).
func TestMatrix(t *testing.T) {
	ids := newIdentities(t)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			t.Run("RequestClientCert", func(t *testing.T) {
				ts := newServer(t, ids.ca, ids.authenticator(), tv.v, tls.RequestClientCert)
				for _, tc := range matrix {
					t.Run(tc.cert, func(t *testing.T) {
						c := newClient(t, ids.certs[tc.cert], ids.ca, tv.v)
						checkWhoami(t, c, ts.URL, tc)
						checkSession(t, c, ts.URL, ids.certs[tc.cert], tc)
					})
				}
			})
			for _, mode := range []tls.ClientAuthType{tls.VerifyClientCertIfGiven, tls.RequireAndVerifyClientCert} {
				t.Run(mode.String(), func(t *testing.T) {
					ts := newServer(t, ids.ca, ids.authenticator(), tv.v, mode)
					for _, tc := range matrix {
						switch tc.cert {
						case "none", "user", "agent", "expired", "other-ca", "no-clientauth-eku":
						default:
							continue
						}
						t.Run(tc.cert, func(t *testing.T) {
							c := newClient(t, ids.certs[tc.cert], ids.ca, tv.v)
							handshakeFails := tc.status == 401 && tc.cert != "none" || tc.cert == "none" && mode == tls.RequireAndVerifyClientCert
							if handshakeFails {
								resp, _, err := get(c, ts.URL+"/v1/whoami")
								if err == nil {
									t.Fatalf("got HTTP %d; want the TLS stack to refuse the connection", resp.StatusCode)
								}
								if !strings.Contains(err.Error(), "remote error: tls:") {
									t.Errorf("error %v; want a TLS alert", err)
								}
								return
							}
							checkWhoami(t, c, ts.URL, tc)
							checkSession(t, c, ts.URL, ids.certs[tc.cert], tc)
						})
					}
				})
			}
		})
	}
}

func checkWhoami(t *testing.T, c *http.Client, base string, tc matrixCase) {
	t.Helper()
	resp, body, err := get(c, base+"/v1/whoami")
	if err != nil {
		t.Fatal(err)
	}
	if tc.status != 200 {
		checkProblem(t, resp, body, tc.status, tc.code)
		return
	}
	if resp.StatusCode != 200 {
		t.Fatalf("whoami: %d %s", resp.StatusCode, body)
	}
	var got map[string]string
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if got["principal"] != tc.principal || got["role"] != string(tc.role) {
		t.Errorf("whoami = %v, want principal %q role %q", got, tc.principal, tc.role)
	}
}

func checkSession(t *testing.T, c *http.Client, base string, cert *tls.Certificate, tc matrixCase) {
	t.Helper()
	resp, body, err := get(c, base+SessionPath)
	if err != nil {
		t.Fatal(err)
	}
	if cert == nil {
		checkProblem(t, resp, body, 404, job.ERROR_NOT_FOUND)
		return
	}
	if resp.StatusCode != 200 {
		t.Fatalf("session: %d %s", resp.StatusCode, body)
	}
	var info ClientCertInfo
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	if string(info.Certificate) != string(cert.Certificate[0]) {
		t.Error("session certificate is not the one the client sent")
	}
	if info.Verified != tc.verified || !slices.Equal(info.Flags, tc.flags) || info.DeniedByMapper != tc.denied {
		t.Errorf("session verified=%v flags=%v denied=%v, want %v %v %v", info.Verified, info.Flags, info.DeniedByMapper, tc.verified, tc.flags, tc.denied)
	}
	wantPrincipal, wantRole := tc.principal, tc.role
	if !tc.verified {
		wantPrincipal, wantRole = "", RoleNone // never an identity from an unverified certificate
	}
	if info.Principal != wantPrincipal || info.Role != wantRole {
		t.Errorf("session principal %q role %q, want %q %q", info.Principal, info.Role, wantPrincipal, wantRole)
	}
	wantChain := len(cert.Certificate) // as sent
	if tc.verified {
		wantChain = 2 // leaf and root, as verified
		if tc.cert == "ca-as-client" {
			wantChain = 1
		}
	}
	if len(info.Chain) != wantChain || string(info.Chain[0]) != string(info.Certificate) {
		t.Errorf("session chain has %d certificates (first is leaf: %v), want %d", len(info.Chain), len(info.Chain) > 0 && string(info.Chain[0]) == string(info.Certificate), wantChain)
	}
}

// TestAuthenticateTLS covers the verdicts without HTTP.
func TestAuthenticateTLS(t *testing.T) {
	ids := newIdentities(t)
	a := ids.authenticator()

	s, err := a.AuthenticateTLS(nil)
	if s != nil || job.CodeOf(err) != job.E_UNAUTHENTICATED {
		t.Errorf("nil state: %v, %v", s, err)
	}
	s, err = a.AuthenticateTLS(&tls.ConnectionState{})
	if s != nil || job.CodeOf(err) != job.E_UNAUTHENTICATED {
		t.Errorf("no peer certificates: %v, %v", s, err)
	}
	if err := (*Session)(nil).Err(); job.CodeOf(err) != job.E_UNAUTHENTICATED {
		t.Errorf("nil session Err = %v", err)
	}

	state := func(name string) *tls.ConnectionState {
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{ids.certs[name].Leaf}}
	}
	for _, tc := range matrix[1:] {
		s, err := a.AuthenticateTLS(state(tc.cert))
		if s == nil {
			t.Fatalf("%s: nil session (%v)", tc.cert, err)
		}
		if (err != nil) == tc.verified {
			t.Errorf("%s: Authenticate error %v with verified=%v", tc.cert, err, tc.verified)
		}
		if tc.verified {
			continue
		}
		if job.CodeOf(err) != tc.code || job.CodeOf(s.Err()) != tc.code {
			t.Errorf("%s: error %v, want %s", tc.cert, err, tc.code.Symbol)
		}
		var je *job.Error
		if errors.As(err, &je) && je.Detail == "" {
			t.Errorf("%s: verdict without a detail", tc.cert)
		}
	}

	// The expired-and-untrusted verdict explains both problems.
	_, err = a.AuthenticateTLS(state("other-ca-expired"))
	if msg := err.Error(); !strings.Contains(msg, "not valid at") || !strings.Contains(msg, "does not trust") {
		t.Errorf("combined verdict %q does not explain both problems", msg)
	}

	// The zero Authenticator trusts nothing (in particular not the system
	// roots) and maps no roles.
	s, err = (&Authenticator{}).AuthenticateTLS(state("user"))
	if s.Verified || job.CodeOf(err) != job.CERT_E_UNTRUSTEDROOT {
		t.Errorf("zero Authenticator: verified=%v err=%v", s.Verified, err)
	}
	s, err = (&Authenticator{Roots: ids.ca.Pool()}).AuthenticateTLS(state("admin"))
	if err != nil || !s.Verified || s.Role != RoleNone || !s.DeniedByMapper || job.CodeOf(s.Err()) != job.E_ACCESSDENIED {
		t.Errorf("no role map: %+v, %v", s, err)
	}

	// The clock is the Authenticator's: a valid certificate is expired in
	// two years' time.
	later := &Authenticator{Roots: ids.ca.Pool(), Now: func() time.Time { return time.Now().Add(2 * 365 * 24 * time.Hour) }}
	if _, err := later.AuthenticateTLS(state("user")); job.CodeOf(err) != job.CERT_E_EXPIRED {
		t.Errorf("with a later clock: %v, want CERT_E_EXPIRED", err)
	}

	// RequireRole.
	s, _ = a.AuthenticateTLS(state("agent"))
	if err := s.RequireRole(RoleAgent); err != nil {
		t.Errorf("agent RequireRole(agent) = %v", err)
	}
	if err := s.RequireRole(RoleAdmin, RoleUser); job.CodeOf(err) != job.E_ACCESSDENIED {
		t.Errorf("agent RequireRole(admin, user) = %v", err)
	}
	s, _ = a.AuthenticateTLS(state("expired"))
	if err := s.RequireRole(RoleUser); job.CodeOf(err) != job.CERT_E_EXPIRED {
		t.Errorf("expired RequireRole = %v", err)
	}
}

// TestSessionIsNotPeerCertificates: what the session reports for an
// unverified caller never becomes an identity.
func TestSessionIsNotPeerCertificates(t *testing.T) {
	ids := newIdentities(t)
	a := ids.authenticator()
	// A certificate from another CA that claims the admin identity of this
	// deployment.
	forged := issue(t, newTestCA(t, testTD), IssueRequest{Role: RoleAdmin, Name: "root"})
	s, err := a.AuthenticateTLS(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{forged.Leaf}})
	if err == nil || s.Verified || s.Principal != "" || s.Role != RoleNone {
		t.Fatalf("forged admin: verified=%v principal=%q role=%q err=%v", s.Verified, s.Principal, s.Role, err)
	}
	if err := s.RequireRole(RoleAdmin); job.CodeOf(err) != job.CERT_E_UNTRUSTEDROOT {
		t.Errorf("forged admin RequireRole = %v", err)
	}
}

func TestClientTLSConfigSendsCertToAnyServer(t *testing.T) {
	ids := newIdentities(t)
	cfg := ClientTLSConfig(*ids.certs["other-ca"], ids.ca.Pool())
	// The server lists only ids.ca as acceptable; the client still sends
	// its one identity (Go's default would send nothing).
	got, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{AcceptableCAs: [][]byte{ids.ca.Cert.RawSubject}})
	if err != nil || len(got.Certificate) != 1 || string(got.Certificate[0]) != string(ids.certs["other-ca"].Certificate[0]) {
		t.Errorf("GetClientCertificate = %v, %v", got, err)
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x", cfg.MinVersion)
	}
	srv := ServerTLSConfig(*ids.certs["service"], ids.ca.Pool())
	if srv.ClientAuth != tls.RequestClientCert || srv.MinVersion != tls.VersionTLS12 || len(srv.Certificates) != 1 {
		t.Errorf("ServerTLSConfig = ClientAuth %v MinVersion %x", srv.ClientAuth, srv.MinVersion)
	}
}
