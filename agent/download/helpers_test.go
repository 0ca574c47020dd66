package download

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serial.Lock()
	defer serial.Unlock()
	serial.n++
	return big.NewInt(serial.n)
}

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-7 * 24 * time.Hour), // older than the expired leaves tests issue
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

type leafOpts struct {
	dns       []string
	ips       []net.IP
	notBefore time.Time
	notAfter  time.Time
	client    bool
}

func (ca *testCA) issue(t testing.TB, o leafOpts) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(24 * time.Hour)
	}
	eku := x509.ExtKeyUsageServerAuth
	if o.client {
		eku = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: "leaf"},
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		DNSNames:     o.dns,
		IPAddresses:  o.ips,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (ca *testCA) localhost(t testing.TB) tls.Certificate {
	return ca.issue(t, leafOpts{dns: []string{"localhost"}, ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}})
}

// tlsServer starts an HTTPS server with cert; cfg may adjust the TLS config.
func tlsServer(t testing.TB, h http.Handler, cert tls.Certificate, cfg func(*tls.Config), h2 bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = h2
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if cfg != nil {
		cfg(srv.TLS)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func testClient(t testing.TB, o ClientOptions) *http.Client {
	c := NewClient(o)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func testRoot(t testing.TB) (*os.Root, string) {
	t.Helper()
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return root, dir
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// origin is a file server with switchable misbehaviours. Range requests are
// answered by http.ServeContent (real Range/If-Range handling).
type origin struct {
	mu          sync.Mutex
	content     []byte
	etag        string
	ignoreRange bool  // answer everything with 200
	badRange    bool  // answer Range requests with a 206 starting at 0
	dropAfter   int64 // one-shot: abort the next response after this many body bytes
	capRange    int64 // answer Range requests with at most this many bytes
	modtime     time.Time
	reqs        []*http.Request
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.reqs = append(o.reqs, r.Clone(r.Context()))
	content, etag, ignore, bad, drop, capped, mod := o.content, o.etag, o.ignoreRange, o.badRange, o.dropAfter, o.capRange, o.modtime
	o.dropAfter = 0
	o.mu.Unlock()

	var ww http.ResponseWriter = w
	if drop > 0 {
		ww = &dropWriter{ResponseWriter: w, left: drop}
	}
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	switch {
	case bad && r.Header.Get("Range") != "":
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(content)-1, len(content)))
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		w.WriteHeader(http.StatusPartialContent)
		ww.Write(content)
	case capped > 0 && r.Header.Get("Range") != "":
		var first int64
		fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &first)
		last := min(first+capped, int64(len(content))) - 1
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(content)))
		w.Header().Set("Content-Length", fmt.Sprint(last-first+1))
		w.WriteHeader(http.StatusPartialContent)
		ww.Write(content[first : last+1])
	case ignore:
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		ww.Write(content)
	default:
		http.ServeContent(ww, r, "", mod, bytes.NewReader(content))
	}
}

func (o *origin) set(f func(o *origin)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f(o)
}

func (o *origin) requests() []*http.Request {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*http.Request(nil), o.reqs...)
}

// dropWriter sends left bytes of the body, flushes them, then aborts the
// connection mid-body.
type dropWriter struct {
	http.ResponseWriter
	left int64
}

func (d *dropWriter) Write(p []byte) (int, error) {
	if int64(len(p)) < d.left {
		n, err := d.ResponseWriter.Write(p)
		d.left -= int64(n)
		return n, err
	}
	d.ResponseWriter.Write(p[:d.left])
	http.NewResponseController(d.ResponseWriter).Flush()
	panic(http.ErrAbortHandler)
}

// checkInvariant verifies the staging invariant: the sidecar's offset bytes
// are in the file and hash to the sidecar's hash state.
func checkInvariant(t *testing.T, root *os.Root, name string) state {
	t.Helper()
	st, h, found, err := loadState(root, name)
	if err != nil || !found {
		t.Fatalf("sidecar: found=%v err=%v", found, err)
	}
	data, err := root.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) < st.Offset {
		t.Fatalf("file has %d bytes, sidecar claims %d", len(data), st.Offset)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), sha256Hex(data[:st.Offset]); got != want {
		t.Fatalf("sidecar hash state %s does not match the file's first %d bytes (%s)", got, st.Offset, want)
	}
	return st
}

func asFailure(t *testing.T, err error) *Failure {
	t.Helper()
	var f *Failure
	if !errors.As(err, &f) {
		t.Fatalf("error %v (%T) is not a *Failure", err, err)
	}
	return f
}

func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }

func sha256New() hash.Hash { return sha256.New() }
