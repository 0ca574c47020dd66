package services_test

// Stack-level fault tests: the real coordinator API over mTLS, embedded
// NATS, the real agent and an origintest origin that misbehaves on request.
// Each test shows the job's state path, its events (types in order, error
// codes and HRESULTs, Restarted reasons, RetryAt) and a byte-exact file
// once the fault has cleared.

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/rs/zerolog"
)

// fxStack is an in-process dev stack whose agent trusts an origintest
// origin (and any extra CAs), with the event log readable directly.
type fxStack struct {
	*stack
	ot    *origintest.Server
	store *events.JetStreamStore
}

type fxOptions struct {
	log      *zerolog.Logger // nil: the test's log
	extraCAs []string
	idleRead time.Duration // the agent's stall timeout (0: the default)
}

// fxModified is the Last-Modified of every file the fault tests serve.
var fxModified = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newFXStack(t *testing.T, o fxOptions) *fxStack {
	t.Helper()
	ot := origintest.New(t, origintest.Options{})
	caFile := filepath.Join(t.TempDir(), "origintest-ca.pem")
	if err := os.WriteFile(caFile, ot.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	st := startStackWith(t, stackOptions{caFiles: append([]string{caFile}, o.extraCAs...), log: o.log,
		tune: func(c *services.DevConfig) { c.IdleReadTimeout = o.idleRead }})
	d := st.dev
	store, err := events.NewJetStreamStore(context.Background(), d.NATS().JS)
	if err != nil {
		t.Fatal(err)
	}
	return &fxStack{stack: st, ot: ot, store: store}
}

// serve puts content at path with a strong ETag.
func (s *fxStack) serve(path string, c origintest.Content, etag string) string {
	s.ot.SetFile(path, origintest.File{Content: c, ETag: etag, LastModified: fxModified})
	return s.ot.URL + path
}

// createReq creates a job (resumed) from a full request.
func (s *fxStack) createReq(req coordinator.CreateRequest) string {
	s.t.Helper()
	if req.DisplayName == "" {
		req.DisplayName = s.t.Name()
	}
	req.Resume = true
	j, err := s.client.Create(context.Background(), req)
	if err != nil {
		s.t.Fatal(err)
	}
	return j.ID
}

// events loads every event of the job from the log.
func (s *fxStack) events(id string) []events.Event {
	s.t.Helper()
	evs, err := s.store.Load(context.Background(), events.JobSubject(id), 0)
	if err != nil {
		s.t.Fatal(err)
	}
	return evs
}

// requests are the origin's requests for path, in order.
func (s *fxStack) requests(path string) []origintest.Request {
	var out []origintest.Request
	for _, r := range s.ot.Requests() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// completeAndCheck completes a TRANSFERRED job, waits for ACKNOWLEDGED and
// checks the final file byte for byte.
func (s *fxStack) completeAndCheck(id, dest, wantSHA string) job.Job {
	s.t.Helper()
	if r := s.action(id, "complete"); r.Code != "S_OK" {
		s.t.Fatalf("complete: %+v", r)
	}
	j := s.until(id, "ACKNOWLEDGED", state(job.Acknowledged))
	if got := servicestest.FileSum(s.t, dest); got != wantSHA {
		s.t.Fatalf("final file SHA-256 %s, origin content %s", got, wantSHA)
	}
	if j.Files[0].SHA256 != wantSHA {
		s.t.Fatalf("the event says SHA-256 %s, origin content %s", j.Files[0].SHA256, wantSHA)
	}
	// The staged data file was renamed before JobAcknowledged was written.
	// (Its sidecar is deleted by the agent after that event, so it may
	// still be there at this point.)
	for _, p := range fxPartFilesOf(s.t, s.root, dest) {
		if strings.HasSuffix(p, ".part") {
			s.t.Fatalf("the temporary file is left after complete: %s", p)
		}
	}
	return j
}

// fxPartFilesOf lists the temporary files (and sidecars) of dest left in
// the agent's root.
func fxPartFilesOf(t *testing.T, root, dest string) []string {
	prefix := filepath.Join(filepath.Dir(filepath.FromSlash(dest)), "."+filepath.Base(dest)+".ferry-")
	var out []string
	for _, p := range partFiles(t, root) {
		if strings.HasPrefix(p, prefix) {
			out = append(out, p)
		}
	}
	return out
}

// fxTypes lists the events' types, leaving out FileProgressed checkpoints
// (how many there are depends on timing; fxCheckProgress checks them).
func fxTypes(evs []events.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.Type != events.TypeFileProgressed {
			out = append(out, ev.Type)
		}
	}
	return out
}

// fxPayloads returns the payloads of type T, in order, with their events.
func fxPayloads[T events.Payload](t *testing.T, evs []events.Event) ([]T, []events.Event) {
	t.Helper()
	var out []T
	var with []events.Event
	for i := range evs {
		p, err := evs[i].Payload()
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := p.(T); ok {
			out = append(out, v)
			with = append(with, evs[i])
		}
	}
	return out, with
}

// fxStatePath replays the events and lists the states the job went
// through (consecutive repeats folded).
func fxStatePath(t *testing.T, evs []events.Event) []job.State {
	t.Helper()
	var j job.Job
	var out []job.State
	for i := range evs {
		ev := evs[i]
		if err := job.Evolve(&j, &ev); err != nil {
			t.Fatal(err)
		}
		if len(out) == 0 || out[len(out)-1] != j.State {
			out = append(out, j.State)
		}
	}
	return out
}

func fxCheckTypes(t *testing.T, evs []events.Event, want ...string) {
	t.Helper()
	if got := fxTypes(evs); !slices.Equal(got, want) {
		t.Fatalf("event types (FileProgressed left out)\n got  %q\n want %q", got, want)
	}
}

func fxCheckPath(t *testing.T, evs []events.Event, want ...job.State) {
	t.Helper()
	if got := fxStatePath(t, evs); !slices.Equal(got, want) {
		t.Fatalf("state path\n got  %v\n want %v", got, want)
	}
}

// fxCheckStarts checks the JobTransferring events: offset, total and
// Restarted reason of each, in order.
func fxCheckStarts(t *testing.T, evs []events.Event, want ...events.JobTransferring) {
	t.Helper()
	got, _ := fxPayloads[*events.JobTransferring](t, evs)
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		g, w := got[i], want[i]
		ok = g.FileIndex == w.FileIndex && g.Offset == w.Offset && g.BytesTotal == w.BytesTotal && g.Restarted == w.Restarted
	}
	if !ok {
		var gs []string
		for _, g := range got {
			gs = append(gs, fmt.Sprintf("{file %d offset %d total %d restarted %q}", g.FileIndex, g.Offset, g.BytesTotal, g.Restarted))
		}
		t.Fatalf("JobTransferring events %v, want %+v", gs, want)
	}
}

