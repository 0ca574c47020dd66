package job

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

const agentA, agentB = "spiffe://ferry.test/agent/a", "spiffe://ferry.test/agent/b"

var file1 = events.FileSpec{RemoteURL: "https://origin.test/a.bin", LocalName: "/data/a.bin"}
var file2 = events.FileSpec{RemoteURL: "https://origin.test/b.bin", LocalName: "/data/b.bin"}

// build returns a job after applying payloads in order, each one second
// apart, the way a store would (versions 1, 2, ...).
func build(t *testing.T, ps ...events.Payload) Job {
	t.Helper()
	var j Job
	for i, p := range ps {
		if err := Apply(&j, p, t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("apply %s: %v", p.EventType(), err)
		}
		j.Version = uint64(i + 1)
	}
	return j
}

func created(files ...events.FileSpec) []events.Payload {
	ps := []events.Payload{&events.JobCreated{JobID: "j1", DisplayName: "x", JobType: TypeDownload, Owner: "alice",
		Priority: "NORMAL", Pool: "default", RetryPolicy: events.RetryPolicy{MinimumRetryDelaySec: 600, NoProgressTimeoutSec: 1209600}}}
	if len(files) > 0 {
		ps = append(ps, &events.FilesAdded{Files: files})
	}
	return ps
}

// Paths to each state, from a job with two files.
func inState(t *testing.T, s State) Job {
	base := created(file1, file2)
	leased := append(base, &events.JobQueued{Reason: "resume"}, &events.JobLeased{Agent: agentA, Attempt: 1})
	switch s {
	case Suspended:
		return build(t, base...)
	case Queued:
		return build(t, append(base, &events.JobQueued{Reason: "resume"})...)
	case Connecting:
		return build(t, append(leased, &events.JobConnecting{Agent: agentA})...)
	case Transferring:
		return build(t, append(leased, &events.JobConnecting{Agent: agentA}, &events.JobTransferring{Agent: agentA, BytesTotal: 100})...)
	case TransientError:
		return build(t, append(leased, &events.JobTransientError{Error: events.ErrorInfo{Code: "ERROR_WINHTTP_CANNOT_CONNECT"}, RetryAt: t0.Add(time.Hour)})...)
	case Errored:
		return build(t, append(leased, &events.JobFailed{Error: events.ErrorInfo{Code: "BG_E_HTTP_ERROR_404"}})...)
	case Transferred:
		return build(t, append(leased,
			&events.FileTransferred{FileIndex: 0, Bytes: 1, TempName: "t0"},
			&events.FileTransferred{FileIndex: 1, Bytes: 1, TempName: "t1"},
			&events.JobTransferred{})...)
	case Acknowledged:
		return build(t, append(base, &events.JobCompleteRequested{}, &events.JobAcknowledged{Files: []int{}, Partial: true})...)
	case Cancelled:
		return build(t, append(base, &events.JobCancelled{})...)
	}
	t.Fatalf("no path to %s", s)
	return Job{}
}

func types(ps []events.Payload) string {
	var names []string
	for _, p := range ps {
		names = append(names, p.EventType())
	}
	return strings.Join(names, ",")
}

