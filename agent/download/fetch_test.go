package download

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
)

// fixture is an HTTPS origin, a client that trusts it and an agent root.
type fixture struct {
	ca     *testCA
	origin *origin
	srv    *httptest.Server
	client *http.Client
	root   *os.Root
	dir    string
}

func newFixture(t *testing.T, content []byte, etag string) *fixture {
	t.Helper()
	ca := newCA(t, "test CA")
	o := &origin{content: content, etag: etag}
	srv := tlsServer(t, o, ca.localhost(t), nil, false)
	root, dir := testRoot(t)
	return &fixture{
		ca: ca, origin: o, srv: srv, root: root, dir: dir,
		client: testClient(t, ClientOptions{RootCAs: ca.pool}),
	}
}

const tempName = "dl/.file.bin.ferry-job1-0.part"

// recorder collects hook calls.
type recorder struct {
	mu     sync.Mutex
	starts []Start
	cps    []Checkpoint
}

func (f *fixture) request(rec *recorder) Request {
	r := Request{
		URL:                f.srv.URL + "/file.bin?token=s3cr3t",
		Root:               f.root,
		TempName:           tempName,
		Client:             f.client,
		CheckpointInterval: time.Hour, // only byte-driven checkpoints: deterministic
		CheckpointBytes:    1 << 20,
	}
	if rec != nil {
		r.OnTransferring = func(s Start) error {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.starts = append(rec.starts, s)
			return nil
		}
		r.OnCheckpoint = func(c Checkpoint) error {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.cps = append(rec.cps, c)
			return nil
		}
	}
	return r
}

func (f *fixture) staged(t *testing.T) []byte {
	t.Helper()
	b, err := f.root.ReadFile(tempName)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkResult(t *testing.T, res Result, want []byte) {
	t.Helper()
	if res.Bytes != int64(len(want)) || res.Total != int64(len(want)) {
		t.Errorf("result bytes=%d total=%d, want %d", res.Bytes, res.Total, len(want))
	}
	if res.SHA256 != sha256Hex(want) {
		t.Errorf("result SHA-256 %s, want %s", res.SHA256, sha256Hex(want))
	}
}

func TestFetchFull(t *testing.T) {
	content := randomBytes(t, 3<<20+12345)
	f := newFixture(t, content, `"v1"`)
	rec := &recorder{}
	r := f.request(rec)
	r.OnCheckpoint = func(c Checkpoint) error {
		// The hook runs after the sidecar claims the bytes.
		st := checkInvariant(t, f.root, tempName)
		if st.Offset != c.Bytes {
			t.Errorf("checkpoint %d but sidecar offset %d", c.Bytes, st.Offset)
		}
		rec.cps = append(rec.cps, c)
		return nil
	}
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	if res.ETag != `"v1"` {
		t.Errorf("ETag %q", res.ETag)
	}
	if !bytes.Equal(f.staged(t), content) {
		t.Fatal("staged file differs from the origin's")
	}
	if want := []Start{{Offset: 0, Total: int64(len(content))}}; fmt.Sprint(rec.starts) != fmt.Sprint(want) {
		t.Errorf("starts %v, want %v", rec.starts, want)
	}
	if len(rec.cps) != 3 {
		t.Errorf("got %d checkpoints for 3 MiB at 1 MiB each: %v", len(rec.cps), rec.cps)
	}
	for i, c := range rec.cps {
		if c.Total != int64(len(content)) || (i > 0 && c.Bytes <= rec.cps[i-1].Bytes) {
			t.Errorf("checkpoint %d: %+v", i, c)
		}
	}
	st := checkInvariant(t, f.root, tempName)
	if !st.Complete || st.Offset != int64(len(content)) {
		t.Errorf("final sidecar %+v", st)
	}
	reqs := f.origin.requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Range") != "" || reqs[0].Header.Get("Accept-Encoding") != "identity" {
		t.Errorf("requests: %d, first headers %v", len(reqs), reqs[0].Header)
	}
	if fi, err := f.root.Stat(stateName(tempName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("sidecar mode: %v %v", fi, err)
	}
}

func TestFetchHTTP2AndEmptyFile(t *testing.T) {
	ca := newCA(t, "test CA")
	var proto atomic.Value
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto.Store(r.Proto)
		w.Header().Set("Content-Length", "0")
	}), ca.localhost(t), nil, true)
	root, _ := testRoot(t)
	res, err := Fetch(t.Context(), Request{URL: srv.URL + "/empty", Root: root, TempName: "empty.part", Client: testClient(t, ClientOptions{RootCAs: ca.pool})})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, nil)
	if p := proto.Load(); p != "HTTP/2.0" {
		t.Errorf("protocol %v, want HTTP/2.0", p)
	}
}

