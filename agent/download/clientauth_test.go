package download

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
)

type authOutcome int

const (
	authOK       authOutcome = iota // downloaded
	authNeeded                      // ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED, no HTTP exchange
	authRejected                    // ERROR_WINHTTP_SECURE_FAILURE: the certificate was refused
)

func (o authOutcome) String() string {
	return [...]string{"ok", "cert needed", "cert rejected"}[o]
}

// TestClientAuthMatrix runs every Go server ClientAuth mode, in TLS 1.2 and
// 1.3, against every client-certificate choice of a transfer and checks the
// outcome of each cell (certvault.md §2).
func TestClientAuthMatrix(t *testing.T) {
	serverCA := newCA(t, "origin CA")
	clientCA := newCA(t, "client CA")
	otherCA := newCA(t, "untrusted CA")
	serverCert := serverCA.localhost(t)
	trusted := clientCA.issue(t, leafOpts{client: true})
	untrusted := otherCA.issue(t, leafOpts{client: true})
	content := []byte("client-auth matrix payload")

	type choice struct {
		name string
		ctx  func(context.Context, *atomic.Int32) context.Context
	}
	static := func(c tls.Certificate) func(context.Context, *atomic.Int32) context.Context {
		return func(ctx context.Context, calls *atomic.Int32) context.Context {
			return WithClientCertificate(ctx, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				calls.Add(1)
				return &c, nil
			})
		}
	}
	choices := []choice{
		{"no provider", func(ctx context.Context, _ *atomic.Int32) context.Context { return ctx }},
		{"anonymous", func(ctx context.Context, _ *atomic.Int32) context.Context { return WithAnonymousClientAuth(ctx) }},
		{"trusted", static(trusted)},
		{"untrusted", static(untrusted)},
	}
	modes := []struct {
		auth tls.ClientAuthType
		want [4]authOutcome // per choice, in the order above
	}{
		{tls.NoClientCert, [4]authOutcome{authOK, authOK, authOK, authOK}},
		{tls.RequestClientCert, [4]authOutcome{authNeeded, authOK, authOK, authOK}},
		{tls.RequireAnyClientCert, [4]authOutcome{authNeeded, authNeeded, authOK, authOK}},
		{tls.VerifyClientCertIfGiven, [4]authOutcome{authNeeded, authOK, authOK, authRejected}},
		{tls.RequireAndVerifyClientCert, [4]authOutcome{authNeeded, authNeeded, authOK, authRejected}},
	}
	versions := []struct {
		name string
		v    uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}}

	for _, m := range modes {
		for _, ver := range versions {
			for ci, ch := range choices {
				want := m.want[ci]
				t.Run(fmt.Sprintf("%s/%s/%s", m.auth, ver.name, ch.name), func(t *testing.T) {
					var handled atomic.Int32
					var peers atomic.Int32
					h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						handled.Add(1)
						peers.Store(int32(len(r.TLS.PeerCertificates)))
						w.Write(content)
					})
					srv := tlsServer(t, h, serverCert, func(c *tls.Config) {
						c.ClientAuth = m.auth
						c.ClientCAs = clientCA.pool
						c.MinVersion, c.MaxVersion = ver.v, ver.v
					}, false)
					srv.Config.ErrorLog = quietLog()
					root, _ := testRoot(t)
					var calls atomic.Int32
					ctx := ch.ctx(t.Context(), &calls)
					_, err := Fetch(ctx, Request{URL: srv.URL + "/f", Root: root, TempName: "m.part",
						Client: testClient(t, ClientOptions{RootCAs: serverCA.pool})})

					if m.auth == tls.NoClientCert && calls.Load() != 0 {
						t.Errorf("the provider was called %d times though the server did not ask", calls.Load())
					}
					if want == authOK {
						if err != nil {
							t.Fatalf("want a download, got %v", err)
						}
						if got, _ := root.ReadFile("m.part"); string(got) != string(content) {
							t.Fatalf("staged %q", got)
						}
						wantPeers := int32(0)
						if m.auth != tls.NoClientCert && (ch.name == "trusted" || ch.name == "untrusted") {
							wantPeers = 1
						}
						if peers.Load() != wantPeers {
							t.Errorf("server saw %d client certificates, want %d", peers.Load(), wantPeers)
						}
						return
					}
					fl := asFailure(t, err)
					t.Logf("%s: %s", fl.Code.Symbol, fl.Description)
					if fl.Transient || fl.Context != job.ContextRemoteFile {
						t.Errorf("want a fatal REMOTE_FILE error, got %+v", fl)
					}
					if n := handled.Load(); n != 0 {
						t.Errorf("the handler ran %d times: the failure must come before any HTTP exchange", n)
					}
					switch want {
					case authNeeded:
						if fl.Code != job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED || fl.Code.HResult != 0x80072F0C {
							t.Fatalf("want ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED, got %s (%v)", fl.Code.Symbol, fl.Err)
						}
						if ch.name == "no provider" {
							if !errors.Is(err, ErrClientCertNeeded) {
								t.Errorf("errors.Is(err, ErrClientCertNeeded) = false for %v", fl.Err)
							}
							if !strings.Contains(fl.Description, "asked for a TLS client certificate and the job has none") {
								t.Errorf("description %q", fl.Description)
							}
						}
					case authRejected:
						if fl.Code != job.ERROR_WINHTTP_SECURE_FAILURE || !strings.Contains(fl.Description, "rejected the job's TLS client certificate") ||
							!strings.Contains(fl.Description, "unknown certificate authority") {
							t.Fatalf("want a client-certificate rejection, got %s: %s", fl.Code.Symbol, fl.Description)
						}
					}
				})
			}
		}
	}
}

