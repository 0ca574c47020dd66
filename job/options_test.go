package job

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
)

func wantCode(t *testing.T, err error, c Code) {
	t.Helper()
	var je *Error
	if !errors.As(err, &je) {
		t.Fatalf("err = %v, want %s", err, c.Symbol)
	}
	if je.Code != c {
		t.Fatalf("code = %s (%s), want %s", je.Code.Symbol, je.Detail, c.Symbol)
	}
}

func TestFileRanges(t *testing.T) {
	r := func(off, n int64) events.FileRange { return events.FileRange{Offset: off, Length: n} }
	withRanges := func(rs ...events.FileRange) events.FileSpec {
		f := file1
		f.Ranges = rs
		return f
	}
	many := make([]events.FileRange, 501)
	for i := range many {
		many[i] = r(int64(i*10), 5)
	}
	for _, tc := range []struct {
		name string
		f    events.FileSpec
		want Code
	}{
		{"one range", withRanges(r(0, 100)), S_OK},
		{"to EOF", withRanges(r(0, 10), r(100, -1)), S_OK},
		{"given out of order", withRanges(r(100, 10), r(0, 10)), S_OK},
		{"500 ranges", withRanges(many[:500]...), S_OK},
		{"empty list", withRanges([]events.FileRange{}...), E_INVALIDARG},
		{"negative offset", withRanges(r(-1, 10)), BG_E_INVALID_RANGE},
		{"zero length", withRanges(r(0, 0)), BG_E_INVALID_RANGE},
		{"length below -1", withRanges(r(0, -2)), BG_E_INVALID_RANGE},
		{"overflow", withRanges(r(1<<62, 1<<62)), BG_E_INVALID_RANGE},
		{"overlap", withRanges(r(0, 10), r(5, 10)), BG_E_OVERLAPPING_RANGES},
		{"overlap when sorted", withRanges(r(50, 10), r(0, 51)), BG_E_OVERLAPPING_RANGES},
		{"after EOF range", withRanges(r(0, -1), r(10, 1)), BG_E_OVERLAPPING_RANGES},
		{"duplicate", withRanges(r(0, 10), r(0, 10)), BG_E_OVERLAPPING_RANGES},
		{"501 ranges", withRanges(many...), BG_E_TOO_MANY_RANGES_IN_FILE},
		{"adjacent", withRanges(r(0, 10), r(10, 10)), S_OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := inState(t, Suspended)
			ps, err := Decide(&j, AddFiles{Files: []events.FileSpec{tc.f}}, t0)
			if tc.want == S_OK {
				if err != nil {
					t.Fatal(err)
				}
				if err := Apply(&j, ps[0], t0); err != nil {
					t.Fatal(err)
				}
				got := j.Files[len(j.Files)-1]
				if len(got.Ranges) != len(tc.f.Ranges) || got.BytesTotal != RangesTotal(tc.f.Ranges) {
					t.Fatalf("file = %+v", got)
				}
				return
			}
			wantCode(t, err, tc.want)
			if !strings.Contains(err.Error(), "file 2") {
				t.Errorf("error does not name the file: %v", err)
			}
		})
	}
	t.Run("limit configurable", func(t *testing.T) {
		j := inState(t, Suspended)
		_, err := Decide(&j, AddFiles{Files: []events.FileSpec{withRanges(r(0, 1), r(5, 1), r(9, 1))}, Limits: Limits{MaxRangesPerFile: 2}}, t0)
		wantCode(t, err, BG_E_TOO_MANY_RANGES_IN_FILE)
	})
}