// dropAndFetch makes a first Fetch that the server cuts after drop bytes and
// checks that the bytes are kept as a transient connection error.
func dropAndFetch(t *testing.T, f *fixture, drop int64) {
	t.Helper()
	f.origin.set(func(o *origin) { o.dropAfter = drop })
	_, err := Fetch(t.Context(), f.request(nil))
	fl := asFailure(t, err)
	if fl.Code != job.ERROR_WINHTTP_CONNECTION_ERROR || !fl.Transient || fl.Context != job.ContextGeneralTransport {
		t.Fatalf("dropped connection: %+v", fl)
	}
	if strings.Contains(fl.Error(), "s3cr3t") {
		t.Errorf("the description leaks the URL's query: %s", fl.Error())
	}
	if st := checkInvariant(t, f.root, tempName); st.Offset != drop {
		t.Fatalf("after the drop the sidecar keeps %d bytes, want %d", st.Offset, drop)
	}
}

func TestResumeAfterDroppedConnection(t *testing.T) {
	content := randomBytes(t, 3<<20)
	f := newFixture(t, content, `"v1"`)
	const drop = 1<<20 + 4321
	dropAndFetch(t, f, drop)

	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	if !bytes.Equal(f.staged(t), content) {
		t.Fatal("resumed file differs from the origin's")
	}
	reqs := f.origin.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	if got, want := reqs[1].Header.Get("Range"), fmt.Sprintf("bytes=%d-", drop); got != want {
		t.Errorf("resume Range %q, want %q", got, want)
	}
	if got := reqs[1].Header.Get("If-Range"); got != `"v1"` {
		t.Errorf("resume If-Range %q", got)
	}
	if want := (Start{Offset: drop, Total: int64(len(content))}); len(rec.starts) != 1 || rec.starts[0] != want {
		t.Errorf("starts %v, want %v", rec.starts, want)
	}
}

func TestServerIgnoringRangeRestarts(t *testing.T) {
	content := randomBytes(t, 2<<20)
	f := newFixture(t, content, `"v1"`)
	dropAndFetch(t, f, 700_000)
	f.origin.set(func(o *origin) { o.ignoreRange = true })

	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	if !bytes.Equal(f.staged(t), content) {
		t.Fatal("file differs")
	}
	if want := (Start{Offset: 0, Total: int64(len(content)), Restarted: RestartNoRangeSupport}); len(rec.starts) != 1 || rec.starts[0] != want {
		t.Errorf("starts %v, want %v", rec.starts, want)
	}
}

func TestValidatorChangedRestarts(t *testing.T) {
	v1 := randomBytes(t, 2<<20)
	f := newFixture(t, v1, `"v1"`)
	dropAndFetch(t, f, 1<<20)
	v2 := randomBytes(t, 2<<20+99)
	f.origin.set(func(o *origin) { o.content, o.etag = v2, `"v2"` })

	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, v2)
	if res.ETag != `"v2"` || !bytes.Equal(f.staged(t), v2) {
		t.Fatalf("etag %q; file matches v2: %v", res.ETag, bytes.Equal(f.staged(t), v2))
	}
	if want := (Start{Offset: 0, Total: int64(len(v2)), Restarted: RestartValidatorChange}); len(rec.starts) != 1 || rec.starts[0] != want {
		t.Errorf("starts %v, want %v", rec.starts, want)
	}
	if reqs := f.origin.requests(); len(reqs) != 2 || reqs[1].Header.Get("If-Range") != `"v1"` {
		t.Errorf("second request must be conditional on the old ETag")
	}
}