// fxCheckLeases checks the attempts of the JobLeased events and the
// reasons of the JobQueued events.
func fxCheckLeases(t *testing.T, evs []events.Event, queued []string, attempts ...int) {
	t.Helper()
	ls, _ := fxPayloads[*events.JobLeased](t, evs)
	var got []int
	for _, l := range ls {
		got = append(got, l.Attempt)
	}
	if !slices.Equal(got, attempts) {
		t.Fatalf("lease attempts %v, want %v", got, attempts)
	}
	qs, _ := fxPayloads[*events.JobQueued](t, evs)
	var reasons []string
	for _, q := range qs {
		reasons = append(reasons, q.Reason)
	}
	if !slices.Equal(reasons, queued) {
		t.Fatalf("JobQueued reasons %q, want %q", reasons, queued)
	}
}

// fxCheckProgress checks that every checkpoint lies within the file and
// that checkpoints never go backwards within an attempt. maxFirst bounds the
// checkpoints of the first attempt (-1: no bound).
func fxCheckProgress(t *testing.T, evs []events.Event, size, maxFirst int64) {
	t.Helper()
	attempt, last := 0, int64(-1)
	for i := range evs {
		p, err := evs[i].Payload()
		if err != nil {
			t.Fatal(err)
		}
		switch e := p.(type) {
		case *events.JobTransferring:
			attempt++
			last = e.Offset
		case *events.FileProgressed:
			if e.BytesTransferred < last || e.BytesTransferred > size || (attempt == 1 && maxFirst >= 0 && e.BytesTransferred > maxFirst) {
				t.Fatalf("checkpoint %d bytes in attempt %d (previous %d, size %d, first attempt at most %d)", e.BytesTransferred, attempt, last, size, maxFirst)
			}
			last = e.BytesTransferred
		}
	}
}