// TestClientCertAlerts checks the classification of every TLS alert a
// server sends about a client certificate.
func TestClientCertAlerts(t *testing.T) {
	serverCA := newCA(t, "origin CA")
	clientCA := newCA(t, "client CA")
	for _, tc := range []struct {
		name string
		cfg  func(*tls.Config)
		cert tls.Certificate
		want job.Code
		text string
	}{
		{"expired", nil, clientCA.issue(t, leafOpts{client: true, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)}),
			job.ERROR_WINHTTP_SECURE_FAILURE, "expired certificate"},
		{"server EKU only", nil, clientCA.issue(t, leafOpts{}), job.ERROR_WINHTTP_SECURE_FAILURE, "bad certificate"},
		{"refused by VerifyConnection", func(c *tls.Config) {
			c.VerifyConnection = func(tls.ConnectionState) error { return errors.New("denied") }
		}, clientCA.issue(t, leafOpts{client: true}), job.ERROR_WINHTTP_SECURE_FAILURE, "bad certificate"},
	} {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(fmt.Sprintf("%s/%x", tc.name, v), func(t *testing.T) {
				var handled atomic.Int32
				srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handled.Add(1) }), serverCA.localhost(t), func(c *tls.Config) {
					c.ClientAuth = tls.RequireAndVerifyClientCert
					c.ClientCAs = clientCA.pool
					c.MinVersion, c.MaxVersion = v, v
					if tc.cfg != nil {
						tc.cfg(c)
					}
				}, false)
				srv.Config.ErrorLog = quietLog()
				root, _ := testRoot(t)
				cert := tc.cert
				ctx := WithClientCertificate(t.Context(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil })
				_, err := Fetch(ctx, Request{URL: srv.URL, Root: root, TempName: "a.part", Client: testClient(t, ClientOptions{RootCAs: serverCA.pool})})
				fl := asFailure(t, err)
				t.Logf("%s: %s", fl.Code.Symbol, fl.Description)
				if fl.Code != tc.want || fl.Transient || fl.Context != job.ContextRemoteFile ||
					!strings.Contains(fl.Description, "rejected the job's TLS client certificate") || !strings.Contains(fl.Description, tc.text) {
					t.Fatalf("got %+v", fl)
				}
				if handled.Load() != 0 {
					t.Error("the handler ran")
				}
			})
		}
	}
}