func TestCreateStartsSuspended(t *testing.T) {
	var j Job
	ps, err := Decide(&j, Create{JobID: "j1", DisplayName: "demo", Owner: "alice", Files: []events.FileSpec{file1}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := types(ps); got != "JobCreated,FilesAdded" {
		t.Fatalf("events %s", got)
	}
	for _, p := range ps {
		if err := Apply(&j, p, t0); err != nil {
			t.Fatal(err)
		}
	}
	if j.State != Suspended || j.Priority != Normal || j.Owner != "alice" || len(j.Files) != 1 || j.Type != TypeDownload {
		t.Fatalf("state after create: %+v", j)
	}
	if j.RetryPolicy.MinimumRetryDelaySec != 600 || j.RetryPolicy.NoProgressTimeoutSec != 1209600 {
		t.Fatalf("default retry policy %+v", j.RetryPolicy)
	}
	if j.Progress.BytesTotal != SizeUnknown || j.Progress.FilesTotal != 1 {
		t.Fatalf("progress %+v", j.Progress)
	}
}

func TestRetryDelayFloor(t *testing.T) {
	var j Job
	d, np := time.Second, time.Duration(0)
	ps, err := Decide(&j, Create{JobID: "j1", MinimumRetryDelay: &d, NoProgressTimeout: &np}, t0)
	if err != nil {
		t.Fatal(err)
	}
	rp := ps[0].(*events.JobCreated).RetryPolicy
	if rp.MinimumRetryDelaySec != 5 || rp.NoProgressTimeoutSec != 0 {
		t.Fatalf("retry policy %+v: want 5 s floor and 0 kept", rp)
	}
}

// TestTransitions walks the BITS transition table (bits-catalogue §1a).
func TestTransitions(t *testing.T) {
	later := t0.Add(2 * time.Hour) // past the transient error's RetryAt
	cases := []struct {
		name   string
		from   State
		cmd    Command
		now    time.Time
		events string // "" = no events
		to     State  // state after applying the events
		code   string // expected refusal symbol
	}{
		{"resume suspended", Suspended, Resume{}, t0, "JobQueued", Queued, ""},
		{"lease queued", Queued, Lease{Agent: agentA}, t0, "JobLeased", Queued, ""},
		{"connect", Queued, StartConnecting{Agent: agentA}, t0, "", "", "BG_E_INVALID_STATE"}, // no lease yet
		{"connecting to transferring", Connecting, StartTransferring{Agent: agentA, BytesTotal: 10}, t0, "JobTransferring", Transferring, ""},
		{"connect fails transiently", Connecting, Fail{Agent: agentA, Transient: true, Error: events.ErrorInfo{Code: "ERROR_WINHTTP_CANNOT_CONNECT"}}, t0.Add(time.Minute), "JobTransientError", TransientError, ""},
		{"transfer fatal", Transferring, Fail{Agent: agentA, Error: events.ErrorInfo{Code: "BG_E_HTTP_ERROR_404"}}, t0, "JobFailed", Errored, ""},
		{"transfer transient", Transferring, Fail{Agent: agentA, Transient: true}, t0.Add(time.Minute), "JobTransientError", TransientError, ""},
		{"file done, one left", Transferring, FileDone{Agent: agentA, FileIndex: 0, Bytes: 10}, t0, "FileTransferred", Transferring, ""},
		{"resume transient error at once", TransientError, Resume{}, t0, "JobQueued", Queued, ""},
		{"retry delay elapsed: lease requeues", TransientError, Lease{Agent: agentB}, later, "JobQueued,JobLeased", Queued, ""},
		{"retry delay not elapsed", TransientError, Lease{Agent: agentB}, t0, "", "", "BG_E_INVALID_STATE"},
		{"resume error", Errored, Resume{}, t0, "JobQueued", Queued, ""},
		{"complete error keeps finished files", Errored, Complete{}, t0, "JobCompleteRequested", Errored, ""},
		{"cancel error", Errored, Cancel{}, t0, "JobCancelled", Cancelled, ""},
		{"complete transferred", Transferred, Complete{}, t0, "JobCompleteRequested", Transferred, ""},
		{"cancel transferred", Transferred, Cancel{}, t0, "JobCancelled", Cancelled, ""},
		{"resume transferred: nothing to do", Transferred, Resume{}, t0, "", Transferred, ""},
		{"suspend queued", Queued, Suspend{}, t0, "JobSuspended", Suspended, ""},
		{"suspend transferring", Transferring, Suspend{}, t0, "JobSuspended", Suspended, ""},
		{"suspend transient", TransientError, Suspend{}, t0, "JobSuspended", Suspended, ""},
		{"suspend is idempotent", Suspended, Suspend{}, t0, "", Suspended, ""},
		{"cancel queued", Queued, Cancel{}, t0, "JobCancelled", Cancelled, ""},
		{"cancel transferring", Transferring, Cancel{}, t0, "JobCancelled", Cancelled, ""},
		{"complete suspended", Suspended, Complete{}, t0, "JobCompleteRequested,JobAcknowledged", Acknowledged, ""},
		{"resume queued is idempotent", Queued, Resume{}, t0, "", Queued, ""},
		{"take over a transferring job", Transferring, Lease{Agent: agentB}, t0, "JobLeased", Transferring, ""},
	}
	for _, final := range []State{Acknowledged, Cancelled} {
		for _, c := range []Command{Resume{}, Suspend{}, Cancel{}, Complete{}, AddFiles{Files: []events.FileSpec{file1}}, Modify{DisplayName: ptr("n")}, Lease{Agent: agentA}} {
			cases = append(cases, struct {
				name   string
				from   State
				cmd    Command
				now    time.Time
				events string
				to     State
				code   string
			}{CommandName(c) + " after " + string(final), final, c, t0, "", "", "BG_E_INVALID_STATE"})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := inState(t, tc.from)
			if j.State != tc.from {
				t.Fatalf("setup: state %s, want %s", j.State, tc.from)
			}
			ps, err := Decide(&j, tc.cmd, tc.now)
			if tc.code != "" {
				if err == nil {
					t.Fatalf("want %s, got events %s", tc.code, types(ps))
				}
				if got := CodeOf(err).Symbol; got != tc.code {
					t.Fatalf("code %s, want %s (%v)", got, tc.code, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got := types(ps); got != tc.events {
				t.Fatalf("events %q, want %q", got, tc.events)
			}
			for _, p := range ps {
				if err := Apply(&j, p, tc.now); err != nil {
					t.Fatal(err)
				}
			}
			if j.State != tc.to {
				t.Fatalf("state %s, want %s", j.State, tc.to)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestResumeWithoutFilesIsEmpty(t *testing.T) {
	j := build(t, created()...)
	_, err := Decide(&j, Resume{}, t0)
	if CodeOf(err) != BG_E_EMPTY {
		t.Fatalf("got %v, want BG_E_EMPTY", err)
	}
	if CodeOf(err).HResultString() != "0x80200003" {
		t.Fatalf("hresult %s", CodeOf(err).HResultString())
	}
}

func TestLastFileTransfersTheJob(t *testing.T) {
	j := inState(t, Transferring)
	for i, want := range []string{"FileTransferred", "FileTransferred,JobTransferred"} {
		ps, err := Decide(&j, FileDone{Agent: agentA, FileIndex: i, Bytes: 5, SHA256: "ab"}, t0)
		if err != nil {
			t.Fatal(err)
		}
		if types(ps) != want {
			t.Fatalf("file %d: %s, want %s", i, types(ps), want)
		}
		for _, p := range ps {
			_ = Apply(&j, p, t0.Add(time.Hour))
		}
	}
	if j.State != Transferred || j.Agent != "" || j.FilesAgent != agentA || j.Times.TransferCompletion == nil {
		t.Fatalf("after last file: %+v", j)
	}
	if j.Progress.FilesTransferred != 2 || j.Progress.BytesTotal != 10 || j.Progress.BytesTransferred != 10 {
		t.Fatalf("progress %+v", j.Progress)
	}
	// Repeating a file's completion is idempotent.
	j2 := inState(t, Transferring)
	_ = Apply(&j2, &events.FileTransferred{FileIndex: 0, Bytes: 5}, t0)
	if ps, err := Decide(&j2, FileDone{Agent: agentA, FileIndex: 0}, t0); err != nil || len(ps) != 0 {
		t.Fatalf("repeat: %v %v", ps, err)
	}
}

func TestFencing(t *testing.T) {
	j := inState(t, Transferring) // held by agentA
	if _, err := Decide(&j, Lease{Agent: agentB}, t0); err != nil {
		t.Fatal(err)
	}
	_ = Apply(&j, &events.JobLeased{Agent: agentB, Attempt: 2}, t0)
	for _, c := range []Command{
		Checkpoint{Agent: agentA, BytesTransferred: 5},
		FileDone{Agent: agentA},
		Fail{Agent: agentA, Transient: true},
		StartConnecting{Agent: agentA},
	} {
		_, err := Decide(&j, c, t0)
		if CodeOf(err) != BG_E_INVALID_STATE || !strings.Contains(err.Error(), ErrLeaseLost) {
			t.Errorf("%s by the fenced agent: %v", CommandName(c), err)
		}
	}
	// Suspend ends every lease.
	_ = Apply(&j, &events.JobSuspended{}, t0)
	if _, err := Decide(&j, Checkpoint{Agent: agentB}, t0); CodeOf(err) != BG_E_INVALID_STATE {
		t.Fatalf("write after suspend: %v", err)
	}
}

func TestTakeoverRestartsFilesOnTheNewHost(t *testing.T) {
	j := inState(t, Transferring) // agentA
	// The lease of a takeover names the agent it takes the job from and
	// the dispatch's delivery count; a re-lease by the holder names none.
	ps, err := Decide(&j, Lease{Agent: agentB, DispatchSeq: j.Version, Deliveries: 2}, t0)
	if err != nil || len(ps) != 1 {
		t.Fatalf("takeover: %s %v", types(ps), err)
	}
	if l := ps[0].(*events.JobLeased); l.PreviousAgent != agentA || l.Deliveries != 2 || l.Attempt != j.Attempt+1 {
		t.Fatalf("takeover lease %+v", l)
	}
	if ps, err := Decide(&j, Lease{Agent: agentA, DispatchSeq: j.Version, Deliveries: 1}, t0); err != nil || ps[0].(*events.JobLeased).PreviousAgent != "" {
		t.Fatalf("re-lease by the holder: %v %v", ps, err)
	}
	_ = Apply(&j, &events.FileTransferred{FileIndex: 0, Bytes: 10, TempName: "t0"}, t0)
	_ = Apply(&j, &events.JobLeased{Agent: agentB, Attempt: 2}, t0)
	if j.Files[0].Transferred || j.Files[0].BytesTransferred != 0 || j.FilesAgent != agentB || j.NextFile() != 0 {
		t.Fatalf("after takeover: %+v", j)
	}
	// The same agent leasing again (after its own restart) keeps its files.
	k := inState(t, Transferring)
	_ = Apply(&k, &events.FileTransferred{FileIndex: 0, Bytes: 10, TempName: "t0"}, t0)
	_ = Apply(&k, &events.JobLeased{Agent: agentA, Attempt: 2}, t0)
	if !k.Files[0].Transferred || k.NextFile() != 1 {
		t.Fatalf("re-lease by the same agent lost progress: %+v", k)
	}
}

func TestNoProgressTimeout(t *testing.T) {
	j := inState(t, Transferring)
	// Last progress was at creation/resume (t0+2s); 14 days later a transient error is fatal.
	ps, err := Decide(&j, Fail{Agent: agentA, Transient: true, Error: events.ErrorInfo{Code: "X"}}, t0.Add(15*24*time.Hour))
	if err != nil || types(ps) != "JobFailed" {
		t.Fatalf("%s %v, want JobFailed", types(ps), err)
	}
	// NoProgressTimeout 0 makes every error fatal.
	zero := time.Duration(0)
	mod, _ := Decide(&j, Modify{NoProgressTimeout: &zero}, t0)
	_ = Apply(&j, mod[0], t0)
	ps, _ = Decide(&j, Fail{Agent: agentA, Transient: true}, t0.Add(time.Second))
	if types(ps) != "JobFailed" {
		t.Fatalf("with NoProgressTimeout 0: %s", types(ps))
	}
}

func TestRetryAtHonoursRetryAfter(t *testing.T) {
	j := inState(t, Transferring)
	now := t0.Add(time.Minute)
	ps, _ := Decide(&j, Fail{Agent: agentA, Transient: true, RetryAfter: time.Hour}, now)
	if got := ps[0].(*events.JobTransientError).RetryAt; !got.Equal(now.Add(time.Hour)) {
		t.Fatalf("retry at %v", got)
	}
	ps, _ = Decide(&j, Fail{Agent: agentA, Transient: true, RetryAfter: time.Second}, now)
	if got := ps[0].(*events.JobTransientError).RetryAt; !got.Equal(now.Add(600 * time.Second)) {
		t.Fatalf("retry at %v: MinimumRetryDelay must win over a shorter Retry-After", got)
	}
}

func TestCompleteAndCancelGoToTheFilesHost(t *testing.T) {
	j := inState(t, Transferred)
	ps, _ := Decide(&j, Complete{}, t0)
	if ps[0].(*events.JobCompleteRequested).Agent != agentA {
		t.Fatalf("complete must name the files' host: %+v", ps[0])
	}
	_ = Apply(&j, ps[0], t0)
	if _, err := Decide(&j, CompleteDone{Agent: agentB, Files: []int{0, 1}}, t0); CodeOf(err) != BG_E_INVALID_STATE {
		t.Fatalf("another agent completing: %v", err)
	}
	if _, err := Decide(&j, Resume{}, t0); CodeOf(err) != BG_E_INVALID_STATE {
		t.Fatalf("resume while completing: %v", err)
	}
	ps, _ = Decide(&j, CompleteDone{Agent: agentA, Files: []int{0, 1}}, t0)
	_ = Apply(&j, ps[0], t0)
	if j.State != Acknowledged || !j.Files[0].Completed || !j.Files[1].Completed || ps[0].(*events.JobAcknowledged).Partial {
		t.Fatalf("after complete: %+v", j)
	}

	c := inState(t, Transferred)
	ps, _ = Decide(&c, Cancel{}, t0)
	_ = Apply(&c, ps[0], t0)
	if c.State != Cancelled || !c.PendingCleanup {
		t.Fatalf("cancel: %+v", c)
	}
	ps, err := Decide(&c, FilesDeleted{Agent: agentA}, t0)
	if err != nil || types(ps) != "JobFilesDeleted" {
		t.Fatalf("cleanup: %v %v", ps, err)
	}
}

func TestCompleteFailedStaysTransferred(t *testing.T) {
	j := inState(t, Transferred)
	_ = Apply(&j, &events.JobCompleteRequested{Agent: agentA}, t0)
	ps, err := Decide(&j, CompleteFailed{Agent: agentA, Error: events.ErrorInfo{Code: "E_ACCESSDENIED"}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	_ = Apply(&j, ps[0], t0)
	if j.State != Transferred || j.PendingComplete {
		t.Fatalf("%+v", j)
	}
	// Complete can be tried again.
	if ps, _ := Decide(&j, Complete{}, t0); types(ps) != "JobCompleteRequested" {
		t.Fatalf("retry complete: %s", types(ps))
	}
}

func TestBadInput(t *testing.T) {
	long := strings.Repeat("é", 257)
	cases := []struct {
		name string
		cmd  Command
		code string
	}{
		{"display name too long", Create{JobID: "j1", DisplayName: long}, "BG_E_STRING_TOO_LONG"},
		{"bad priority", Create{JobID: "j1", Priority: "URGENT"}, "E_INVALIDARG"},
		{"bad id", Create{JobID: "a.b"}, "E_INVALIDARG"},
		{"relative local name", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "https://h/x", LocalName: "x/y"}}}, "E_INVALIDARG"},
		{"escaping local name", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "https://h/x", LocalName: "/data/../etc/passwd"}}}, "E_INVALIDARG"},
		{"unclean local name", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "https://h/x", LocalName: "/data//x"}}}, "E_INVALIDARG"},
		{"directory local name", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "https://h/x", LocalName: "/data/"}}}, "E_INVALIDARG"},
		{"ftp scheme", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "ftp://h/x", LocalName: "/x"}}}, "ERROR_WINHTTP_UNRECOGNIZED_SCHEME"},
		{"file scheme", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "file:///etc/passwd", LocalName: "/x"}}}, "ERROR_WINHTTP_UNRECOGNIZED_SCHEME"},
		{"credentials in url", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "https://u:p@h/x", LocalName: "/x"}}}, "E_INVALIDARG"},
		{"relative url", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "/x", LocalName: "/x"}}}, "ERROR_WINHTTP_INVALID_URL"},
		{"missing local", Create{JobID: "j1", Files: []events.FileSpec{{RemoteURL: "https://h/x"}}}, "RPC_X_NULL_REF_POINTER"},
		{"too many files", Create{JobID: "j1", Files: []events.FileSpec{file1, file2}, Limits: Limits{MaxFilesPerJob: 1}}, "BG_E_TOO_MANY_FILES_IN_JOB"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var j Job
			_, err := Decide(&j, tc.cmd, t0)
			if got := CodeOf(err).Symbol; got != tc.code {
				t.Fatalf("code %s, want %s (%v)", got, tc.code, err)
			}
		})
	}
	j := inState(t, Suspended)
	if _, err := Decide(&j, AddFiles{}, t0); CodeOf(err) != RPC_X_NULL_REF_POINTER {
		t.Fatalf("empty add-files: %v", err)
	}
	var none Job
	if _, err := Decide(&none, Resume{}, t0); CodeOf(err) != BG_E_NOT_FOUND {
		t.Fatalf("resume of a missing job: %v", err)
	}
}