type fxWantErr struct {
	code, hresult, context string
}

func fxCheckErr(t *testing.T, what string, e *events.ErrorInfo, w fxWantErr) {
	t.Helper()
	if e == nil || e.Code != w.code || e.HResult != w.hresult || e.Context != w.context || e.FileIndex != 0 {
		t.Fatalf("%s: error %+v, want %s (%s) in %s for file 0", what, e, w.code, w.hresult, w.context)
	}
}

var (
	fxConnErr = fxWantErr{"ERROR_WINHTTP_CONNECTION_ERROR", "0x80072EFE", job.ContextGeneralTransport}
	fx503     = fxWantErr{"BG_E_HTTP_ERROR_503", "0x801901F7", job.ContextRemoteFile}
	fx404     = fxWantErr{"BG_E_HTTP_ERROR_404", "0x80190194", job.ContextRemoteFile}
	fx401     = fxWantErr{"BG_E_HTTP_ERROR_401", "0x80190191", job.ContextRemoteFile}
)

// fxTransient returns the job's only JobTransientError and its event.
func fxTransient(t *testing.T, evs []events.Event) (*events.JobTransientError, events.Event) {
	t.Helper()
	ps, with := fxPayloads[*events.JobTransientError](t, evs)
	if len(ps) != 1 {
		t.Fatalf("%d JobTransientError events, want 1", len(ps))
	}
	return ps[0], with[0]
}

// The whole life of a job with one fault on the first attempt and a user
// resume after TRANSIENT_ERROR.
var (
	fxTypesFaultResume = []string{
		events.TypeJobCreated, events.TypeFilesAdded, events.TypeJobQueued, events.TypeJobLeased,
		events.TypeJobConnecting, events.TypeJobTransferring, events.TypeJobTransientError,
		events.TypeJobQueued, events.TypeJobLeased, events.TypeJobConnecting, events.TypeJobTransferring,
		events.TypeFileTransferred, events.TypeJobTransferred, events.TypeJobCompleteRequested, events.TypeJobAcknowledged,
	}
	fxPathFaultResume = []job.State{
		job.Suspended, job.Queued, job.Connecting, job.Transferring, job.TransientError,
		job.Queued, job.Connecting, job.Transferring, job.Transferred, job.Acknowledged,
	}
)

// The same when the fault is an error status: the first attempt never
// gets to TRANSFERRING.
var (
	fxTypesStatusResume = slices.Delete(slices.Clone(fxTypesFaultResume), 5, 6)
	fxPathStatusResume  = slices.Delete(slices.Clone(fxPathFaultResume), 3, 4)
)

// fxDropThenResume runs a job whose first response is cut after dropAt
// body bytes, waits for TRANSIENT_ERROR, checks the error, lets setup
// change the origin, resumes the job and waits for TRANSFERRED. It returns
// the job's ID and destination.
func (s *fxStack) fxDropThenResume(path string, c origintest.Content, dropAt int64, setup func()) (id, dest string) {
	t := s.t
	t.Helper()
	url := s.serve(path, c, `"v1"`)
	s.ot.Inject(origintest.Fault{Path: path, Count: 1, Drop: true, DropAfter: dropAt})
	dest = s.dest("faults" + path)
	id = s.create(events.FileSpec{RemoteURL: url, LocalName: dest})
	j := s.until(id, "TRANSIENT_ERROR", state(job.TransientError))
	fxCheckErr(t, "the cut connection", j.Error, fxConnErr)
	if len(fxPartFilesOf(t, s.root, dest)) == 0 {
		t.Fatal("the staged bytes were not kept for the resume")
	}
	if setup != nil {
		setup()
	}
	if r := s.action(id, "resume"); r.Code != "S_OK" || r.Job.State != job.Queued {
		t.Fatalf("resume: %+v", r)
	}
	s.until(id, "TRANSFERRED", state(job.Transferred))
	return id, dest
}

