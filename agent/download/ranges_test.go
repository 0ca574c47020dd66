package download

import (
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/ferry-dev/ferry/job"
)

func otRanges(rs []Range, size int64) []origintest.Range {
	var out []origintest.Range
	for _, r := range rs {
		l := r.Length
		if l == LengthToEOF {
			l = size - r.Offset
		}
		out = append(out, origintest.Range{Offset: r.Offset, Length: l})
	}
	return out
}

func TestRangesConcatenated(t *testing.T) {
	const size = 3 << 20
	f := newOT(t, size, ClientOptions{})
	ranges := []Range{{2_000_000, 1000}, {100, 1000}, {500_000, 300_000}, {3_000_000, LengthToEOF}}
	want := f.c.RangesSHA256(otRanges(ranges, size)...)
	total := int64(1000 + 1000 + 300_000 + size - 3_000_000)
	r := f.request(&recorder{})
	rec := &recorder{}
	r = f.request(rec)
	r.Ranges = ranges
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, want, total)
	if got, want := strings.Join(f.s.Ranges(), " "), "bytes=2000000-2000999 bytes=100-1099 bytes=500000-799999 bytes=3000000-3145727"; got != want {
		t.Errorf("Range headers %q, want %q", got, want)
	}
	if want := (Start{Offset: 0, Total: total}); len(rec.starts) != 1 || rec.starts[0] != want {
		t.Errorf("starts %+v, want %+v", rec.starts, want)
	}
	if res.Header.Get("Content-Range") != fmt.Sprintf("bytes 3000000-%d/%d", size-1, size) {
		t.Errorf("header of the last response: %v", res.Header)
	}
	if st := checkInvariant(t, f.root, tempName); st.Version != stateVersionRanges || st.RemoteSize != size {
		t.Errorf("sidecar %+v", st)
	}
	// Known lengths: the total is known before any response.
	f2 := newOT(t, size, ClientOptions{})
	r2 := f2.request(nil)
	r2.Ranges = ranges[:3]
	r2.MaxSize = 301_999
	_, err = Fetch(t.Context(), r2)
	checkFailure(t, err, wantFailure{"BG_E_TOO_LARGE", 0x80200020, false, job.ContextRemoteFile, 0})
	if n := f2.s.Stats().Requests; n != 0 {
		t.Errorf("%d requests for ranges already too large", n)
	}
}

func TestRangesResumeInSecondRange(t *testing.T) {
	const size = 2 << 20
	f := newOT(t, size, ClientOptions{})
	ranges := []Range{{100, 1000}, {500_000, 300_000}, {1_500_000, 1000}}
	f.s.Inject(origintest.Fault{Skip: 1, Count: 1, Drop: true, DropAfter: 100_000})
	r := f.request(nil)
	r.Ranges = ranges
	_, err := Fetch(t.Context(), r)
	checkFailure(t, err, wantDrop)
	if st := checkInvariant(t, f.root, tempName); st.Offset != 101_000 {
		t.Fatalf("kept %d bytes, want 101000", st.Offset)
	}
	rec := &recorder{}
	r = f.request(rec)
	r.Ranges = ranges
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, f.c.RangesSHA256(otRanges(ranges, size)...), 302_000)
	reqs := f.s.Requests()
	var got []string
	for _, q := range reqs {
		got = append(got, q.Range+"|"+q.IfRange)
	}
	want := []string{"bytes=100-1099|", `bytes=500000-799999|"v1"`, `bytes=600000-799999|"v1"`, `bytes=1500000-1500999|"v1"`}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requests %q, want %q", got, want)
	}
	if want := (Start{Offset: 101_000, Total: 302_000}); len(rec.starts) != 1 || rec.starts[0] != want {
		t.Errorf("starts %+v, want %+v", rec.starts, want)
	}
	// Other ranges for the same staging file: start over.
	rec = &recorder{}
	r = f.request(rec)
	r.Ranges = ranges[:2]
	res, err = Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, f.c.RangesSHA256(otRanges(ranges[:2], size)...), 301_000)
	if len(rec.starts) != 1 || rec.starts[0].Restarted != RestartStateMismatch {
		t.Errorf("starts %+v", rec.starts)
	}
}