func TestWrongContentRangeRestartsWithoutRange(t *testing.T) {
	content := randomBytes(t, 2<<20)
	f := newFixture(t, content, `"v1"`)
	dropAndFetch(t, f, 1<<20)
	f.origin.set(func(o *origin) { o.badRange = true })

	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	if !bytes.Equal(f.staged(t), content) {
		t.Fatal("file differs")
	}
	reqs := f.origin.requests()
	if len(reqs) != 3 || reqs[1].Header.Get("Range") == "" || reqs[2].Header.Get("Range") != "" || reqs[2].Header.Get("If-Range") != "" {
		t.Fatalf("want drop, ranged request, then a plain GET; got %d requests", len(reqs))
	}
	if want := (Start{Offset: 0, Total: int64(len(content)), Restarted: RestartBadContentRange}); len(rec.starts) != 1 || rec.starts[0] != want {
		t.Errorf("starts %v, want %v", rec.starts, want)
	}
}

func TestRangeNotSatisfiableAtEndIsDone(t *testing.T) {
	content := randomBytes(t, 1<<20)
	f := newFixture(t, content, `"v1"`)
	first, err := Fetch(t.Context(), f.request(nil))
	if err != nil {
		t.Fatal(err)
	}
	// A crash after the last checkpoint, before the Complete sidecar.
	st, h, _, err := loadState(f.root, tempName)
	if err != nil {
		t.Fatal(err)
	}
	st.Complete = false
	if err := saveState(f.root, nil, tempName, st, h); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res, first) {
		t.Errorf("result %+v, want %+v", res, first)
	}
	reqs := f.origin.requests()
	if len(reqs) != 2 || reqs[1].Header.Get("Range") != fmt.Sprintf("bytes=%d-", len(content)) {
		t.Errorf("want a Range request from the end")
	}
	if len(rec.starts) != 0 {
		t.Errorf("nothing was transferred, yet OnTransferring saw %v", rec.starts)
	}
	if !checkInvariant(t, f.root, tempName).Complete {
		t.Error("sidecar not complete")
	}
}

