package download

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/ferry-dev/ferry/job"
)

func TestExpectedSHA256(t *testing.T) {
	const size = 700_000
	f := newOT(t, size, ClientOptions{})
	wrong := strings.Repeat("ab", 32)
	r := f.request(nil)
	r.ExpectedSHA256 = wrong
	_, err := Fetch(t.Context(), r)
	fl := checkFailure(t, err, wantFailure{"BG_E_VALIDATION_FAILED", 0x80200053, false, job.ContextRemoteFile, 0})
	if !strings.Contains(fl.Description, wrong) || !strings.Contains(fl.Description, f.c.SHA256()) {
		t.Errorf("description must name both digests: %s", fl.Description)
	}
	for _, n := range []string{tempName, stateName(tempName)} {
		if _, err := f.root.Stat(n); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s kept after a failed validation: %v", n, err)
		}
	}
	// The next attempt starts from zero and passes with the right digest
	// (upper case is fine).
	r = f.request(nil)
	r.ExpectedSHA256 = strings.ToUpper(f.c.SHA256())
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, f.c.SHA256(), size)
	if rs := f.s.Ranges(); len(rs) != 2 || rs[1] != "" {
		t.Errorf("Range headers %q: the second fetch must start from zero", rs)
	}
	// A complete sidecar is checked too.
	r.ExpectedSHA256 = wrong
	_, err = Fetch(t.Context(), r)
	checkFailure(t, err, wantFailure{"BG_E_VALIDATION_FAILED", 0x80200053, false, job.ContextRemoteFile, 0})
	for _, bad := range []string{"xyz", strings.Repeat("a", 63), strings.Repeat("g", 64)} {
		r.ExpectedSHA256 = bad
		_, err = Fetch(t.Context(), r)
		checkFailure(t, err, wantFailure{"E_INVALIDARG", 0x80070057, false, job.ContextRemoteFile, 0})
	}
}

func TestDynamicContent(t *testing.T) {
	const size = 900_000
	f := newOT(t, size, ClientOptions{})
	f.s.Inject(origintest.Fault{Count: 1, Drop: true, DropAfter: 300_000})
	r := f.request(nil)
	r.Dynamic = true
	_, err := Fetch(t.Context(), r)
	checkFailure(t, err, wantDrop)
	rec := &recorder{}
	r = f.request(rec)
	r.Dynamic = true
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, f.c.SHA256(), size)
	if rs := f.s.Ranges(); len(rs) != 2 || rs[0] != "" || rs[1] != "" {
		t.Errorf("dynamic content must never send Range: %q", rs)
	}
	if want := (Start{Offset: 0, Total: size, Restarted: RestartDynamic}); len(rec.starts) != 1 || rec.starts[0] != want {
		t.Errorf("starts %+v, want %+v", rec.starts, want)
	}
}

func TestDynamicWithoutContentLengthAndMaxSize(t *testing.T) {
	c := origintest.Content{Seed: 5, Size: 500_000}
	ca := newCA(t, "chunked CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			t.Errorf("Range sent: %q", r.Header.Get("Range"))
		}
		w.WriteHeader(200)
		http.NewResponseController(w).Flush() // no Content-Length from here on
		io.Copy(w, c.Reader())
	}), ca.localhost(t), nil, false)
	root, _ := testRoot(t)
	client := testClient(t, ClientOptions{RootCAs: ca.pool})
	var starts []Start
	r := Request{URL: srv.URL, Root: root, TempName: tempName, Client: client, Dynamic: true,
		OnTransferring: func(s Start) error { starts = append(starts, s); return nil }}
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, root, res, c.SHA256(), c.Size)
	if len(starts) != 1 || starts[0].Total != -1 {
		t.Errorf("starts %+v: the size is unknown", starts)
	}
	// MaxSize with an unknown size: the body is cut when it grows past it.
	r.TempName, r.MaxSize = "max.part", c.Size-1
	_, err = Fetch(t.Context(), r)
	checkFailure(t, err, wantFailure{"BG_E_TOO_LARGE", 0x80200020, false, job.ContextRemoteFile, 0})
	if b, _ := root.ReadFile("max.part"); int64(len(b)) > r.MaxSize {
		t.Errorf("%d bytes staged, more than MaxSize", len(b))
	}
	r.TempName, r.MaxSize = "exact.part", c.Size
	if _, err := Fetch(t.Context(), r); err != nil {
		t.Errorf("MaxSize equal to the size: %v", err)
	}
}

func TestMaxSizeFromContentLength(t *testing.T) {
	const size = 2 << 20
	f := newOT(t, size, ClientOptions{})
	r := f.request(nil)
	r.MaxSize = size - 1
	_, err := Fetch(t.Context(), r)
	fl := checkFailure(t, err, wantFailure{"BG_E_TOO_LARGE", 0x80200020, false, job.ContextRemoteFile, 0})
	t.Log(fl.Description)
	if b, _ := f.root.ReadFile(tempName); len(b) != 0 {
		t.Errorf("%d bytes written for a file known to be too large", len(b))
	}
	// And from a Content-Range's complete length, on resume.
	f.s.Inject(origintest.Fault{Count: 1, Drop: true, DropAfter: 100_000})
	r.MaxSize = 0
	_, err = Fetch(t.Context(), r)
	checkFailure(t, err, wantDrop)
	r.MaxSize = size - 1
	_, err = Fetch(t.Context(), r)
	checkFailure(t, err, wantFailure{"BG_E_TOO_LARGE", 0x80200020, false, job.ContextRemoteFile, 0})
}

