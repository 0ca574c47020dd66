// Package origintest is a fault-injecting HTTP(S) origin for tests of
// downloads: it serves deterministic content of any size generated from a
// seed (never held in memory), with real Range/If-Range handling
// (http.ServeContent), and misbehaves on request: it drops connections
// after N body bytes, answers 503 with Retry-After, 404 or 401, ignores
// Range or If-Range, sends a wrong Content-Range or a multipart answer,
// stalls after N bytes until released, and changes a file (ETag and
// content) after K requests or N bytes. It counts requests and the Range
// headers it saw, and lets a test wait for a condition (Wait) instead of
// sleeping.
//
// It is a normal package, not a _test file, so that tests of other
// packages (the agent, the services stack) can use it. It imports only the
// standard library.
package origintest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// File is one version of a served file.
type File struct {
	Content      Content
	ETag         string    // sent as is (quote it: `"v1"`); "" sends none
	LastModified time.Time // zero sends none
}

// Fault is a misbehaviour applied to matching requests. The zero Fault
// changes nothing.
type Fault struct {
	Path  string // only requests for this path; "" matches every path
	Skip  int    // let this many matching requests through first
	Count int    // apply to this many requests, then retire; 0 = until ClearFaults

	Status     int    // answer this status (e.g. 503, 404, 401) with a short body instead of the file
	RetryAfter string // Retry-After header sent with Status ("7" or an HTTP-date)
	Date       string // Date header to send (for deterministic HTTP-date Retry-After)

	IgnoreRange       bool // answer 200 with the whole file even to a Range request
	IgnoreIfRange     bool // serve the asked range even when If-Range does not match
	WrongContentRange bool // answer a Range request with a 206 starting one byte later than asked
	Multipart         bool // answer a Range request with multipart/byteranges

	Drop         bool  // abort the connection after DropAfter body bytes
	DropAfter    int64 //
	Stall        bool  // stop sending after StallAfter body bytes until Release (or the client leaves)
	StallAfter   int64 //
	StallForever bool  // with Stall: ignore Release, wait for the client to leave
}

// Request is what the origin saw of one request.
type Request struct {
	Method, Path   string
	Range, IfRange string
	Header         http.Header
}

// Stats are the origin's counters.
type Stats struct {
	Requests        int   // every request
	RangeRequests   int   // requests with a Range header
	IfRangeRequests int   // requests with an If-Range header
	BodyBytes       int64 // body bytes written to clients
	Stalled         int   // responses currently stalled
	Stalls          int   // responses that reached a stall, ever
	Drops           int   // connections aborted by Drop
}

// Options configure New.
type Options struct {
	HTTP2 bool // offer HTTP/2 (TLS only)
	Plain bool // serve plain HTTP instead of HTTPS
}

// Server is a running origin. Its URL is URL; clients trust it with CAPool
// (or CAPEM).
type Server struct {
	URL    string
	CAPool *x509.CertPool
	CAPEM  []byte
	CACert *x509.Certificate

	srv *httptest.Server

	mu      sync.Mutex
	files   map[string]*fileState
	faults  []*faultState
	stats   Stats
	reqs    []Request
	changed chan struct{} // closed and replaced on every change of stats
	release chan struct{} // closed and replaced by Release
	closed  bool
}

type fileState struct {
	cur      File
	next     *File
	afterReq int   // switch to next once reqs reaches this (-1 off)
	afterB   int64 // or once bytes reaches this (-1 off)
	reqs     int
	bytes    int64
}

type faultState struct {
	Fault
	skipped, applied int
}