func TestCompleteSidecarShortCircuits(t *testing.T) {
	content := randomBytes(t, 100_000)
	f := newFixture(t, content, `"v1"`)
	first, err := Fetch(t.Context(), f.request(nil))
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Close() // any request now fails
	second, err := Fetch(t.Context(), f.request(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(first, second) {
		t.Errorf("second result %+v, want %+v", second, first)
	}
	if n := len(f.origin.requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestCorruptSidecarRestarts(t *testing.T) {
	content := randomBytes(t, 300_000)
	f := newFixture(t, content, `"v1"`)
	if err := f.root.MkdirAll("dl", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.root.WriteFile(tempName, []byte("junk that must go"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.root.WriteFile(stateName(tempName), []byte(`{"v":1,"url":`), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	if !bytes.Equal(f.staged(t), content) {
		t.Fatal("file differs")
	}
	if len(rec.starts) != 1 || rec.starts[0].Restarted != RestartStateMismatch {
		t.Errorf("starts %v", rec.starts)
	}
	if n := len(f.origin.requests()); n != 1 || f.origin.requests()[0].Header.Get("Range") != "" {
		t.Errorf("want one unranged request")
	}
}

func TestCheckpointHookErrorAborts(t *testing.T) {
	content := randomBytes(t, 3<<20)
	f := newFixture(t, content, `"v1"`)
	errLeaseLost := errors.New("lease lost")
	r := f.request(nil)
	var at int64
	r.OnCheckpoint = func(c Checkpoint) error { at = c.Bytes; return errLeaseLost }
	_, err := Fetch(t.Context(), r)
	if !errors.Is(err, errLeaseLost) {
		t.Fatalf("error %v, want the hook's", err)
	}
	var fl *Failure
	if errors.As(err, &fl) {
		t.Errorf("a hook error is not a transfer failure: %v", fl)
	}
	if st := checkInvariant(t, f.root, tempName); st.Offset != at || at < 1<<20 {
		t.Fatalf("sidecar offset %d, hook saw %d", st.Offset, at)
	}
	// The next owner resumes from there.
	res, err := Fetch(t.Context(), f.request(nil))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	if reqs := f.origin.requests(); reqs[len(reqs)-1].Header.Get("Range") != fmt.Sprintf("bytes=%d-", at) {
		t.Errorf("resume did not start at the checkpoint")
	}
}

func TestTransferringHookErrorAborts(t *testing.T) {
	f := newFixture(t, randomBytes(t, 1000), `"v1"`)
	r := f.request(nil)
	errNo := errors.New("no")
	r.OnTransferring = func(Start) error { return errNo }
	if _, err := Fetch(t.Context(), r); !errors.Is(err, errNo) {
		t.Fatalf("error %v", err)
	}
	// The staging file this Fetch created is gone again: nothing was
	// staged (a fenced agent leaves no empty file behind).
	if _, err := f.root.Stat(tempName); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("staging file after a refused start: %v", err)
	}

	// A staging file that existed before is kept, with no byte written.
	if err := f.root.WriteFile(tempName, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Fetch(t.Context(), r); !errors.Is(err, errNo) {
		t.Fatalf("error %v", err)
	}
	if b := f.staged(t); len(b) != 0 {
		t.Errorf("%d bytes written before OnTransferring allowed it", len(b))
	}
}

func TestContextCancelLeavesResumableState(t *testing.T) {
	content := randomBytes(t, 4<<20)
	release := make(chan struct{})
	ca := newCA(t, "test CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		w.Header().Set("ETag", `"v1"`)
		w.Write(content[:2<<20])
		http.NewResponseController(w).Flush()
		select { // hold the rest back until the client gives up
		case <-r.Context().Done():
		case <-release:
		}
	}), ca.localhost(t), nil, false)
	t.Cleanup(func() { close(release) })
	root, _ := testRoot(t)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r := Request{
		URL: srv.URL, Root: root, TempName: "c.part", Client: testClient(t, ClientOptions{RootCAs: ca.pool}),
		CheckpointInterval: time.Hour, CheckpointBytes: 1 << 20,
		OnCheckpoint: func(Checkpoint) error { cancel(); return nil },
	}
	_, err := Fetch(ctx, r)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	var fl *Failure
	if errors.As(err, &fl) {
		t.Fatalf("cancellation must not be a Failure: %v", fl)
	}
	st := checkInvariant(t, root, "c.part")
	if st.Offset < 1<<20 || st.Offset > 2<<20 || st.Complete {
		t.Errorf("sidecar after cancel: offset %d complete %v", st.Offset, st.Complete)
	}
}

func TestStallIsTransientTimeout(t *testing.T) {
	ca := newCA(t, "test CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		w.Write(make([]byte, 300_000))
		http.NewResponseController(w).Flush()
		<-r.Context().Done() // stall until the client hangs up
	}), ca.localhost(t), nil, false)
	root, _ := testRoot(t)
	client := testClient(t, ClientOptions{RootCAs: ca.pool, IdleReadTimeout: 200 * time.Millisecond})
	_, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: "s.part", Client: client})
	fl := asFailure(t, err)
	if fl.Code != job.ERROR_WINHTTP_TIMEOUT || !fl.Transient {
		t.Fatalf("stall: %+v", fl)
	}
	if st := checkInvariant(t, root, "s.part"); st.Offset != 300_000 {
		t.Errorf("kept %d bytes, want 300000", st.Offset)
	}
}

func TestHTTPStatusFailures(t *testing.T) {
	ca := newCA(t, "test CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var code int
		fmt.Sscan(strings.TrimPrefix(r.URL.Path, "/"), &code)
		switch code {
		case 503:
			w.Header().Set("Retry-After", "7")
		case 429:
			w.Header().Set("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
			w.Header().Set("Retry-After", "Sun, 06 Nov 1994 08:51:37 GMT")
		}
		http.Error(w, "no", code)
	}), ca.localhost(t), nil, false)
	client := testClient(t, ClientOptions{RootCAs: ca.pool})
	root, _ := testRoot(t)
	for _, tc := range []struct {
		status     int
		hresult    uint32
		transient  bool
		retryAfter time.Duration
	}{
		{404, 0x80190194, false, 0},
		{403, 0x80190193, false, 0},
		{408, 0x80190198, true, 0},
		{429, 0x801901AD, true, 2 * time.Minute},
		{500, 0x801901F4, true, 0},
		{503, 0x801901F7, true, 7 * time.Second},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			_, err := Fetch(t.Context(), Request{URL: fmt.Sprintf("%s/%d?sig=abc", srv.URL, tc.status), Root: root, TempName: "h.part", Client: client})
			fl := asFailure(t, err)
			t.Log(fl)
			want := fmt.Sprintf("BG_E_HTTP_ERROR_%d", tc.status)
			if fl.Code.Symbol != want || fl.Code.HResult != tc.hresult || fl.Transient != tc.transient ||
				fl.RetryAfter != tc.retryAfter || fl.Context != job.ContextRemoteFile {
				t.Errorf("got %+v", fl)
			}
			if !strings.Contains(fl.Description, fmt.Sprintf("%d %s", tc.status, http.StatusText(tc.status))) || strings.Contains(fl.Description, "sig=") {
				t.Errorf("description %q", fl.Description)
			}
		})
	}
}

func TestConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	root, _ := testRoot(t)
	_, err = Fetch(t.Context(), Request{URL: "http://" + addr + "/x", Root: root, TempName: "r.part", Client: testClient(t, ClientOptions{})})
	fl := asFailure(t, err)
	if fl.Code != job.ERROR_WINHTTP_CANNOT_CONNECT || !fl.Transient || fl.Context != job.ContextGeneralTransport {
		t.Fatalf("got %+v", fl)
	}
}

func TestNameNotResolved(t *testing.T) {
	root, _ := testRoot(t)
	_, err := Fetch(t.Context(), Request{URL: "https://no-such-host.invalid/x", Root: root, TempName: "n.part", Client: testClient(t, ClientOptions{})})
	fl := asFailure(t, err)
	if fl.Code != job.ERROR_WINHTTP_NAME_NOT_RESOLVED || !fl.Transient {
		t.Fatalf("got %+v", fl)
	}
}

func TestTLSFailures(t *testing.T) {
	ca := newCA(t, "origin CA")
	other := newCA(t, "some other CA")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	requireClientCert := func(c *tls.Config) {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = ca.pool
	}
	clientCert := ca.issue(t, leafOpts{client: true})
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		cfg    func(*tls.Config)
		opts   ClientOptions
		want   job.Code
		wantOK bool
	}{
		{"unknown CA", ca.localhost(t), nil, ClientOptions{RootCAs: other.pool}, job.ERROR_WINHTTP_SECURE_INVALID_CA, false},
		{"expired", ca.issue(t, leafOpts{ips: ips, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)}),
			nil, ClientOptions{RootCAs: ca.pool}, job.ERROR_WINHTTP_SECURE_CERT_DATE, false},
		{"not yet valid", ca.issue(t, leafOpts{ips: ips, notBefore: time.Now().Add(time.Hour)}),
			nil, ClientOptions{RootCAs: ca.pool}, job.ERROR_WINHTTP_SECURE_CERT_DATE, false},
		{"wrong host", ca.issue(t, leafOpts{dns: []string{"elsewhere.test"}}), nil, ClientOptions{RootCAs: ca.pool}, job.ERROR_WINHTTP_SECURE_CERT_CN, false},
		{"client cert missing", ca.localhost(t), requireClientCert, ClientOptions{RootCAs: ca.pool}, job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED, false},
		{"client cert given", ca.localhost(t), requireClientCert, ClientOptions{RootCAs: ca.pool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &clientCert, nil }}, job.Code{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tlsServer(t, h, tc.cert, tc.cfg, false)
			srv.Config.ErrorLog = quietLog()
			root, _ := testRoot(t)
			_, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: "t.part", Client: testClient(t, tc.opts)})
			if tc.wantOK {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			fl := asFailure(t, err)
			t.Log(fl)
			if fl.Code != tc.want || fl.Transient {
				t.Fatalf("got %+v (%v)", fl, fl.Err)
			}
		})
	}
}

func TestHTTPSToHTTPRedirect(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "plain") }))
	t.Cleanup(plain.Close)
	ca := newCA(t, "test CA")
	srv := tlsServer(t, http.RedirectHandler(plain.URL+"/file", http.StatusFound), ca.localhost(t), nil, false)
	root, _ := testRoot(t)

	_, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: "r.part", Client: testClient(t, ClientOptions{RootCAs: ca.pool})})
	fl := asFailure(t, err)
	if fl.Code != job.ERROR_WINHTTP_REDIRECT_FAILED || fl.Transient {
		t.Fatalf("got %+v", fl)
	}
	if b, _ := root.ReadFile("r.part"); len(b) != 0 {
		t.Errorf("refused redirect still wrote %q", b)
	}

	res, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: "r2.part",
		Client: testClient(t, ClientOptions{RootCAs: ca.pool, AllowHTTPSToHTTP: true})})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, []byte("plain"))
}