func TestFreeSpace(t *testing.T) {
	const size = 1 << 20
	f := newOT(t, size, ClientOptions{})
	var free int64 = 1000
	r := f.request(nil)
	r.freeSpace = func(dir *os.File) (int64, error) {
		if dir == nil {
			t.Error("no directory")
		}
		return free, nil
	}
	r.MinFreeBytes = 4096
	_, err := Fetch(t.Context(), r)
	fl := checkFailure(t, err, wantFailure{"ERROR_DISK_FULL", 0x80070070, true, job.ContextLocalFile, 0})
	t.Log(fl.Description)
	if b, _ := f.root.ReadFile(tempName); len(b) != 0 {
		t.Errorf("%d bytes written to a full disk", len(b))
	}
	// Interrupted half way; on resume only the rest (plus the reserve) is needed.
	free = 1 << 40
	f.s.Inject(origintest.Fault{Count: 1, Drop: true, DropAfter: size / 2})
	_, err = Fetch(t.Context(), r)
	checkFailure(t, err, wantDrop)
	free = size/2 + r.MinFreeBytes - 1
	_, err = Fetch(t.Context(), r)
	checkFailure(t, err, wantFailure{"ERROR_DISK_FULL", 0x80070070, true, job.ContextLocalFile, 0})
	free++
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, f.c.SHA256(), size)

	// The real query answers through the root's directory.
	d, err := f.root.Open(".")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if n, err := statFree(d); err != nil || n == 0 {
		t.Errorf("statFree: %d, %v", n, err)
	}
}

// rtFunc is an http.RoundTripper from a function: a transport without a
// network, for virtual time.
type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func memClient(c origintest.Content) *http.Client {
	return &http.Client{Transport: rtFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{
			StatusCode: 200, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:        http.Header{"Content-Length": {fmt.Sprint(c.Size)}},
			ContentLength: c.Size, Body: io.NopCloser(c.Reader()), Request: req,
		}, nil
	})}
}

// TestLimiterVirtualTime checks the throttle in virtual time: the transfer
// takes what the rate says, a rate changed mid-transfer applies at once,
// combined limiters obey the slowest.
func TestLimiterVirtualTime(t *testing.T) {
	const MiB = 1 << 20
	c := origintest.Content{Seed: 3, Size: 4 * MiB}
	run := func(t *testing.T, lim Limiter, onCP func(Checkpoint)) (time.Duration, Result) {
		root, _ := testRoot(t)
		start := time.Now()
		res, err := Fetch(t.Context(), Request{
			URL: "https://origin.test/f", Root: root, TempName: "l.part", Client: memClient(c), Limiter: lim,
			CheckpointInterval: time.Hour, CheckpointBytes: MiB,
			OnCheckpoint: func(cp Checkpoint) error {
				if onCP != nil {
					onCP(cp)
				}
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.SHA256 != c.SHA256() {
			t.Fatal("content differs")
		}
		return time.Since(start), res
	}
	synctest.Test(t, func(t *testing.T) {
		// 1 MiB/s with a 64 KiB bucket (full at the start): 4 MiB take 4 s less one bucket.
		lim := rate.NewLimiter(MiB, 64<<10)
		if d, _ := run(t, lim, nil); d != 4*time.Second-time.Second/16 {
			t.Errorf("4 MiB at 1 MiB/s took %v", d)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// Lifted after the first MiB: the rest goes at once.
		lim := rate.NewLimiter(MiB, 64<<10)
		d, _ := run(t, lim, func(cp Checkpoint) {
			if cp.Bytes == MiB {
				lim.SetLimit(rate.Inf)
			}
		})
		if d != time.Second-time.Second/16 {
			t.Errorf("took %v, want the first MiB's time only", d)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// Slowed after the first MiB: 3 MiB at 512 KiB/s more.
		lim := rate.NewLimiter(MiB, 64<<10)
		d, _ := run(t, lim, func(cp Checkpoint) {
			if cp.Bytes == MiB {
				lim.SetLimit(MiB / 2)
			}
		})
		if want := time.Second - time.Second/16 + 6*time.Second; d < want-time.Second/8 || d > want+time.Second/8 {
			t.Errorf("took %v, want about %v", d, want)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// Per agent 2 MiB/s, per priority 512 KiB/s: the slower wins, and
		// reads are cut to the smaller bucket (16 KiB).
		agent, class := rate.NewLimiter(2*MiB, 256<<10), rate.NewLimiter(MiB/2, 16<<10)
		lim := CombineLimiters(nil, agent, class)
		if b := lim.(interface{ Burst() int }).Burst(); b != 16<<10 {
			t.Errorf("combined burst %d", b)
		}
		d, _ := run(t, lim, nil)
		if want := 8 * time.Second; d < want-time.Second/4 || d > want+time.Second/4 {
			t.Errorf("took %v, want about %v", d, want)
		}
	})
	if CombineLimiters(nil, nil) != nil {
		t.Error("no limiters must combine to nil")
	}
}

func TestLimiterRefusalIsBlockedByPolicy(t *testing.T) {
	c := origintest.Content{Seed: 3, Size: 100_000}
	root, _ := testRoot(t)
	_, err := Fetch(t.Context(), Request{URL: "https://origin.test/f", Root: root, TempName: "b.part", Client: memClient(c),
		Limiter: rate.NewLimiter(0, 0)})
	checkFailure(t, err, wantFailure{"BG_E_BLOCKED_BY_POLICY", 0x8020003E, true, job.ContextGeneralTransport, 0})

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = Fetch(ctx, Request{URL: "https://origin.test/f", Root: root, TempName: "b.part", Client: memClient(c), Limiter: rate.NewLimiter(1, 1)})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