// TestFaultConnectionDroppedMidBody: the origin cuts the connection after
// 300,000 body bytes. The job goes TRANSIENT_ERROR with
// ERROR_WINHTTP_CONNECTION_ERROR (0x80072EFE, general transport), retrying
// after the default MinimumRetryDelay (600 s). Resume continues with
// "Range: bytes=300000-" (If-Range the ETag) from the checkpoint, and the
// completed file is the origin's, byte for byte.
func TestFaultConnectionDroppedMidBody(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	const size, dropAt = 1<<20 + 4321, 300_000
	c := origintest.Content{Seed: 101, Size: size}
	id, dest := s.fxDropThenResume("/drop.bin", c, dropAt, nil)

	reqs := s.requests("/drop.bin")
	if len(reqs) != 2 || reqs[0].Range != "" || reqs[1].Range != fmt.Sprintf("bytes=%d-", dropAt) || reqs[1].IfRange != `"v1"` {
		t.Fatalf("requests %+v: want a whole-file request, then Range bytes=%d- with If-Range \"v1\"", reqs, dropAt)
	}
	s.completeAndCheck(id, dest, c.SHA256())

	evs := s.events(id)
	fxCheckTypes(t, evs, fxTypesFaultResume...)
	fxCheckPath(t, evs, fxPathFaultResume...)
	fxCheckLeases(t, evs, []string{job.QueuedResume, job.QueuedResume}, 1, 2)
	fxCheckStarts(t, evs, events.JobTransferring{Offset: 0, BytesTotal: size}, events.JobTransferring{Offset: dropAt, BytesTotal: size})
	fxCheckProgress(t, evs, size, dropAt)
	te, ev := fxTransient(t, evs)
	fxCheckErr(t, "JobTransientError", &te.Error, fxConnErr)
	if d := te.RetryAt.Sub(ev.Time); d != job.DefaultMinimumRetryDelay {
		t.Fatalf("RetryAt is %v after the failure, want the default MinimumRetryDelay %v", d, job.DefaultMinimumRetryDelay)
	}
	ft, _ := fxPayloads[*events.FileTransferred](t, evs)
	if ft[0].Bytes != size || ft[0].SHA256 != c.SHA256() || ft[0].ETag != `"v1"` {
		t.Fatalf("FileTransferred %+v", ft[0])
	}
}