func TestCodeTable(t *testing.T) {
	want := map[string]string{
		"E_ACCESSDENIED": "0x80070005", "E_NOTIMPL": "0x80004001", "ERROR_FILE_NOT_FOUND": "0x80070002",
		"CRYPT_E_NOT_FOUND": "0x80092004", "RPC_X_NULL_REF_POINTER": "0x800706F4", "RPC_X_BAD_STUB_DATA": "0x800706F7",
		"BG_E_STRING_TOO_LONG": "0x80200021", "BG_E_INVALID_STATE": "0x80200002", "BG_E_EMPTY": "0x80200003",
		"ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED": "0x80072F0C", "BG_S_PARTIAL_COMPLETE": "0x00200017",
		"BG_S_UNABLE_TO_DELETE_FILES": "0x0020001A", "BG_E_VALIDATION_FAILED": "0x80200053",
		"BG_E_MAXDOWNLOAD_TIMEOUT": "0x80200054", "BG_E_BLOCKED_BY_POLICY": "0x8020003E",
		"BG_E_MISSING_FILE_SIZE": "0x80200011", "BG_E_INVALID_RANGE": "0x8020002B", "BG_E_NEW_OWNER_NO_FILE_ACCESS": "0x80200016",
		"BG_E_NEW_OWNER_DIFF_MAPPING": "0x80200015", "BG_E_TOO_MANY_FILES": "0x8020001C", "BG_E_INVALID_AUTH_TARGET": "0x80200027",
		"BG_E_INVALID_AUTH_SCHEME": "0x80200028", "BG_E_HTTP_ERROR_404": "0x80190194", "BG_E_HTTP_ERROR_503": "0x801901F7",
	}
	for sym, hr := range want {
		c, ok := LookupCode(sym)
		if !ok {
			t.Errorf("%s missing from the vocabulary", sym)
			continue
		}
		if c.HResultString() != hr {
			t.Errorf("%s = %s, want %s", sym, c.HResultString(), hr)
		}
		if c.Status < 200 || c.Status > 599 || c.Message == "" {
			t.Errorf("%s: status %d message %q", sym, c.Status, c.Message)
		}
	}
	if _, ok := LookupCode("BG_E_HTTP_ERROR_9999"); ok {
		t.Error("nonsense HTTP code accepted")
	}
}