func TestLinkLocalRefused(t *testing.T) {
	root, _ := testRoot(t)
	for _, u := range []string{"http://169.254.169.254/latest/meta-data/", "http://[fe80::1%25lo]:8080/", "http://[::ffff:169.254.169.254]/"} {
		_, err := Fetch(t.Context(), Request{URL: u, Root: root, TempName: "m.part", Client: testClient(t, ClientOptions{})})
		fl := asFailure(t, err)
		if fl.Code != job.E_ACCESSDENIED || fl.Transient || !strings.Contains(fl.Description, "AllowPrivateMetadata") {
			t.Errorf("%s: got %+v", u, fl)
		}
	}
}

func TestBadURLs(t *testing.T) {
	root, _ := testRoot(t)
	for _, tc := range []struct {
		url  string
		want job.Code
	}{
		{"ftp://example.com/x", job.ERROR_WINHTTP_UNRECOGNIZED_SCHEME},
		{"file:///etc/passwd", job.ERROR_WINHTTP_UNRECOGNIZED_SCHEME},
		{"http://", job.ERROR_WINHTTP_INVALID_URL},
		{"example.com/x", job.ERROR_WINHTTP_INVALID_URL},
		{"http://a b.com/?token=s3cr3t%zz", job.ERROR_WINHTTP_INVALID_URL},
		{"https:opaque", job.ERROR_WINHTTP_INVALID_URL},
	} {
		_, err := Fetch(t.Context(), Request{URL: tc.url, Root: root, TempName: "u.part", Client: testClient(t, ClientOptions{})})
		fl := asFailure(t, err)
		if fl.Code != tc.want || fl.Transient || strings.Contains(fl.Error(), "s3cr3t") {
			t.Errorf("%q: got %+v", tc.url, fl)
		}
	}
}

func TestTempNameOutsideRootRefused(t *testing.T) {
	f := newFixture(t, []byte("data"), `"v1"`)
	for _, name := range []string{"../escape.part", "/tmp/abs.part", "dl/../../x.part", "a/../b.part", "", "."} {
		r := f.request(nil)
		r.TempName = name
		_, err := Fetch(t.Context(), r)
		fl := asFailure(t, err)
		if fl.Code != job.E_ACCESSDENIED || fl.Context != job.ContextLocalFile || fl.Transient {
			t.Errorf("%q: got %+v", name, fl)
		}
		if err := Discard(f.root, name); err == nil {
			t.Errorf("Discard(%q) accepted", name)
		}
	}
	if n := len(f.origin.requests()); n != 0 {
		t.Errorf("%d requests made for refused names", n)
	}
}

func TestSymlinkOutOfRootNotFollowed(t *testing.T) {
	f := newFixture(t, []byte("secret-overwrite"), `"v1"`)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory link and a file link, both leading out of the root.
	if err := os.Symlink(outside, filepath.Join(f.dir, "dl")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(f.dir, "file.part")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{tempName, "file.part", "dl/victim"} {
		r := f.request(nil)
		r.TempName = name
		_, err := Fetch(t.Context(), r)
		fl := asFailure(t, err)
		t.Log(fl)
		if fl.Code != job.E_ACCESSDENIED || fl.Context != job.ContextLocalFile {
			t.Errorf("%q: got %+v (%v)", name, fl, fl.Err)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "original" {
		t.Errorf("file outside the root changed: %q", b)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Errorf("files created outside the root: %v", ents)
	}
	if n := len(f.origin.requests()); n != 0 {
		t.Errorf("%d requests made", n)
	}
}

func TestDiscard(t *testing.T) {
	f := newFixture(t, randomBytes(t, 10_000), `"v1"`)
	if err := Discard(f.root, tempName); err != nil {
		t.Fatalf("discard of nothing: %v", err)
	}
	if _, err := Fetch(t.Context(), f.request(nil)); err != nil {
		t.Fatal(err)
	}
	if err := Discard(f.root, tempName); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{tempName, stateName(tempName)} {
		if _, err := f.root.Stat(n); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", n, err)
		}
	}
}

// TestLargeStreamBoundedHeap downloads 256 MiB generated on the fly by an
// origintest server in the same process and checks, sampling the live heap
// (runtime/metrics "/memory/classes/heap/objects:bytes") continuously during
// the transfer, that it does not grow with the file: memory is constant.
func TestLargeStreamBoundedHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB transfer; skipped with -short")
	}
	const size = 256 << 20
	// The bound covers both ends in this process: the engine's two copy
	// buffers, TLS and HTTP buffers of client and server, the origin's
	// block generator, plus garbage not yet collected between GC cycles.
	const bound = 16 << 20
	f := newOT(t, size, ClientOptions{})

	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() int64 { metrics.Read(sample); return int64(sample[0].Value.Uint64()) }
	runtime.GC()
	base := read()
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan int)
	go func() {
		n := 0
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sampled <- n
				return
			case <-tick.C:
				v := read()
				for p := peak.Load(); v > p && !peak.CompareAndSwap(p, v); p = peak.Load() {
				}
				n++
			}
		}
	}()
	r := f.request(nil)
	r.CheckpointBytes = 16 << 20
	res, err := Fetch(t.Context(), r)
	close(stop)
	n := <-sampled
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != size || res.SHA256 != f.c.SHA256() {
		t.Fatalf("result %+v", res)
	}
	growth := peak.Load() - base
	t.Logf("live heap objects: base %d KiB, peak %d KiB, growth %d KiB over %d samples", base>>10, peak.Load()>>10, growth>>10, n)
	if n < 10 {
		t.Errorf("only %d samples taken", n)
	}
	if growth > bound {
		t.Errorf("heap grew by %d MiB while streaming %d MiB (bound %d MiB)", growth>>20, size>>20, bound>>20)
	}
}