// TestFault503RetryAfter: 503 with Retry-After on jobs whose
// MinimumRetryDelay is 5 s (set at creation). Retry-After 30 s, larger
// than the delay, sets RetryAt = failure + 30 s (BG_E_HTTP_ERROR_503,
// 0x801901F7); Resume retries at once and the job finishes. Retry-After
// 1 s, smaller, gives RetryAt = failure + 5 s, and the coordinator's clock
// retries the job by itself then (JobQueued "retry", not before RetryAt).
func TestFault503RetryAfter(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	const size = 400_000
	ca, cb := origintest.Content{Seed: 201, Size: size}, origintest.Content{Seed: 202, Size: size}
	urlA, urlB := s.serve("/a.bin", ca, `"a"`), s.serve("/b.bin", cb, `"b"`)
	s.ot.Inject(origintest.Fault{Path: "/a.bin", Count: 1, Status: 503, RetryAfter: "30"})
	s.ot.Inject(origintest.Fault{Path: "/b.bin", Count: 1, Status: 503, RetryAfter: "1"})
	five := int64(5)
	destA, destB := s.dest("r/a.bin"), s.dest("r/b.bin")
	before := time.Now()
	idA := s.createReq(coordinator.CreateRequest{MinimumRetryDelayS: &five, Files: []events.FileSpec{{RemoteURL: urlA, LocalName: destA}}})
	idB := s.createReq(coordinator.CreateRequest{MinimumRetryDelayS: &five, Files: []events.FileSpec{{RemoteURL: urlB, LocalName: destB}}})

	ja := s.until(idA, "TRANSIENT_ERROR", state(job.TransientError))
	after := time.Now()
	if ja.RetryPolicy.MinimumRetryDelaySec != 5 {
		t.Fatalf("minimum retry delay %d s, want 5", ja.RetryPolicy.MinimumRetryDelaySec)
	}
	fxCheckErr(t, "job A", ja.Error, fx503)
	if ja.RetryAt == nil || ja.RetryAt.Before(before.Add(30*time.Second-time.Second)) || ja.RetryAt.After(after.Add(30*time.Second+time.Second)) {
		t.Fatalf("job A retries at %v; failure was between %v and %v, Retry-After 30 s", ja.RetryAt, before, after)
	}
	if r := s.action(idA, "resume"); r.Job.State != job.Queued {
		t.Fatalf("resume: %+v", r)
	}
	s.until(idA, "TRANSFERRED", state(job.Transferred))
	s.completeAndCheck(idA, destA, ca.SHA256())

	evs := s.events(idA)
	fxCheckTypes(t, evs, fxTypesStatusResume...)
	fxCheckPath(t, evs, fxPathStatusResume...)
	fxCheckLeases(t, evs, []string{job.QueuedResume, job.QueuedResume}, 1, 2)
	fxCheckStarts(t, evs, events.JobTransferring{Offset: 0, BytesTotal: size})
	te, tev := fxTransient(t, evs)
	fxCheckErr(t, "job A's JobTransientError", &te.Error, fx503)
	if d := te.RetryAt.Sub(tev.Time); d < 29*time.Second || d > 31*time.Second {
		t.Fatalf("job A: RetryAt is %v after the failure, want Retry-After's 30 s", d)
	}
	_, leases := fxPayloads[*events.JobLeased](t, evs)
	if !leases[1].Time.Before(te.RetryAt.Add(-20 * time.Second)) {
		t.Fatalf("job A: the resumed attempt began at %v, RetryAt %v: Resume must not wait", leases[1].Time, te.RetryAt)
	}
	if reqs := s.requests("/a.bin"); len(reqs) != 2 || reqs[0].Range != "" || reqs[1].Range != "" {
		t.Fatalf("job A: requests %+v: two whole-file requests", reqs)
	}

	// Job B: nobody resumes it; the clock retries it at RetryAt.
	s.until(idB, "TRANSFERRED (retried by the clock)", state(job.Transferred))
	s.completeAndCheck(idB, destB, cb.SHA256())
	evs = s.events(idB)
	fxCheckTypes(t, evs, fxTypesStatusResume...)
	fxCheckPath(t, evs, fxPathStatusResume...)
	fxCheckLeases(t, evs, []string{job.QueuedResume, job.QueuedRetry}, 1, 2)
	te, tev = fxTransient(t, evs)
	fxCheckErr(t, "job B's JobTransientError", &te.Error, fx503)
	if d := te.RetryAt.Sub(tev.Time); d != 5*time.Second {
		t.Fatalf("job B: RetryAt is %v after the failure, want MinimumRetryDelay's 5 s (Retry-After 1 s is smaller)", d)
	}
	_, queued := fxPayloads[*events.JobQueued](t, evs)
	if retried := queued[1].Time; retried.Before(te.RetryAt) {
		t.Fatalf("job B was retried at %v, before its RetryAt %v", retried, te.RetryAt)
	}
}

// TestFaultResumeIgnoresRange: after a cut connection the origin answers
// the resume's Range request with 200 and the whole file. The engine
// starts over: JobTransferring{offset 0, restarted "no-range-support"},
// and the file is exact.
func TestFaultResumeIgnoresRange(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	const size, dropAt = 700_000, 250_000
	c := origintest.Content{Seed: 301, Size: size}
	id, dest := s.fxDropThenResume("/norange.bin", c, dropAt, func() {
		s.ot.Inject(origintest.Fault{Path: "/norange.bin", IgnoreRange: true})
	})
	if reqs := s.requests("/norange.bin"); len(reqs) != 2 || reqs[1].Range != fmt.Sprintf("bytes=%d-", dropAt) {
		t.Fatalf("requests %+v: the resume must ask for bytes=%d-", reqs, dropAt)
	}
	s.completeAndCheck(id, dest, c.SHA256())
	evs := s.events(id)
	fxCheckTypes(t, evs, fxTypesFaultResume...)
	fxCheckPath(t, evs, fxPathFaultResume...)
	fxCheckStarts(t, evs,
		events.JobTransferring{Offset: 0, BytesTotal: size},
		events.JobTransferring{Offset: 0, BytesTotal: size, Restarted: "no-range-support"})
	fxCheckProgress(t, evs, size, dropAt)
}

