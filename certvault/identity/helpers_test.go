package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
)

const testTD = "test.ferry"

var loopbackIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}

func newTestCA(t testing.TB, td string) *CA {
	t.Helper()
	ca, err := NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue issues an identity and returns it as a TLS key pair.
func issue(t testing.TB, ca *CA, req IssueRequest) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		t.Fatalf("issue %+v: %v", req, err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// issueAt issues with the CA's clock set to at (for expired and
// not-yet-valid certificates).
func issueAt(t testing.TB, ca *CA, at time.Time, req IssueRequest) tls.Certificate {
	t.Helper()
	past := *ca
	past.Now = func() time.Time { return at }
	return issue(t, &past, req)
}

// craft signs a certificate the CA's Issue would refuse to make: edit
// changes a valid clientAuth template.
func craft(t testing.TB, ca *CA, edit func(*x509.Certificate)) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(),
		Subject:               pkix.Name{CommonName: "crafted"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	edit(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// caAsClient is the CA's own certificate and key used as a client identity.
func caAsClient(ca *CA) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{ca.Cert.Raw}, PrivateKey: ca.key, Leaf: ca.Cert}
}

// newServer starts a loopback HTTPS server with ServerTLSConfig (ClientAuth
// replaced by mode) pinned to one TLS version, serving:
//
//	/v1/session/client-certificate  SessionHandler (allowed unverified)
//	/v1/whoami                      the session's principal and role
//	/v1/bound                       204 if CheckChannelBinding passes
func newServer(t testing.TB, ca *CA, a *Authenticator, version uint16, mode tls.ClientAuthType) *httptest.Server {
	t.Helper()
	srvCert := issue(t, ca, IssueRequest{Role: RoleService, Name: "test-server",
		DNSNames: []string{"localhost"}, IPs: loopbackIPs})
	mux := http.NewServeMux()
	mux.Handle(SessionPath, a.SessionHandler())
	mux.HandleFunc("/v1/whoami", func(w http.ResponseWriter, r *http.Request) {
		s, ok := SessionFrom(r.Context())
		if !ok || s.Err() != nil {
			writeProblem(w, r, errors.New("middleware let an unauthenticated request through"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"principal": s.Principal, "role": string(s.Role)})
	})
	mux.HandleFunc("/v1/bound", func(w http.ResponseWriter, r *http.Request) {
		if err := CheckChannelBinding(r); err != nil {
			writeProblem(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	ts := httptest.NewUnstartedServer(a.Middleware(mux, SessionPath))
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // rejected handshakes are expected here
	ts.TLS = ServerTLSConfig(srvCert, ca.Pool())
	ts.TLS.ClientAuth = mode
	ts.TLS.MinVersion, ts.TLS.MaxVersion = version, version
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts
}

// newClient returns a client presenting cert (none if nil) and trusting ca,
// pinned to one TLS version. Each client has its own connections.
func newClient(t testing.TB, cert *tls.Certificate, ca *CA, version uint16) *http.Client {
	t.Helper()
	var cfg *tls.Config
	if cert != nil {
		cfg = ClientTLSConfig(*cert, ca.Pool())
	} else {
		cfg = &tls.Config{RootCAs: ca.Pool()}
	}
	cfg.MinVersion, cfg.MaxVersion = version, version
	tr := &http.Transport{TLSClientConfig: cfg, MaxConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// get GETs url and returns status, body; transport errors are returned.
func get(c *http.Client, url string, hdr ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// checkProblem asserts a problem+json answer with status and code.
func checkProblem(t testing.TB, resp *http.Response, body []byte, status int, code job.Code) httpapi.Problem {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	var p httpapi.Problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("problem body %s: %v", body, err)
	}
	if p.Code != code.Symbol || p.HResult != code.HResultString() || p.Status != status || p.Type != "about:blank" || p.Title == "" || p.Detail == "" {
		t.Errorf("problem %+v, want code %s hresult %s status %d", p, code.Symbol, code.HResultString(), status)
	}
	if p.Instance != resp.Request.URL.Path {
		t.Errorf("problem instance %q, want %q", p.Instance, resp.Request.URL.Path)
	}
	return p
}

var tlsVersions = []struct {
	name string
	v    uint16
}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}}