func TestRangeFailures(t *testing.T) {
	const size = 1 << 20
	var (
		insufficient = wantFailure{"BG_E_INSUFFICIENT_RANGE_SUPPORT", 0x80200013, false, job.ContextRemoteFile, 0}
		invalidRange = wantFailure{"BG_E_INVALID_RANGE", 0x8020002B, false, job.ContextRemoteFile, 0}
		invalidResp  = wantFailure{"BG_E_INVALID_SERVER_RESPONSE", 0x8020001B, false, job.ContextRemoteFile, 0}
		invalidArg   = wantFailure{"E_INVALIDARG", 0x80070057, false, job.ContextRemoteFile, 0}
	)
	two := []Range{{0, 1000}, {5000, 1000}}
	for _, tc := range []struct {
		name     string
		ranges   []Range
		fault    *origintest.Fault
		dynamic  bool
		setup    func(*otFixture)
		want     wantFailure
		requests int
	}{
		{"200 to a range", two, &origintest.Fault{IgnoreRange: true}, false, nil, insufficient, 1},
		{"200 to the second range", two, &origintest.Fault{Skip: 1, IgnoreRange: true}, false, nil, insufficient, 2},
		{"range at EOF (416)", []Range{{0, 10}, {size, 10}}, nil, false, nil, invalidRange, 1},
		{"range across EOF", []Range{{size - 10, 100}}, nil, false, nil, invalidRange, 1},
		{"to-EOF range past EOF", []Range{{0, 10}, {size + 5, LengthToEOF}}, nil, false, nil, invalidRange, 1},
		{"wrong Content-Range", two, &origintest.Fault{Skip: 1, WrongContentRange: true}, false, nil, invalidResp, 2},
		{"multipart answer", two, &origintest.Fault{Multipart: true}, false, nil, invalidResp, 1},
		{"empty list", []Range{}, nil, false, nil, invalidArg, 0},
		{"negative offset", []Range{{-1, 5}}, nil, false, nil, invalidArg, 0},
		{"zero length", []Range{{0, 0}}, nil, false, nil, invalidArg, 0},
		{"bad length", []Range{{0, -2}}, nil, false, nil, invalidArg, 0},
		{"overflow", []Range{{math.MaxInt64 - 1, 5}}, nil, false, nil, invalidArg, 0},
		{"dynamic with ranges", two, nil, true, nil, invalidArg, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newOT(t, size, ClientOptions{})
			if tc.fault != nil {
				f.s.Inject(*tc.fault)
			}
			if tc.setup != nil {
				tc.setup(f)
			}
			r := f.request(nil)
			r.Ranges, r.Dynamic = tc.ranges, tc.dynamic
			_, err := Fetch(t.Context(), r)
			fl := checkFailure(t, err, tc.want)
			t.Log(fl.Description)
			if n := f.s.Stats().Requests; tc.requests > 0 && n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
		})
	}
}

// TestRangesRemoteChangedRestarts: the file changes between two ranges;
// If-Range makes the server answer 200 with the new version, and the
// ranges are fetched again from the new version.
func TestRangesRemoteChangedRestarts(t *testing.T) {
	const size = 1 << 20
	f := newOT(t, size, ClientOptions{})
	v2 := origintest.Content{Seed: 1234, Size: size}
	f.s.ChangeAfter(otPath, origintest.File{Content: v2, ETag: `"v2"`}, 1, 0)
	ranges := []Range{{10, 100_000}, {300_000, 100_000}}
	rec := &recorder{}
	r := f.request(rec)
	r.Ranges = ranges
	res, err := Fetch(t.Context(), r)
	if err != nil {
		t.Fatal(err)
	}
	checkStaged(t, f.root, res, v2.RangesSHA256(otRanges(ranges, size)...), 200_000)
	if len(rec.starts) != 2 || rec.starts[1] != (Start{Offset: 0, Total: 200_000, Restarted: RestartValidatorChange}) {
		t.Errorf("starts %+v", rec.starts)
	}
}