// TestFaultETagChanges: the file changes (new content, size and ETag)
// between the cut first attempt and the resume. Whether the origin honours
// If-Range (200 with the new file) or ignores it (206 of the new file,
// which the engine refuses and asks again without Range), the job restarts
// with "validator-changed" and ends with the new content exactly.
func TestFaultETagChanges(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	const size, dropAt = 600_000, 200_000
	for _, tc := range []struct {
		name, path    string
		ignoreIfRange bool
		wantRanges    []string
	}{
		{"If-Range honoured", "/etag-a.bin", false, []string{"", fmt.Sprintf("bytes=%d-", dropAt)}},
		{"If-Range ignored", "/etag-b.bin", true, []string{"", fmt.Sprintf("bytes=%d-", dropAt), ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func(outer *testing.T) { s.t = outer }(s.t)
			s.t = t
			v1 := origintest.Content{Seed: 401, Size: size}
			v2 := origintest.Content{Seed: 402, Size: size + 12_345}
			id, dest := s.fxDropThenResume(tc.path, v1, dropAt, func() {
				s.ot.ChangeAfter(tc.path, origintest.File{Content: v2, ETag: `"v2"`, LastModified: fxModified.Add(time.Hour)}, 0, 0)
				if tc.ignoreIfRange {
					s.ot.Inject(origintest.Fault{Path: tc.path, IgnoreIfRange: true})
				}
			})
			var ranges []string
			for _, r := range s.requests(tc.path) {
				ranges = append(ranges, r.Range)
			}
			if !slices.Equal(ranges, tc.wantRanges) {
				t.Fatalf("Range headers %q, want %q", ranges, tc.wantRanges)
			}
			j := s.completeAndCheck(id, dest, v2.SHA256())
			if j.Files[0].ETag != `"v2"` || j.Files[0].BytesTotal != v2.Size {
				t.Fatalf("file %+v: want the new version", j.Files[0])
			}
			evs := s.events(id)
			fxCheckTypes(t, evs, fxTypesFaultResume...)
			fxCheckPath(t, evs, fxPathFaultResume...)
			fxCheckStarts(t, evs,
				events.JobTransferring{Offset: 0, BytesTotal: size},
				events.JobTransferring{Offset: 0, BytesTotal: v2.Size, Restarted: "validator-changed"})
		})
	}
}

// TestFaultWrongContentRange: the origin answers the resume's Range with a
// 206 whose Content-Range starts one byte later than asked. The engine
// does not trust the bytes: it throws the staged ones away, asks again
// without Range (JobTransferring restarted "bad-content-range") and the
// file is exact; the job never sees an error for it.
func TestFaultWrongContentRange(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	const size, dropAt = 650_000, 220_000
	c := origintest.Content{Seed: 501, Size: size}
	id, dest := s.fxDropThenResume("/badcr.bin", c, dropAt, func() {
		s.ot.Inject(origintest.Fault{Path: "/badcr.bin", WrongContentRange: true})
	})
	var ranges []string
	for _, r := range s.requests("/badcr.bin") {
		ranges = append(ranges, r.Range)
	}
	if want := []string{"", fmt.Sprintf("bytes=%d-", dropAt), ""}; !slices.Equal(ranges, want) {
		t.Fatalf("Range headers %q, want %q", ranges, want)
	}
	s.completeAndCheck(id, dest, c.SHA256())
	evs := s.events(id)
	fxCheckTypes(t, evs, fxTypesFaultResume...)
	fxCheckPath(t, evs, fxPathFaultResume...)
	fxCheckStarts(t, evs,
		events.JobTransferring{Offset: 0, BytesTotal: size},
		events.JobTransferring{Offset: 0, BytesTotal: size, Restarted: "bad-content-range"})
}