func TestExpectedSHA256(t *testing.T) {
	j := inState(t, Suspended)
	f := file1
	f.SHA256 = strings.Repeat("AB", 32)
	ps, err := Decide(&j, AddFiles{Files: []events.FileSpec{f}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := ps[0].(*events.FilesAdded).Files[0].SHA256; got != strings.Repeat("ab", 32) {
		t.Fatalf("digest not normalized: %q", got)
	}
	f.SHA256 = "abc"
	_, err = Decide(&j, AddFiles{Files: []events.FileSpec{f}}, t0)
	wantCode(t, err, E_INVALIDARG)
}

func modifyOpts(p OptionsPatch) Modify { return Modify{Options: &p} }

func TestOptions(t *testing.T) {
	long := strings.Repeat("x", 16384)
	for _, tc := range []struct {
		name  string
		state State
		p     OptionsPatch
		want  Code
		check func(t *testing.T, o events.JobOptions)
	}{
		{"dynamic before resume", Suspended, OptionsPatch{Dynamic: ptr(true)}, S_OK,
			func(t *testing.T, o events.JobOptions) {
				if !o.Dynamic {
					t.Fatal("not dynamic")
				}
			}},
		{"dynamic after resume", Queued, OptionsPatch{Dynamic: ptr(true)}, BG_E_READ_ONLY_AFTER_RESUME, nil},
		{"max size after resume", Transferring, OptionsPatch{MaxDownloadSize: ptr(int64(10))}, BG_E_READ_ONLY_AFTER_RESUME, nil},
		{"max size negative", Suspended, OptionsPatch{MaxDownloadSize: ptr(int64(-1))}, E_INVALIDARG, nil},
		{"ignore flags normalized", Suspended, OptionsPatch{IgnoreCertErrors: &[]string{"unknown_ca", "CERT_CN_INVALID", "UNKNOWN_CA"}}, S_OK,
			func(t *testing.T, o events.JobOptions) {
				if strings.Join(o.IgnoreCertErrors, ",") != "CERT_CN_INVALID,UNKNOWN_CA" {
					t.Fatalf("flags = %v", o.IgnoreCertErrors)
				}
			}},
		{"ignore flag unknown", Suspended, OptionsPatch{IgnoreCertErrors: &[]string{"EVERYTHING"}}, E_INVALIDARG, nil},
		{"redirect policy", Transferring, OptionsPatch{RedirectPolicy: ptr("disallow")}, S_OK,
			func(t *testing.T, o events.JobOptions) {
				if o.RedirectPolicy != RedirectDisallow {
					t.Fatalf("policy = %q", o.RedirectPolicy)
				}
			}},
		{"redirect policy unknown", Suspended, OptionsPatch{RedirectPolicy: ptr("SOMETIMES")}, E_INVALIDARG, nil},
		{"proxy override", Suspended, OptionsPatch{Proxy: &events.ProxySettings{Usage: "override", List: []string{"proxy.test:3128", "https://p2.test:8443"}, Bypass: []string{".internal"}}}, S_OK,
			func(t *testing.T, o events.JobOptions) {
				if o.Proxy == nil || o.Proxy.Usage != ProxyOverride || len(o.Proxy.List) != 2 {
					t.Fatalf("proxy = %+v", o.Proxy)
				}
			}},
		{"proxy override without list", Suspended, OptionsPatch{Proxy: &events.ProxySettings{Usage: "OVERRIDE"}}, E_INVALIDARG, nil},
		{"proxy list with NO_PROXY", Suspended, OptionsPatch{Proxy: &events.ProxySettings{Usage: "NO_PROXY", List: []string{"p:1"}}}, E_INVALIDARG, nil},
		{"proxy list too large", Suspended, OptionsPatch{Proxy: &events.ProxySettings{Usage: "OVERRIDE", List: []string{"p:1", strings.Repeat("a", 32000) + ":1"}}}, BG_E_PROXY_LIST_TOO_LARGE, nil},
		{"proxy bypass too large", Suspended, OptionsPatch{Proxy: &events.ProxySettings{Usage: "OVERRIDE", List: []string{"p:1"}, Bypass: []string{strings.Repeat("a", 32001)}}}, BG_E_PROXY_BYPASS_TOO_LARGE, nil},
		{"proxy with credentials", Suspended, OptionsPatch{Proxy: &events.ProxySettings{Usage: "OVERRIDE", List: []string{"http://u:p@proxy:1"}}}, E_INVALIDARG, nil},
		{"proxy usage unknown", Suspended, OptionsPatch{Proxy: &events.ProxySettings{Usage: "SOCKS"}}, E_INVALIDARG, nil},
		{"headers", Suspended, OptionsPatch{CustomHeaders: &[]string{"x-api-version: 2", "Accept:  text/plain"}}, S_OK,
			func(t *testing.T, o events.JobOptions) {
				if strings.Join(o.CustomHeaders, "|") != "X-Api-Version: 2|Accept: text/plain" {
					t.Fatalf("headers = %q", o.CustomHeaders)
				}
			}},
		{"headers too long", Suspended, OptionsPatch{CustomHeaders: &[]string{"X-Big: " + long}}, BG_E_STRING_TOO_LONG, nil},
		{"header without colon", Suspended, OptionsPatch{CustomHeaders: &[]string{"nonsense"}}, E_INVALIDARG, nil},
		{"header injection", Suspended, OptionsPatch{CustomHeaders: &[]string{"X-A: 1\r\nX-B: 2"}}, E_INVALIDARG, nil},
		{"reserved header", Suspended, OptionsPatch{CustomHeaders: &[]string{"range: bytes=0-"}}, E_INVALIDARG, nil},
		{"notify default flags", Suspended, OptionsPatch{Notify: &events.NotifySettings{URL: "https://hooks.test/x"}}, S_OK,
			func(t *testing.T, o events.JobOptions) {
				if strings.Join(o.Notify.Flags, ",") != "JOB_ERROR,JOB_TRANSFERRED" {
					t.Fatalf("flags = %v", o.Notify.Flags)
				}
			}},
		{"notify bad flag", Suspended, OptionsPatch{Notify: &events.NotifySettings{URL: "https://hooks.test/x", Flags: []string{"FILE_RANGES_TRANSFERRED"}}}, E_NOTIMPL, nil},
		{"notify http url", Suspended, OptionsPatch{Notify: &events.NotifySettings{URL: "http://hooks.test/x"}}, E_INVALIDARG, nil},
		{"notify flags without url", Suspended, OptionsPatch{Notify: &events.NotifySettings{Flags: []string{"JOB_ERROR"}}}, RPC_X_NULL_REF_POINTER, nil},
		{"anonymous client auth", Transferring, OptionsPatch{AnonymousClientAuth: ptr(true)}, S_OK,
			func(t *testing.T, o events.JobOptions) {
				if !o.AnonymousClientAuth {
					t.Fatal("not set")
				}
			}},
		{"final state", Cancelled, OptionsPatch{AnonymousClientAuth: ptr(true)}, BG_E_INVALID_STATE, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := inState(t, tc.state)
			ps, err := Decide(&j, modifyOpts(tc.p), t0.Add(time.Hour))
			if tc.want != S_OK {
				wantCode(t, err, tc.want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ps) != 1 {
				t.Fatalf("events = %s", types(ps))
			}
			if err := Apply(&j, ps[0], t0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			tc.check(t, j.Options)
			// Setting the same again changes nothing.
			again, err := Decide(&j, modifyOpts(tc.p), t0.Add(time.Hour))
			if err != nil || len(again) != 0 {
				t.Fatalf("repeat: %s, %v", types(again), err)
			}
		})
	}
}

func TestDynamicRefusesRanges(t *testing.T) {
	f := file1
	f.Ranges = []events.FileRange{{Offset: 0, Length: 10}}
	j := inState(t, Suspended)
	ps, err := Decide(&j, modifyOpts(OptionsPatch{Dynamic: ptr(true)}), t0)
	if err != nil {
		t.Fatal(err)
	}
	_ = Apply(&j, ps[0], t0)
	_, err = Decide(&j, AddFiles{Files: []events.FileSpec{f}}, t0)
	wantCode(t, err, BG_E_RANDOM_ACCESS_NOT_SUPP)

	j = inState(t, Suspended)
	ps, _ = Decide(&j, AddFiles{Files: []events.FileSpec{f}}, t0)
	_ = Apply(&j, ps[0], t0)
	_, err = Decide(&j, modifyOpts(OptionsPatch{Dynamic: ptr(true)}), t0)
	wantCode(t, err, BG_E_RANDOM_ACCESS_NOT_SUPP)
}

func TestTakeOwnershipRemovesCustomHeaders(t *testing.T) {
	j := inState(t, Suspended)
	ps, err := Decide(&j, modifyOpts(OptionsPatch{CustomHeaders: &[]string{"Authorization: Bearer s3cret"}, RedirectPolicy: ptr("DISALLOW"),
		Notify: &events.NotifySettings{URL: "https://alice.test/hook"}}), t0)
	if err != nil {
		t.Fatal(err)
	}
	_ = Apply(&j, ps[0], t0)
	ps, err = Decide(&j, TakeOwnership{NewOwner: "bob"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if types(ps) != "JobOwnerChanged,JobModified" {
		t.Fatalf("events = %s", types(ps))
	}
	if m := ps[1].(*events.JobModified); m.Reason != events.CertRemovedOwnershipMoved {
		t.Fatalf("reason = %q", m.Reason)
	}
	for _, p := range ps {
		_ = Apply(&j, p, t0)
	}
	if len(j.Options.CustomHeaders) != 0 || j.Options.Notify != nil || j.Options.RedirectPolicy != RedirectDisallow || j.Owner != "bob" {
		t.Fatalf("after take-ownership: owner %s options %+v", j.Owner, j.Options)
	}
}

func TestDownloadTimeCountsOnlyConnectingAndTransferring(t *testing.T) {
	at := func(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }
	var j Job
	steps := []struct {
		p  events.Payload
		at time.Time
	}{
		{created(file1)[0], at(0)}, {created(file1)[1], at(0)},
		{&events.JobQueued{Reason: QueuedResume}, at(1)},
		{&events.JobLeased{Agent: agentA, Attempt: 1}, at(2)},
		{&events.JobConnecting{Agent: agentA}, at(3)},      // clock starts
		{&events.JobTransferring{Agent: agentA}, at(4)},    // still running
		{&events.JobTransientError{RetryAt: at(6)}, at(5)}, // 2 h counted
		{&events.JobQueued{Reason: QueuedRetry}, at(6)},
		{&events.JobLeased{Agent: agentA, Attempt: 2}, at(7)},
		{&events.JobConnecting{Agent: agentA}, at(8)}, // clock starts again
	}
	for _, s := range steps {
		if err := Apply(&j, s.p, s.at); err != nil {
			t.Fatal(err)
		}
	}
	if got := j.DownloadTimeAt(at(9)); got != 3*time.Hour {
		t.Fatalf("download time = %s, want 3h", got)
	}
	// Resume resets it (BITS SetMaximumDownloadTime).
	_ = Apply(&j, &events.JobSuspended{}, at(9))
	_ = Apply(&j, &events.JobQueued{Reason: QueuedResume}, at(10))
	if got := j.DownloadTimeAt(at(11)); got != 0 {
		t.Fatalf("after resume: %s", got)
	}
}

func TestTimeout(t *testing.T) {
	day := 24 * time.Hour
	t.Run("max download time", func(t *testing.T) {
		j := inState(t, Transferring)
		j.RetryPolicy.MaxDownloadTimeSec = 3600
		start := *j.ActiveSince
		if got := j.NextDeadline(Timeout{}); !got.Equal(start.Add(time.Hour)) {
			t.Fatalf("next deadline %s, want %s", got, start.Add(time.Hour))
		}
		if ps, _ := Decide(&j, Timeout{}, start.Add(time.Hour-time.Second)); len(ps) != 0 {
			t.Fatalf("early: %s", types(ps))
		}
		ps, err := Decide(&j, Timeout{}, start.Add(time.Hour))
		if err != nil || types(ps) != "JobFailed" {
			t.Fatalf("%s %v", types(ps), err)
		}
		if e := ps[0].(*events.JobFailed).Error; e.Code != "BG_E_MAXDOWNLOAD_TIMEOUT" || e.HResult != "0x80200054" {
			t.Fatalf("error = %+v", e)
		}
		// The agent holding the lease is fenced by it.
		_ = Apply(&j, ps[0], start.Add(time.Hour))
		if _, err := Decide(&j, Checkpoint{Agent: agentA}, start.Add(time.Hour)); CodeOf(err) != BG_E_INVALID_STATE {
			t.Fatalf("agent not fenced: %v", err)
		}
	})
	t.Run("no limit", func(t *testing.T) {
		j := inState(t, Transferring)
		j.RetryPolicy.MaxDownloadTimeSec = 0
		if ps, _ := Decide(&j, Timeout{InactivityTimeout: -1}, t0.Add(1000*day)); len(ps) != 0 {
			t.Fatalf("%s", types(ps))
		}
	})
	t.Run("no progress in TRANSIENT_ERROR", func(t *testing.T) {
		j := inState(t, TransientError)
		j.RetryPolicy.NoProgressTimeoutSec = 7200
		dl := j.LastProgress.Add(2 * time.Hour)
		if got := j.NextDeadline(Timeout{}); !got.Equal(dl) {
			t.Fatalf("deadline %s, want %s", got, dl)
		}
		ps, _ := Decide(&j, Timeout{}, dl)
		if types(ps) != "JobFailed" || !strings.Contains(ps[0].(*events.JobFailed).Error.Description, "NoProgressTimeout") {
			t.Fatalf("%s", types(ps))
		}
		// A lease at its retry time after the deadline is refused.
		if _, err := Decide(&j, Lease{Agent: agentB}, dl.Add(time.Hour)); CodeOf(err) != BG_E_INVALID_STATE {
			t.Fatalf("lease after no-progress deadline: %v", err)
		}
	})
	t.Run("inactivity cancels", func(t *testing.T) {
		for _, s := range []State{Suspended, Errored, Transferred, TransientError} {
			j := inState(t, s)
			last := j.Times.Modification
			if got := j.NextDeadline(Timeout{InactivityTimeout: -1}); s != TransientError && !got.IsZero() {
				t.Fatalf("%s: deadline %s with inactivity off", s, got)
			}
			ps, _ := Decide(&j, Timeout{}, last.Add(90*day))
			if s == TransientError {
				// NoProgressTimeout (14 d) came first.
				if types(ps) != "JobFailed" {
					t.Fatalf("%s: %s", s, types(ps))
				}
				continue
			}
			if types(ps) != "JobCancelled" || ps[0].(*events.JobCancelled).Reason != events.CancelledInactivity {
				t.Fatalf("%s: %s", s, types(ps))
			}
		}
	})
	t.Run("final jobs have no deadline", func(t *testing.T) {
		j := inState(t, Cancelled)
		if !j.NextDeadline(Timeout{}).IsZero() {
			t.Fatal("deadline on a final job")
		}
	})
}

func TestYieldRequeuesAndKeepsFiles(t *testing.T) {
	j := inState(t, Transferring)
	ps, err := Decide(&j, Yield{Agent: agentA}, t0.Add(time.Hour))
	if err != nil || types(ps) != "JobQueued" {
		t.Fatalf("%s %v", types(ps), err)
	}
	_ = Apply(&j, ps[0], t0.Add(time.Hour))
	if j.State != Queued || j.Agent != "" || j.FilesAgent != agentA {
		t.Fatalf("after yield: %s lease %q files %q", j.State, j.Agent, j.FilesAgent)
	}
	if _, err := Decide(&j, Yield{Agent: agentB}, t0); CodeOf(err) != BG_E_INVALID_STATE {
		t.Fatalf("yield without lease: %v", err)
	}
}

func TestMaxDownloadTimeOption(t *testing.T) {
	j := inState(t, Suspended)
	if j.RetryPolicy.MaxDownloadTimeSec != 0 {
		t.Fatal("test job should start without a limit")
	}
	var c Create
	c.JobID, c.DisplayName = "0190f5c2-0000-7000-8000-000000000001", "x"
	var fresh Job
	ps, err := Decide(&fresh, c, t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := ps[0].(*events.JobCreated).RetryPolicy.MaxDownloadTimeSec; got != int64(DefaultMaxDownloadTime/time.Second) {
		t.Fatalf("default max download time = %d", got)
	}
	ps, err = Decide(&j, Modify{MaxDownloadTime: ptr(-time.Second)}, t0)
	wantCode(t, err, E_INVALIDARG)
	ps, err = Decide(&j, Modify{MaxDownloadTime: ptr(30 * time.Minute)}, t0)
	if err != nil || ps[0].(*events.JobModified).RetryPolicy.MaxDownloadTimeSec != 1800 {
		t.Fatalf("%v %v", ps, err)
	}
}

func TestCompleteFailedRecordsRenamedFiles(t *testing.T) {
	j := inState(t, Transferred)
	_ = Apply(&j, &events.JobCompleteRequested{Agent: agentA}, t0)
	j.FilesAgent = agentA
	if _, err := Decide(&j, CompleteFailed{Agent: agentA, Renamed: []int{5}}, t0); CodeOf(err) != E_INVALIDARG {
		t.Fatalf("bad index: %v", err)
	}
	ps, err := Decide(&j, CompleteFailed{Agent: agentA, Renamed: []int{0}, Error: events.ErrorInfo{Code: "E_ACCESSDENIED", FileIndex: 1}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	_ = Apply(&j, ps[0], t0)
	if j.State != Transferred || j.PendingComplete || !j.Files[0].Renamed || j.Files[1].Renamed {
		t.Fatalf("after complete failed: %s pending=%v files=%+v", j.State, j.PendingComplete, j.Files)
	}
}
