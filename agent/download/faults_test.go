package download

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/ferry-dev/ferry/job"
)

// otFixture is an origintest origin serving one file, a client that trusts
// it and an agent root.
type otFixture struct {
	s      *origintest.Server
	c      origintest.Content
	client *http.Client
	root   *os.Root
}

const otPath = "/f.bin"

func newOT(t *testing.T, size int64, o ClientOptions) *otFixture {
	t.Helper()
	s := origintest.New(t, origintest.Options{})
	c := origintest.Content{Seed: uint64(size), Size: size}
	s.SetFile(otPath, origintest.File{Content: c, ETag: `"v1"`, LastModified: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	o.RootCAs = s.CAPool
	root, _ := testRoot(t)
	return &otFixture{s: s, c: c, client: testClient(t, o), root: root}
}

func (f *otFixture) request(rec *recorder) Request {
	r := Request{
		URL:                f.s.URL + otPath + "?token=s3cr3t",
		Root:               f.root,
		TempName:           tempName,
		Client:             f.client,
		CheckpointInterval: time.Hour,
		CheckpointBytes:    256 << 10,
	}
	if rec != nil {
		r.OnTransferring = func(s Start) error {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.starts = append(rec.starts, s)
			return nil
		}
	}
	return r
}

// fileSHA256 is the SHA-256 of the staged file as it is on disk.
func fileSHA256(t *testing.T, root *os.Root, name string) string {
	t.Helper()
	b, err := root.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkStaged checks that Fetch's result and the bytes on disk are want's.
func checkStaged(t *testing.T, root *os.Root, res Result, want string, size int64) {
	t.Helper()
	if res.SHA256 != want || res.Bytes != size {
		t.Errorf("result %d bytes, SHA-256 %s; want %d, %s", res.Bytes, res.SHA256, size, want)
	}
	if got := fileSHA256(t, root, tempName); got != want {
		t.Errorf("staged file SHA-256 %s, want %s", got, want)
	}
}

type wantFailure struct {
	symbol     string
	hresult    uint32
	transient  bool
	context    string
	retryAfter time.Duration
}

func checkFailure(t *testing.T, err error, w wantFailure) *Failure {
	t.Helper()
	fl := asFailure(t, err)
	if fl.Code.Symbol != w.symbol || fl.Code.HResult != w.hresult || fl.Transient != w.transient ||
		(w.context != "" && fl.Context != w.context) || fl.RetryAfter != w.retryAfter {
		t.Errorf("failure %s (0x%08X) transient=%v context=%s retry-after=%v; want %+v (%s)",
			fl.Code.Symbol, fl.Code.HResult, fl.Transient, fl.Context, fl.RetryAfter, w, fl.Description)
	}
	if strings.Contains(fl.Error(), "s3cr3t") {
		t.Errorf("the description leaks the URL's query: %s", fl.Error())
	}
	return fl
}

var (
	wantDrop  = wantFailure{"ERROR_WINHTTP_CONNECTION_ERROR", 0x80072EFE, true, job.ContextGeneralTransport, 0}
	wantStall = wantFailure{"ERROR_WINHTTP_TIMEOUT", 0x80072EE2, true, job.ContextGeneralTransport, 0}
)

// TestFaultsThenResume runs each fault on the first attempt, checks the
// failure, clears the fault and checks that the next Fetch finishes the
// file byte for byte, resuming where the first left off.
func TestFaultsThenResume(t *testing.T) {
	const size = 1<<20 + 777
	date := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name       string
		fault      origintest.Fault
		opts       ClientOptions
		want       wantFailure
		resumeFrom int64 // the second Fetch's Range start (0: no Range)
	}{
		{"drop", origintest.Fault{Drop: true, DropAfter: 300_000}, ClientOptions{}, wantDrop, 300_000},
		{"503 seconds", origintest.Fault{Status: 503, RetryAfter: "7"}, ClientOptions{},
			wantFailure{"BG_E_HTTP_ERROR_503", 0x801901F7, true, job.ContextRemoteFile, 7 * time.Second}, 0},
		{"503 date", origintest.Fault{Status: 503, Date: date.Format(http.TimeFormat), RetryAfter: date.Add(2 * time.Minute).Format(http.TimeFormat)}, ClientOptions{},
			wantFailure{"BG_E_HTTP_ERROR_503", 0x801901F7, true, job.ContextRemoteFile, 2 * time.Minute}, 0},
		{"404", origintest.Fault{Status: 404}, ClientOptions{}, wantFailure{"BG_E_HTTP_ERROR_404", 0x80190194, false, job.ContextRemoteFile, 0}, 0},
		{"401", origintest.Fault{Status: 401}, ClientOptions{}, wantFailure{"BG_E_HTTP_ERROR_401", 0x80190191, false, job.ContextRemoteFile, 0}, 0},
		{"stall", origintest.Fault{Stall: true, StallAfter: 200_000, StallForever: true}, ClientOptions{IdleReadTimeout: 300 * time.Millisecond}, wantStall, 200_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newOT(t, size, tc.opts)
			tc.fault.Count = 1
			f.s.Inject(tc.fault)
			_, err := Fetch(t.Context(), f.request(nil))
			checkFailure(t, err, tc.want)
			if tc.resumeFrom > 0 {
				if st := checkInvariant(t, f.root, tempName); st.Offset != tc.resumeFrom {
					t.Errorf("kept %d bytes, want %d", st.Offset, tc.resumeFrom)
				}
			} else if b, _ := f.root.ReadFile(tempName); len(b) != 0 {
				t.Errorf("%d bytes staged from an error response", len(b))
			}
			rec := &recorder{}
			res, err := Fetch(t.Context(), f.request(rec))
			if err != nil {
				t.Fatal(err)
			}
			checkStaged(t, f.root, res, f.c.SHA256(), size)
			rs := f.s.Ranges()
			wantRange := ""
			if tc.resumeFrom > 0 {
				wantRange = fmt.Sprintf("bytes=%d-", tc.resumeFrom)
			}
			if len(rs) != 2 || rs[1] != wantRange {
				t.Errorf("Range headers %q, want the second to be %q", rs, wantRange)
			}
			if want := (Start{Offset: tc.resumeFrom, Total: size}); len(rec.starts) != 1 || rec.starts[0] != want {
				t.Errorf("starts %+v, want %+v", rec.starts, want)
			}
		})
	}
}

// TestResumeFaults interrupts a transfer, then misbehaves on the resume:
// the engine restarts from zero with the right reason and the file is
// byte-exact (the new version's when the file changed).
func TestResumeFaults(t *testing.T) {
	const size = 1<<20 + 4321
	const drop = 400_000
	v2 := origintest.File{Content: origintest.Content{Seed: 99, Size: size + 10}, ETag: `"v2"`}
	for _, tc := range []struct {
		name    string
		setup   func(f *otFixture)
		reason  string
		version func(f *otFixture) origintest.Content
	}{
		{"ignores Range", func(f *otFixture) { f.s.Inject(origintest.Fault{IgnoreRange: true}) }, RestartNoRangeSupport, nil},
		{"wrong Content-Range", func(f *otFixture) { f.s.Inject(origintest.Fault{WrongContentRange: true}) }, RestartBadContentRange, nil},
		{"changed, If-Range honoured", func(f *otFixture) { f.s.ChangeAfter(otPath, v2, 0, 0) }, RestartValidatorChange,
			func(*otFixture) origintest.Content { return v2.Content }},
		{"changed, If-Range ignored", func(f *otFixture) {
			f.s.ChangeAfter(otPath, v2, 0, 0)
			f.s.Inject(origintest.Fault{IgnoreIfRange: true})
		}, RestartValidatorChange, func(*otFixture) origintest.Content { return v2.Content }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newOT(t, size, ClientOptions{})
			f.s.Inject(origintest.Fault{Count: 1, Drop: true, DropAfter: drop})
			_, err := Fetch(t.Context(), f.request(nil))
			checkFailure(t, err, wantDrop)
			f.s.ClearFaults()
			tc.setup(f)
			rec := &recorder{}
			res, err := Fetch(t.Context(), f.request(rec))
			if err != nil {
				t.Fatal(err)
			}
			want := f.c
			if tc.version != nil {
				want = tc.version(f)
			}
			checkStaged(t, f.root, res, want.SHA256(), want.Size)
			if want := (Start{Offset: 0, Total: want.Size, Restarted: tc.reason}); len(rec.starts) != 1 || rec.starts[0] != want {
				t.Errorf("starts %+v, want %+v", rec.starts, want)
			}
			if reqs := f.s.Requests(); len(reqs) < 2 || reqs[1].Range != fmt.Sprintf("bytes=%d-", drop) || reqs[1].IfRange != `"v1"` {
				t.Errorf("the resume must ask for bytes=%d- if still \"v1\": %+v", drop, reqs)
			}
		})
	}
}