// TestFaultStall: the origin stops sending after N body bytes. A stall that
// ends is survived without an error or a second request; a stalled
// connection that is then closed is a transient connection error; a stall
// longer than the agent's idle-read timeout is a transient
// ERROR_WINHTTP_TIMEOUT. Either way the resume continues from exactly the
// bytes received before the stall.
func TestFaultStall(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	const size, stallAt = 800_000, 300_000
	waitStalled := func(t *testing.T) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.ot.Wait(ctx, func(st origintest.Stats) bool { return st.Stalled == 1 }); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("released", func(t *testing.T) {
		defer func(outer *testing.T) { s.t = outer }(s.t)
		s.t = t
		c := origintest.Content{Seed: 601, Size: size}
		url := s.serve("/stall.bin", c, `"s"`)
		s.ot.Inject(origintest.Fault{Path: "/stall.bin", Count: 1, Stall: true, StallAfter: stallAt})
		dest := s.dest("stall/released.bin")
		id := s.create(events.FileSpec{RemoteURL: url, LocalName: dest})
		waitStalled(t)
		if j := s.until(id, "TRANSFERRING", state(job.Transferring)); j.Error != nil {
			t.Fatalf("error while stalled: %+v", j.Error)
		}
		s.ot.Release()
		s.until(id, "TRANSFERRED", state(job.Transferred))
		if n := len(s.requests("/stall.bin")); n != 1 {
			t.Fatalf("%d requests: a stall that ends needs no second one", n)
		}
		s.completeAndCheck(id, dest, c.SHA256())
		evs := s.events(id)
		fxCheckTypes(t, evs, events.TypeJobCreated, events.TypeFilesAdded, events.TypeJobQueued, events.TypeJobLeased,
			events.TypeJobConnecting, events.TypeJobTransferring, events.TypeFileTransferred, events.TypeJobTransferred,
			events.TypeJobCompleteRequested, events.TypeJobAcknowledged)
		fxCheckPath(t, evs, job.Suspended, job.Queued, job.Connecting, job.Transferring, job.Transferred, job.Acknowledged)
		fxCheckProgress(t, evs, size, -1)
	})

	t.Run("closed while stalled", func(t *testing.T) {
		defer func(outer *testing.T) { s.t = outer }(s.t)
		s.t = t
		c := origintest.Content{Seed: 602, Size: size}
		url := s.serve("/stall2.bin", c, `"s2"`)
		s.ot.Inject(origintest.Fault{Path: "/stall2.bin", Count: 1, Stall: true, StallAfter: stallAt, StallForever: true})
		dest := s.dest("stall/closed.bin")
		id := s.create(events.FileSpec{RemoteURL: url, LocalName: dest})
		waitStalled(t)
		s.until(id, "TRANSFERRING", state(job.Transferring))
		s.ot.CloseClientConnections()
		j := s.until(id, "TRANSIENT_ERROR", state(job.TransientError))
		fxCheckErr(t, "the closed stalled connection", j.Error, fxConnErr)
		s.action(id, "resume")
		s.until(id, "TRANSFERRED", state(job.Transferred))
		reqs := s.requests("/stall2.bin")
		if len(reqs) != 2 || reqs[1].Range != fmt.Sprintf("bytes=%d-", stallAt) {
			t.Fatalf("requests %+v: the resume must continue at the stall (bytes=%d-)", reqs, stallAt)
		}
		s.completeAndCheck(id, dest, c.SHA256())
		evs := s.events(id)
		fxCheckTypes(t, evs, fxTypesFaultResume...)
		fxCheckPath(t, evs, fxPathFaultResume...)
		fxCheckStarts(t, evs, events.JobTransferring{Offset: 0, BytesTotal: size}, events.JobTransferring{Offset: stallAt, BytesTotal: size})
		fxCheckProgress(t, evs, size, stallAt)
	})
}