func FuzzValidateLocalName(f *testing.F) {
	for _, s := range []string{"/a", "/a/../b", "a", "/a//b", "/", "/a/./b", "/a\x00b", "/ü/ß"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if err := ValidateLocalName(p); err == nil {
			if !strings.HasPrefix(p, "/") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") || strings.Contains(p, "//") || strings.ContainsRune(p, 0) {
				t.Fatalf("accepted %q", p)
			}
		}
	})
}

func FuzzValidateRemoteURL(f *testing.F) {
	for _, s := range []string{"https://h/x", "http://h:80/x?y#z", "ftp://h", "https://u:p@h/", "//h/x", "https://[::1]/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := ValidateRemoteURL(s); err == nil {
			l := strings.ToLower(s)
			if !strings.HasPrefix(l, "http://") && !strings.HasPrefix(l, "https://") {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}

// TestPinnedToOneAgent: a job created for one agent keeps its pool, names
// the agent, and only that agent may lease it (host pinning); a bad agent
// ID is refused at creation.
func TestPinnedToOneAgent(t *testing.T) {
	const agentA, agentB = "host-a", "host-b"
	var j Job
	ps, err := Decide(&j, Create{JobID: "j1", Owner: "alice", Agent: agentA, Files: []events.FileSpec{file1}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if err := Apply(&j, p, t0); err != nil {
			t.Fatal(err)
		}
	}
	if j.TargetAgent != agentA || j.Pool != DefaultPool {
		t.Fatalf("target %q pool %q", j.TargetAgent, j.Pool)
	}
	ps, err = Decide(&j, Resume{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if err := Apply(&j, p, t0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Decide(&j, Lease{Agent: agentB}, t0); CodeOf(err) != E_ACCESSDENIED {
		t.Fatalf("lease by another agent: %v", err)
	}
	if ps, err := Decide(&j, Lease{Agent: agentA}, t0); err != nil || types(ps) != "JobLeased" {
		t.Fatalf("lease by the pinned agent: %s %v", types(ps), err)
	}
	var k Job
	if _, err := Decide(&k, Create{JobID: "j2", Owner: "alice", Agent: "bad agent"}, t0); CodeOf(err) != E_INVALIDARG {
		t.Fatalf("bad agent id: %v", err)
	}
}