// TestNginxStyle400s checks that nginx's client-authentication pages (it
// answers them after the handshake) become client-authentication errors
// carrying the server's words.
func TestNginxStyle400s(t *testing.T) {
	ca := newCA(t, "origin CA")
	page := func(title string) string {
		return "<html>\r\n<head><title>" + title + "</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>" +
			title[4:] + "</center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"
	}
	for _, tc := range []struct {
		name, body string
		want       job.Code
		words      string
	}{
		{"no certificate", page("400 No required SSL certificate was sent"), job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED, `"400 No required SSL certificate was sent"`},
		{"certificate error", page("400 The SSL certificate error"), job.ERROR_WINHTTP_SECURE_FAILURE, `"400 The SSL certificate error"`},
		{"hostile title", "<title>400 The SSL certificate error\x1b[31m\r\n" + strings.Repeat("x", 300) + "</title>", job.ERROR_WINHTTP_SECURE_FAILURE, "400 The SSL certificate error[31m"},
		{"other 400", page("400 Bad Request"), job.HTTPStatusCode(400), `"400 Bad Request"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusBadRequest)
				io.WriteString(w, tc.body)
			}), ca.localhost(t), nil, false)
			root, _ := testRoot(t)
			_, err := Fetch(t.Context(), Request{URL: srv.URL + "/x?token=secret", Root: root, TempName: "n.part", Client: testClient(t, ClientOptions{RootCAs: ca.pool})})
			fl := asFailure(t, err)
			t.Logf("%s: %s", fl.Code.Symbol, fl.Description)
			if fl.Code != tc.want || fl.Transient || fl.Context != job.ContextRemoteFile || !strings.Contains(fl.Description, tc.words) {
				t.Fatalf("got %+v", fl)
			}
			if strings.Contains(fl.Description, "secret") || strings.ContainsAny(fl.Description, "\x1b\r\n") || len(fl.Description) > 300 {
				t.Fatalf("unsafe description %q", fl.Description)
			}
		})
	}
}

// TestPerTransferClientsDoNotShareConnections is the agent's pattern: one
// client per transfer, so two consecutive transfers to the same origin with
// different providers each run their own handshake and present their own
// certificate.
func TestPerTransferClientsDoNotShareConnections(t *testing.T) {
	serverCA := newCA(t, "origin CA")
	clientCA := newCA(t, "client CA")
	var mu sync.Mutex
	var seen []string
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, sha1Hex(r.TLS.PeerCertificates[0].Raw))
		mu.Unlock()
		io.WriteString(w, "payload")
	}), serverCA.localhost(t), func(c *tls.Config) {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = clientCA.pool
	}, true)
	root, _ := testRoot(t)

	var want []string
	for i := range 2 {
		cert := clientCA.issue(t, leafOpts{client: true})
		want = append(want, sha1Hex(cert.Certificate[0]))
		var calls atomic.Int32
		ctx := WithClientCertificate(t.Context(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			calls.Add(1)
			return &cert, nil
		})
		client := NewClient(ClientOptions{RootCAs: serverCA.pool})
		_, err := Fetch(ctx, Request{URL: srv.URL, Root: root, TempName: fmt.Sprintf("p%d.part", i), Client: client})
		client.CloseIdleConnections()
		if err != nil {
			t.Fatal(err)
		}
		if calls.Load() == 0 {
			t.Fatalf("transfer %d: its provider was never asked (a connection was reused)", i)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != want[0] || seen[1] != want[1] {
		t.Fatalf("server saw %v, want %v", seen, want)
	}
}

// TestProviderReturningNilIsCertNeeded checks that the provider set with
// WithClientCertificate is read from the request's context in the TLS
// callback, and that a nil certificate from it means "none".
func TestProviderReturningNilIsCertNeeded(t *testing.T) {
	serverCA := newCA(t, "origin CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), serverCA.localhost(t), func(c *tls.Config) {
		c.ClientAuth = tls.RequestClientCert
	}, false)
	srv.Config.ErrorLog = quietLog()
	root, _ := testRoot(t)
	ctx := WithClientCertificate(t.Context(), func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if cri.Context() == nil {
			return nil, errors.New("no context")
		}
		return nil, nil
	})
	_, err := Fetch(ctx, Request{URL: srv.URL, Root: root, TempName: "n.part", Client: testClient(t, ClientOptions{RootCAs: serverCA.pool})})
	if fl := asFailure(t, err); fl.Code != job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED || !errors.Is(err, ErrClientCertNeeded) {
		t.Fatalf("got %+v", fl)
	}
}

func sha1Hex(der []byte) string {
	s := sha1.Sum(der)
	return hex.EncodeToString(s[:])
}

// TestProviderFailureIsReportedAsIs: a provider that cannot release the
// certificate returns a *Failure, which Fetch reports unchanged.
func TestProviderFailureIsReportedAsIs(t *testing.T) {
	serverCA := newCA(t, "origin CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), serverCA.localhost(t), func(c *tls.Config) {
		c.ClientAuth = tls.RequestClientCert
	}, false)
	srv.Config.ErrorLog = quietLog()
	root, _ := testRoot(t)
	want := &Failure{Context: job.ContextRemoteFile, Code: job.E_ACCESSDENIED, Description: "the certificate may not be released"}
	ctx := WithClientCertificate(t.Context(), func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nil, want })
	_, err := Fetch(ctx, Request{URL: srv.URL, Root: root, TempName: "n.part", Client: testClient(t, ClientOptions{RootCAs: serverCA.pool})})
	if fl := asFailure(t, err); fl != want {
		t.Fatalf("got %+v", fl)
	}
}
