// Package servicestest holds test fixtures shared by ferry's end-to-end
// tests: an HTTPS origin with a throwaway CA that serves generated files with
// Range support and can pause mid-body, fail with chosen statuses, and
// record what it was asked.
package servicestest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/services"
)

// Origin serves /f/<size> (a generated file of size bytes, see
// services.Pattern) and /status/<code> over HTTPS.
type Origin struct {
	Server *httptest.Server
	// CAFile is the PEM file of the CA that signed the origin's certificate.
	CAFile string

	mu      sync.Mutex
	conns   int
	ranges  []string
	gates   map[string]*Gate // path -> gate for the next request of that path
	retryIn string
}

// Gate pauses one response after At bytes: Reached is closed when the body
// got there; the response ends (the connection is cut) when Release is
// closed.
type Gate struct {
	At      int64
	Reached chan struct{}
	Release chan struct{}
	once    sync.Once
}

// NewOrigin starts an origin for the test.
func NewOrigin(t testing.TB) *Origin {
	o := &Origin{gates: map[string]*Gate{}}
	o.Server = httptest.NewUnstartedServer(http.HandlerFunc(o.serve))
	o.Server.EnableHTTP2 = false
	o.Server.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			o.mu.Lock()
			o.conns++
			o.mu.Unlock()
		}
	}
	o.Server.StartTLS()
	t.Cleanup(func() {
		o.mu.Lock()
		for _, g := range o.gates {
			g.open()
		}
		o.mu.Unlock()
		o.Server.CloseClientConnections()
		o.Server.Close()
	})
	o.CAFile = filepath.Join(t.TempDir(), "origin-ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.Server.Certificate().Raw})
	if err := os.WriteFile(o.CAFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return o
}

func (g *Gate) open() {
	g.once.Do(func() { close(g.Release) })
}

// Open releases the gate (idempotent).
func (g *Gate) Open() { g.open() }

// URL of a generated file of size bytes.
func (o *Origin) URL(size int64) string { return o.Server.URL + "/f/" + strconv.FormatInt(size, 10) }

// StatusURL answers every request with code.
func (o *Origin) StatusURL(code int) string { return o.Server.URL + "/status/" + strconv.Itoa(code) }

// GateNext makes the next request for the file of size bytes stop after at
// bytes until the gate is opened.
func (o *Origin) GateNext(size, at int64) *Gate {
	g := &Gate{At: at, Reached: make(chan struct{}), Release: make(chan struct{})}
	o.mu.Lock()
	o.gates["/f/"+strconv.FormatInt(size, 10)] = g
	o.mu.Unlock()
	return g
}

// RetryAfter sets the Retry-After header of /status/ answers.
func (o *Origin) RetryAfter(v string) {
	o.mu.Lock()
	o.retryIn = v
	o.mu.Unlock()
}

// Ranges returns the Range header of every request so far, in order.
func (o *Origin) Ranges() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.ranges...)
}

// Conns is how many connections clients have opened so far.
func (o *Origin) Conns() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.conns
}

// Sum is the hex SHA-256 of the generated file of size bytes.
func Sum(size int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, services.NewPattern(size)); err != nil {
		panic(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// FileSum is the hex SHA-256 of a file.
func FileSum(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (o *Origin) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.ranges = append(o.ranges, r.Header.Get("Range"))
	g := o.gates[r.URL.Path]
	delete(o.gates, r.URL.Path)
	retry := o.retryIn
	o.mu.Unlock()

	if code, ok := cut(r.URL.Path, "/status/"); ok {
		n, _ := strconv.Atoi(code)
		if retry != "" {
			w.Header().Set("Retry-After", retry)
		}
		http.Error(w, http.StatusText(n), n)
		return
	}
	sizeStr, ok := cut(r.URL.Path, "/f/")
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if !ok || err != nil || size < 0 {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"gen-`+sizeStr+`"`)
	var body io.ReadSeeker = services.NewPattern(size)
	if g != nil {
		body = &gated{ReadSeeker: body, g: g}
	}
	http.ServeContent(w, r, "f.bin", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), body)
}

func cut(s, prefix string) (string, bool) {
	if len(s) > len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return "", false
}

type gated struct {
	io.ReadSeeker
	pos int64
	g   *Gate
	hit sync.Once
}

func (r *gated) Seek(off int64, whence int) (int64, error) {
	p, err := r.ReadSeeker.Seek(off, whence)
	r.pos = p
	return p, err
}

func (r *gated) Read(b []byte) (int, error) {
	if r.pos >= r.g.At {
		r.hit.Do(func() { close(r.g.Reached) })
		<-r.g.Release
		return 0, io.ErrUnexpectedEOF
	}
	if rem := r.g.At - r.pos; int64(len(b)) > rem {
		b = b[:rem]
	}
	n, err := r.ReadSeeker.Read(b)
	r.pos += int64(n)
	return n, err
}