// TestChangeAfterBytes: the file changes once the origin has sent N bytes
// of it; the interrupted transfer's resume sees the new version.
func TestChangeAfterBytes(t *testing.T) {
	const size = 1 << 20
	f := newOT(t, size, ClientOptions{})
	v2 := origintest.Content{Seed: 7, Size: size}
	f.s.ChangeAfter(otPath, origintest.File{Content: v2, ETag: `"v2"`}, 0, 100_000)
	f.s.Inject(origintest.Fault{Count: 1, Drop: true, DropAfter: 500_000})
	_, err := Fetch(t.Context(), f.request(nil))
	checkFailure(t, err, wantDrop)
	rec := &recorder{}
	res, err := Fetch(t.Context(), f.request(rec))
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, v2.SHA256(), size)
	if len(rec.starts) != 1 || rec.starts[0].Restarted != RestartValidatorChange || res.ETag != `"v2"` {
		t.Errorf("starts %+v, ETag %q", rec.starts, res.ETag)
	}
}

// TestStallReleased: a stall shorter than the idle timeout is survived; the
// test waits for the origin to report the stall instead of sleeping.
func TestStallReleased(t *testing.T) {
	const size = 600_000
	f := newOT(t, size, ClientOptions{})
	f.s.Inject(origintest.Fault{Count: 1, Stall: true, StallAfter: 100_000})
	done := make(chan error, 1)
	var res Result
	go func() {
		var err error
		res, err = Fetch(t.Context(), f.request(nil))
		done <- err
	}()
	if err := f.s.Wait(t.Context(), func(s origintest.Stats) bool { return s.Stalled == 1 }); err != nil {
		t.Fatal(err)
	}
	f.s.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, f.c.SHA256(), size)
}

func TestResultHeader(t *testing.T) {
	f := newOT(t, 1000, ClientOptions{})
	res, err := Fetch(t.Context(), f.request(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := http.Header{
		"Etag":           {`"v1"`},
		"Last-Modified":  {"Fri, 02 Jan 2026 03:04:05 GMT"},
		"Content-Length": {"1000"},
		"Content-Type":   {"application/octet-stream"},
	}
	if fmt.Sprint(res.Header) != fmt.Sprint(want) {
		t.Errorf("header %v, want %v", res.Header, want)
	}
	again, err := Fetch(t.Context(), f.request(nil)) // from the complete sidecar
	if err != nil || fmt.Sprint(again.Header) != fmt.Sprint(want) {
		t.Errorf("after restart: header %v, %v", again.Header, err)
	}
}