// New starts an origin; tb.Cleanup closes it.
func New(tb testing.TB, o Options) *Server {
	tb.Helper()
	s, err := Start(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Start starts an origin; the caller closes it.
func Start(o Options) (*Server, error) {
	s := &Server{
		files:   map[string]*fileState{},
		changed: make(chan struct{}),
		release: make(chan struct{}),
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // aborted handlers are on purpose
	if o.Plain {
		s.srv.Start()
	} else {
		caCert, caKey, err := newCA()
		if err != nil {
			return nil, err
		}
		leaf, err := newLeaf(caCert, caKey)
		if err != nil {
			return nil, err
		}
		s.CACert = caCert
		s.CAPool = x509.NewCertPool()
		s.CAPool.AddCert(caCert)
		s.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})
		s.srv.EnableHTTP2 = o.HTTP2
		s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
		s.srv.StartTLS()
	}
	s.URL = s.srv.URL
	return s, nil
}

// Close stops the origin, releasing stalled responses first.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.release)
		s.release = make(chan struct{})
	}
	s.mu.Unlock()
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// CloseClientConnections closes every open connection (idle or not).
func (s *Server) CloseClientConnections() { s.srv.CloseClientConnections() }

// SetFile serves f at path (e.g. "/file.bin"), replacing what was there.
func (s *Server) SetFile(path string, f File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = &fileState{cur: f}
}

// ChangeAfter replaces the file at path with next after afterRequests more
// requests for it were served with the current version, or once
// afterBytes more body bytes of it were sent, whichever comes first (0
// disables a trigger; both 0 changes it for the very next request). A
// response in flight when the byte count is reached finishes with the old
// version; the next request sees the new.
func (s *Server) ChangeAfter(path string, next File, afterRequests int, afterBytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := s.files[path]
	if fs == nil {
		panic("origintest: ChangeAfter for unknown path " + path)
	}
	fs.next, fs.afterReq, fs.afterB = &next, -1, -1
	if afterRequests > 0 || afterBytes <= 0 {
		fs.afterReq = fs.reqs + afterRequests
	}
	if afterBytes > 0 {
		fs.afterB = fs.bytes + afterBytes
	}
}

// Current is the version of the file at path now served.
func (s *Server) Current(path string) File {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.files[path].cur
}

// Inject adds a fault. Faults are tried in the order they were added; a
// request gets the first one that matches.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &faultState{Fault: f})
}

// ClearFaults removes every fault (stalled responses stay stalled until
// Release).
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Release lets every currently stalled response (not StallForever) go on.
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.release)
	s.release = make(chan struct{})
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Requests returns every request seen, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// Ranges returns the Range header of every request ("" for none), in order.
func (s *Server) Ranges() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.reqs))
	for i, r := range s.reqs {
		out[i] = r.Range
	}
	return out
}

// Wait blocks until cond holds for the counters or ctx ends.
func (s *Server) Wait(ctx context.Context, cond func(Stats) bool) error {
	for {
		s.mu.Lock()
		ok, ch := cond(s.stats), s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("origintest: waiting: %w", context.Cause(ctx))
		}
	}
}