func TestServerCappingRangesIsFollowed(t *testing.T) {
	content := randomBytes(t, 3<<20+5)
	f := newFixture(t, content, `"v1"`)
	dropAndFetch(t, f, 100_000)
	f.origin.set(func(o *origin) { o.capRange = 1 << 20 })
	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	if !bytes.Equal(f.staged(t), content) {
		t.Fatal("file differs")
	}
	reqs := f.origin.requests()
	var ranges []string
	for _, r := range reqs[1:] {
		ranges = append(ranges, r.Header.Get("Range"))
	}
	want := []string{"bytes=100000-", "bytes=1148576-", "bytes=2197152-"}
	if fmt.Sprint(ranges) != fmt.Sprint(want) {
		t.Errorf("ranges %v, want %v", ranges, want)
	}
	if len(rec.starts) != 1 {
		t.Errorf("one transfer, one Start: %v", rec.starts)
	}
}

func TestWeakETagResumesOnLastModified(t *testing.T) {
	content := randomBytes(t, 2<<20)
	f := newFixture(t, content, `W/"weak"`)
	mod := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.origin.set(func(o *origin) { o.modtime = mod })
	dropAndFetch(t, f, 1<<20)
	res, err := Fetch(t.Context(), f.request(nil))
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res, content)
	reqs := f.origin.requests()
	if got, want := reqs[1].Header.Get("If-Range"), mod.Format(http.TimeFormat); got != want {
		t.Errorf("If-Range %q, want the Last-Modified date %q (a weak ETag cannot be used)", got, want)
	}
	if reqs[1].Header.Get("Range") != "bytes=1048576-" {
		t.Errorf("Range %q", reqs[1].Header.Get("Range"))
	}
}

func TestTooManyRedirects(t *testing.T) {
	ca := newCA(t, "test CA")
	var srv *httptest.Server
	srv = tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, srv.URL+"/again", http.StatusFound)
	}), ca.localhost(t), nil, false)
	root, _ := testRoot(t)
	_, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: "loop.part", Client: testClient(t, ClientOptions{RootCAs: ca.pool})})
	if fl := asFailure(t, err); fl.Code != job.ERROR_WINHTTP_REDIRECT_FAILED || fl.Transient {
		t.Fatalf("got %+v", fl)
	}
}

func TestResponseHeaderTimeout(t *testing.T) {
	ca := newCA(t, "test CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answer
	}), ca.localhost(t), nil, false)
	root, _ := testRoot(t)
	client := testClient(t, ClientOptions{RootCAs: ca.pool, ResponseHeaderTimeout: 100 * time.Millisecond})
	_, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: "hdr.part", Client: client})
	if fl := asFailure(t, err); fl.Code != job.ERROR_WINHTTP_TIMEOUT || !fl.Transient {
		t.Fatalf("got %+v", fl)
	}
}