// TestRangesRemoteKeepsChanging: a file that changes between every two
// ranges cannot be assembled; after maxChangeRestarts restarts the transfer
// fails with BG_E_REMOTE_FILE_CHANGED, transient.
func TestRangesRemoteKeepsChanging(t *testing.T) {
	f := newOT(t, 1<<20, ClientOptions{})
	r := f.request(nil)
	r.Ranges = []Range{{0, 10}, {20, 10}}
	n := 0
	r.OnTransferring = func(Start) error {
		n++
		f.s.ChangeAfter(otPath, origintest.File{Content: f.c, ETag: fmt.Sprintf(`"x%d"`, n)}, 0, 0)
		return nil
	}
	_, err := Fetch(t.Context(), r)
	checkFailure(t, err, wantFailure{"BG_E_REMOTE_FILE_CHANGED", 0x80200073, true, job.ContextRemoteFile, 0})
	if n != maxChangeRestarts+1 {
		t.Errorf("%d starts, want %d", n, maxChangeRestarts+1)
	}
}

func FuzzRangePlan(f *testing.F) {
	f.Add(int64(0), int64(10), int64(20), int64(-1), int64(100), int64(15))
	f.Add(int64(5), int64(1), int64(0), int64(7), int64(-1), int64(3))
	f.Fuzz(func(t *testing.T, o1, l1, o2, l2, size, pos int64) {
		rs := []Range{{o1, l1}, {o2, l2}}
		if checkRanges(rs) != nil || size < -1 {
			return
		}
		p := rangePlan{ranges: rs, remoteSize: size}
		if size >= 0 && p.pastEOF(size) >= 0 {
			return
		}
		total := p.total()
		if total >= 0 && (pos < 0 || pos > total) {
			return
		}
		if pos < 0 {
			return
		}
		first, last, ok := p.ask(pos)
		if total >= 0 && ok != (pos < total) {
			t.Fatalf("%+v size %d: ask(%d) ok=%v with total %d", rs, size, pos, ok, total)
		}
		if !ok {
			return
		}
		i, within := p.locate(pos)
		if first != rs[i].Offset+within || within < 0 || (last >= 0 && (last < first || (size >= 0 && last >= size))) {
			t.Fatalf("%+v size %d pos %d: ask %d-%d (range %d, within %d)", rs, size, pos, first, last, i, within)
		}
		// The header parses back the way a server would read it.
		h := rangeHeader(first, last)
		var a, b int64
		if last >= 0 {
			if n, _ := fmt.Sscanf(h, "bytes=%d-%d", &a, &b); n != 2 || a != first || b != last {
				t.Fatalf("header %q for %d-%d", h, first, last)
			}
		} else if n, _ := fmt.Sscanf(h, "bytes=%d-", &a); n != 1 || a != first || !strings.HasSuffix(h, "-") {
			t.Fatalf("header %q for %d-", h, first)
		}
		// A Content-Range a server would send for it parses to the same.
		if size > 0 {
			l := last
			if l < 0 {
				l = size - 1
			}
			cr, err := parseContentRange(contentRange{first, l, size}.String())
			if err != nil || cr.First != first || cr.Last != l {
				t.Fatalf("Content-Range round trip for %d-%d/%d: %+v %v", first, l, size, cr, err)
			}
		}
	})
}

// TestRangeToEOFNeedsFileSize: a range to the end of the file cannot be
// placed when the server will not say how large the file is.
func TestRangeToEOFNeedsFileSize(t *testing.T) {
	ca := newCA(t, "test CA")
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", "bytes 10-19/*")
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(http.StatusPartialContent)
		w.Write(make([]byte, 10))
	}), ca.localhost(t), nil, false)
	root, _ := testRoot(t)
	_, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: tempName, Client: testClient(t, ClientOptions{RootCAs: ca.pool}),
		Ranges: []Range{{10, LengthToEOF}}})
	checkFailure(t, err, wantFailure{"BG_E_MISSING_FILE_SIZE", 0x80200011, false, job.ContextRemoteFile, 0})
}