// update changes the stats under the lock and wakes waiters.
func (s *Server) update(f func(*Stats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updateLocked(f)
}

func (s *Server) updateLocked(f func(*Stats)) {
	f(&s.stats)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	rq := Request{Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"), IfRange: r.Header.Get("If-Range"), Header: r.Header.Clone()}
	s.reqs = append(s.reqs, rq)
	s.updateLocked(func(st *Stats) {
		st.Requests++
		if rq.Range != "" {
			st.RangeRequests++
		}
		if rq.IfRange != "" {
			st.IfRangeRequests++
		}
	})
	fs := s.files[r.URL.Path]
	var fault Fault
	for _, f := range s.faults {
		if f.Path != "" && f.Path != r.URL.Path || f.Count > 0 && f.applied >= f.Count {
			continue
		}
		if f.skipped < f.Skip {
			f.skipped++
			continue
		}
		f.applied++
		fault = f.Fault
		break
	}
	var file File
	if fs != nil {
		if fs.next != nil && (fs.afterReq >= 0 && fs.reqs >= fs.afterReq || fs.afterB >= 0 && fs.bytes >= fs.afterB) {
			fs.cur, fs.next = *fs.next, nil
		}
		fs.reqs++
		file = fs.cur
	}
	release := s.release
	s.mu.Unlock()

	if fault.Date != "" {
		w.Header().Set("Date", fault.Date)
	}
	if fault.Status != 0 {
		if fault.RetryAfter != "" {
			w.Header().Set("Retry-After", fault.RetryAfter)
		}
		http.Error(w, http.StatusText(fault.Status), fault.Status)
		return
	}
	if fs == nil {
		http.NotFound(w, r)
		return
	}
	cw := &countingWriter{ResponseWriter: w, s: s, fs: fs, fault: fault, release: release, ctx: r.Context()}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	if file.ETag != "" {
		h.Set("ETag", file.ETag)
	}
	if fault.IgnoreRange {
		r.Header.Del("Range")
	}
	if fault.IgnoreIfRange {
		r.Header.Del("If-Range")
	}
	if rng := r.Header.Get("Range"); rng != "" && (fault.WrongContentRange || fault.Multipart) {
		first, last, ok := parseSimpleRange(rng, file.Content.Size)
		if !ok {
			http.Error(w, "origintest: faults need a single bytes=a-b or bytes=a- range", http.StatusBadRequest)
			return
		}
		if fault.WrongContentRange {
			first++ // a Content-Range that starts elsewhere than asked (empty when first == last)
			if first > last {
				first = last
			}
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, file.Content.Size))
			h.Set("Content-Length", strconv.FormatInt(last-first+1, 10))
			w.WriteHeader(http.StatusPartialContent)
			copyRange(cw, file.Content, first, last)
			return
		}
		mw := multipart.NewWriter(cw)
		h.Set("Content-Type", "multipart/byteranges; boundary="+mw.Boundary())
		w.WriteHeader(http.StatusPartialContent)
		pw, _ := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":  {"application/octet-stream"},
			"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", first, last, file.Content.Size)},
		})
		copyRange(pw, file.Content, first, last)
		mw.Close()
		return
	}
	http.ServeContent(cw, r, "", file.LastModified, file.Content.Reader())
}

// parseSimpleRange parses "bytes=a-b" or "bytes=a-" against size.
func parseSimpleRange(v string, size int64) (first, last int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first >= size {
		return 0, 0, false
	}
	last = size - 1
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
			return 0, 0, false
		}
		last = min(last, size-1)
	}
	return first, last, true
}

// countingWriter counts body bytes and carries out Drop and Stall.
type countingWriter struct {
	http.ResponseWriter
	s       *Server
	fs      *fileState
	fault   Fault
	release chan struct{}
	ctx     context.Context
	sent    int64
	stalled bool
}

func (c *countingWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		limit := int64(len(p))
		if c.fault.Drop {
			limit = min(limit, c.fault.DropAfter-c.sent)
		}
		if c.fault.Stall && !c.stalled {
			limit = min(limit, c.fault.StallAfter-c.sent)
		}
		if limit > 0 {
			n, err := c.ResponseWriter.Write(p[:limit])
			c.count(n)
			written += n
			p = p[n:]
			if err != nil {
				return written, err
			}
			continue
		}
		http.NewResponseController(c.ResponseWriter).Flush()
		if c.fault.Drop && c.sent >= c.fault.DropAfter {
			c.s.update(func(st *Stats) { st.Drops++ })
			panic(http.ErrAbortHandler)
		}
		// Stall.
		c.stalled = true
		c.s.update(func(st *Stats) { st.Stalled++; st.Stalls++ })
		rel := c.release
		if c.fault.StallForever {
			rel = nil
		}
		select {
		case <-rel:
			c.s.update(func(st *Stats) { st.Stalled-- })
		case <-c.ctx.Done():
			c.s.update(func(st *Stats) { st.Stalled-- })
			return written, c.ctx.Err()
		}
	}
	return written, nil
}

func (c *countingWriter) count(n int) {
	c.sent += int64(n)
	c.s.mu.Lock()
	c.fs.bytes += int64(n)
	c.s.updateLocked(func(st *Stats) { st.BodyBytes += int64(n) })
	c.s.mu.Unlock()
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func newCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "origintest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func newLeaf(ca *x509.Certificate, caKey *ecdsa.PrivateKey) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func copyRange(w io.Writer, c Content, first, last int64) {
	rd := c.Reader()
	rd.Seek(first, io.SeekStart)
	io.CopyN(w, rd, last-first+1)
}