// TestFaultStallTimesOut: a body that stops for longer than the agent's
// idle-read timeout fails the attempt with a transient ERROR_WINHTTP_TIMEOUT
// (0x80072EE2) at the bytes received; resume asks for the rest.
func TestFaultStallTimesOut(t *testing.T) {
	s := newFXStack(t, fxOptions{idleRead: 500 * time.Millisecond})
	const size, stallAt = 800_000, 300_000
	c := origintest.Content{Seed: 603, Size: size}
	url := s.serve("/stall3.bin", c, `"s3"`)
	s.ot.Inject(origintest.Fault{Path: "/stall3.bin", Count: 1, Stall: true, StallAfter: stallAt, StallForever: true})
	dest := s.dest("stall/timeout.bin")
	id := s.create(events.FileSpec{RemoteURL: url, LocalName: dest})
	j := s.until(id, "TRANSIENT_ERROR", state(job.TransientError))
	fxCheckErr(t, "the stalled body", j.Error, fxWantErr{"ERROR_WINHTTP_TIMEOUT", "0x80072EE2", job.ContextGeneralTransport})
	if !strings.Contains(j.Error.Description, "stalled") {
		t.Fatalf("description %q does not say the transfer stalled", j.Error.Description)
	}
	s.action(id, "resume")
	s.until(id, "TRANSFERRED", state(job.Transferred))
	reqs := s.requests("/stall3.bin")
	if len(reqs) != 2 || reqs[1].Range != fmt.Sprintf("bytes=%d-", stallAt) {
		t.Fatalf("requests %+v: the resume must continue at the stall (bytes=%d-)", reqs, stallAt)
	}
	s.completeAndCheck(id, dest, c.SHA256())
	evs := s.events(id)
	fxCheckPath(t, evs, fxPathFaultResume...)
	fxCheckStarts(t, evs, events.JobTransferring{Offset: 0, BytesTotal: size}, events.JobTransferring{Offset: stallAt, BytesTotal: size})
}

// TestFaultHTTP404And401AreFatal: 404 and 401 put the job in ERROR
// (BG_E_HTTP_ERROR_404 0x80190194, BG_E_HTTP_ERROR_401 0x80190191, remote
// file context) with JobFailed, no RetryAt, and no retry: after another job
// has run from start to end (its events kick the coordinator's clock, which
// looks at every job that is not final) the origin has still seen exactly
// one request for each and their logs end with JobFailed.
func TestFaultHTTP404And401AreFatal(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	c := origintest.Content{Seed: 701, Size: 100_000}
	s.serve("/gone.bin", c, `"g"`)
	url := s.serve("/marker.bin", c, `"m"`)
	s.ot.Inject(origintest.Fault{Path: "/gone.bin", Status: 404})
	s.ot.Inject(origintest.Fault{Path: "/auth.bin", Status: 401})
	cases := []struct {
		path string
		want fxWantErr
		id   string
	}{
		{path: "/gone.bin", want: fx404},
		{path: "/auth.bin", want: fx401},
	}
	for i := range cases {
		tc := &cases[i]
		tc.id = s.create(events.FileSpec{RemoteURL: s.ot.URL + tc.path, LocalName: s.dest("fatal" + tc.path)})
		j := s.until(tc.id, "ERROR", state(job.Errored))
		fxCheckErr(t, tc.path, j.Error, tc.want)
		if j.RetryAt != nil || j.ErrorCount != 1 {
			t.Fatalf("%s: RetryAt %v, error count %d: a fatal error schedules no retry", tc.path, j.RetryAt, j.ErrorCount)
		}
	}
	// Another job, start to end, while the two sit in ERROR.
	dest := s.dest("fatal/marker.bin")
	id := s.create(events.FileSpec{RemoteURL: url, LocalName: dest})
	s.until(id, "TRANSFERRED", state(job.Transferred))
	s.completeAndCheck(id, dest, c.SHA256())

	for _, tc := range cases {
		evs := s.events(tc.id)
		fxCheckTypes(t, evs, events.TypeJobCreated, events.TypeFilesAdded, events.TypeJobQueued, events.TypeJobLeased,
			events.TypeJobConnecting, events.TypeJobFailed)
		fxCheckPath(t, evs, job.Suspended, job.Queued, job.Connecting, job.Errored)
		f, _ := fxPayloads[*events.JobFailed](t, evs)
		fxCheckErr(t, tc.path+" JobFailed", &f[0].Error, tc.want)
		if n := len(s.requests(tc.path)); n != 1 {
			t.Fatalf("%s: the origin saw %d requests, want 1 (no retry)", tc.path, n)
		}
	}
}

// fxTLSServer starts an HTTPS server (HTTP/1.1) with h and writes the PEM
// of its self-signed certificate to a file the stack can trust.
func fxTLSServer(t *testing.T, h http.Handler) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = false
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // aborted handlers are on purpose
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "server-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, caFile
}

// rawAPI sends a request to the coordinator and returns the status, the
// Content-Type and the body.
func (s *fxStack) rawAPI(method, path string, body any) (int, string, []byte) {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			s.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.client.BaseURL+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.HTTP.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}
