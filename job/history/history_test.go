package history_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/history"
)

// TestTimelineEntries checks, entry by entry, what the timeline says about
// recorded events: who, which agent and attempt, the state before and
// after, and for failures and retries their cause.
func TestTimelineEntries(t *testing.T) {
	const (
		alice = "spiffe://ferry.test/user/alice"
		bob   = "spiffe://ferry.test/user/bob"
		ops   = "spiffe://ferry.test/user/ops-admin"
		hostA = "spiffe://ferry.test/agent/host-a"
		hostB = "spiffe://ferry.test/agent/host-b"
		coord = "spiffe://ferry.test/service/coordinator"
	)
	type want struct {
		seq           uint64
		typ, actor    string
		agent         string
		attempt       int
		from, to      job.State
		retry         int
		reason        string
		errCode       string // Entry.Error
		causeCode     string // Entry.Cause
		retryAfterSec int64
		retryAt       string
		summary       []string // substrings
	}
	for _, tc := range []struct {
		history string
		want    []want
	}{
		{"retries", []want{
			{seq: 1, typ: "JobCreated", actor: alice, to: job.Suspended, summary: []string{`"sensor archive"`, "minimum retry delay 30s"}},
			{seq: 3, typ: "JobQueued", actor: alice, from: job.Suspended, to: job.Queued, reason: "resume", summary: []string{"resumed by " + alice}},
			{seq: 4, typ: "JobLeased", actor: hostA, agent: "host-a", attempt: 1, from: job.Queued, to: job.Queued, summary: []string{"attempt 1", "sequence 3"}},
			{seq: 6, typ: "JobTransientError", actor: hostA, agent: "host-a", attempt: 1, from: job.Connecting, to: job.TransientError,
				errCode: "ERROR_WINHTTP_CANNOT_CONNECT", retryAfterSec: 30, retryAt: "2026-11-02T09:30:52.21Z",
				summary: []string{"0x80072EFD", "REMOTE_FILE", "connection refused", "in 30s"}},
			{seq: 7, typ: "JobQueued", actor: hostA, from: job.TransientError, to: job.Queued, retry: 1, reason: "retry",
				causeCode: "ERROR_WINHTTP_CANNOT_CONNECT", summary: []string{"retry 1 after ERROR_WINHTTP_CANNOT_CONNECT"}},
			{seq: 12, typ: "JobTransientError", actor: hostA, agent: "host-a", attempt: 2, from: job.Transferring, to: job.TransientError,
				errCode: "BG_E_HTTP_ERROR_503", retryAfterSec: 120, summary: []string{"Retry-After: 120", "in 2m0s"}},
			{seq: 13, typ: "JobQueued", actor: hostB, from: job.TransientError, to: job.Queued, retry: 2, reason: "retry",
				causeCode: "BG_E_HTTP_ERROR_503", summary: []string{"retry 2 after BG_E_HTTP_ERROR_503"}},
			{seq: 14, typ: "JobLeased", actor: hostB, agent: "host-b", attempt: 3, from: job.Queued, to: job.Queued,
				summary: []string{"staged files were on host-a"}},
			{seq: 18, typ: "JobTransientError", actor: hostB, agent: "host-b", attempt: 3, from: job.Transferring, to: job.TransientError,
				errCode: "ERROR_WINHTTP_CONNECTION_ERROR", retryAfterSec: 30},
			{seq: 19, typ: "JobQueued", actor: alice, from: job.TransientError, to: job.Queued, reason: "resume",
				causeCode: "ERROR_WINHTTP_CONNECTION_ERROR", summary: []string{"resumed by " + alice + " after ERROR_WINHTTP_CONNECTION_ERROR"}},
			{seq: 22, typ: "JobTransferring", actor: hostB, agent: "host-b", attempt: 4, from: job.Connecting, to: job.Transferring,
				summary: []string{"resuming at 6.0 MiB"}},
			{seq: 25, typ: "JobCompleteRequested", actor: alice, agent: "host-b", from: job.Transferred, to: job.Transferred},
			{seq: 26, typ: "JobAcknowledged", actor: hostB, agent: "host-b", from: job.Transferred, to: job.Acknowledged, summary: []string{"1 file made visible"}},
		}},
		{"retries-v1", []want{
			// Version 1 did not record the wait: the summary derives it
			// from retry_at, the field stays "not recorded".
			{seq: 6, typ: "JobTransientError", actor: hostA, agent: "host-a", attempt: 1, from: job.Connecting, to: job.TransientError,
				errCode: "ERROR_WINHTTP_CANNOT_CONNECT", retryAt: "2026-11-02T09:30:52.21Z", summary: []string{"in 30s"}},
		}},
		{"owner-cert-options", []want{
			{seq: 3, typ: "ClientCertificateSet", actor: alice, from: job.Suspended, to: job.Suspended,
				summary: []string{"by thumbprint", `CURRENT_USER\MY 3f786850e387550fdab836ed7e6dc881de23001b`}},
			{seq: 4, typ: "JobModified", actor: alice, from: job.Suspended, to: job.Suspended,
				summary: []string{"priority FOREGROUND", "custom headers X-Feed-Client, Accept"}},
			{seq: 5, typ: "ClientCertificateRemoved", actor: alice, from: job.Suspended, to: job.Suspended, reason: "removed"},
			{seq: 6, typ: "ClientCertificateSet", actor: alice, from: job.Suspended, to: job.Suspended, summary: []string{"by subject name"}},
			{seq: 8, typ: "JobOwnerChanged", actor: ops, from: job.Suspended, to: job.Suspended, summary: []string{"ownership taken by " + bob + " (was " + alice + ")"}},
			{seq: 9, typ: "ClientCertificateRemoved", actor: ops, from: job.Suspended, to: job.Suspended, reason: "ownership-changed", summary: []string{"changed owner"}},
			{seq: 10, typ: "JobModified", actor: ops, from: job.Suspended, to: job.Suspended, reason: "ownership-changed", summary: []string{"custom headers were removed"}},
		}},
		{"suspend-preempt-complete-failed", []want{
			{seq: 8, typ: "JobSuspended", actor: alice, agent: "host-a", attempt: 1, from: job.Transferring, to: job.Suspended, summary: []string{"suspended by " + alice}},
			{seq: 14, typ: "JobQueued", actor: hostA, agent: "host-a", attempt: 2, from: job.Transferring, to: job.Queued, reason: "preempted", summary: []string{"higher-priority"}},
			{seq: 17, typ: "JobTransferring", actor: hostA, agent: "host-a", attempt: 3, from: job.Connecting, to: job.Transferring, reason: "no-range-support", summary: []string{"restarted from zero: no-range-support"}},
			{seq: 19, typ: "JobLeased", actor: hostB, agent: "host-b", attempt: 4, from: job.Transferring, to: job.Transferring, summary: []string{"takes over from agent host-a (attempt 3)"}},
			{seq: 26, typ: "JobCompleteFailed", actor: hostB, agent: "host-b", from: job.Transferred, to: job.Transferred, errCode: "ERROR_DISK_FULL"},
		}},
		{"failures-timeouts", []want{
			{seq: 6, typ: "JobFailed", actor: hostA, agent: "host-a", attempt: 1, from: job.Connecting, to: job.Errored, errCode: "BG_E_HTTP_ERROR_404"},
			{seq: 7, typ: "JobQueued", actor: alice, from: job.Errored, to: job.Queued, reason: "resume", causeCode: "BG_E_HTTP_ERROR_404"},
			{seq: 13, typ: "JobFailed", actor: coord, from: job.TransientError, to: job.Errored, errCode: "ERROR_WINHTTP_TIMEOUT", summary: []string{"NoProgressTimeout reached"}},
			{seq: 19, typ: "JobFailed", actor: coord, agent: "host-a", attempt: 3, from: job.Transferring, to: job.Errored, errCode: "BG_E_MAXDOWNLOAD_TIMEOUT"},
			{seq: 20, typ: "JobCancelled", actor: coord, agent: "host-a", from: job.Errored, to: job.Cancelled, reason: "inactivity", summary: []string{"inactivity timeout", "host-a deletes"}},
			{seq: 21, typ: "JobFilesDeleted", actor: hostA, agent: "host-a", from: job.Cancelled, to: job.Cancelled},
		}},
	} {
		t.Run(tc.history, func(t *testing.T) {
			r, err := history.Build(golden(t, 1, 1)[tc.history], history.Point{})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				e := r.Timeline[w.seq-1]
				code := func(ei *events.ErrorInfo) string {
					if ei == nil {
						return ""
					}
					return ei.Code
				}
				retryAt := ""
				if e.RetryAt != nil {
					retryAt = e.RetryAt.Format(time.RFC3339Nano)
				}
				got := want{seq: e.Seq, typ: e.Type, actor: e.Actor, agent: e.Agent, attempt: e.Attempt, from: e.From, to: e.To,
					retry: e.Retry, reason: e.Reason, errCode: code(e.Error), causeCode: code(e.Cause), retryAfterSec: e.RetryAfterSec,
					retryAt: retryAt, summary: w.summary}
				if got.seq != w.seq || got.typ != w.typ || got.actor != w.actor || got.agent != w.agent || got.attempt != w.attempt ||
					got.from != w.from || got.to != w.to || got.retry != w.retry || got.reason != w.reason || got.errCode != w.errCode ||
					got.causeCode != w.causeCode || got.retryAfterSec != w.retryAfterSec || (w.retryAt != "" && got.retryAt != w.retryAt) {
					t.Errorf("seq %d:\n got %+v\nwant %+v", w.seq, got, w)
				}
				for _, s := range w.summary {
					if !strings.Contains(e.Summary, s) {
						t.Errorf("seq %d: summary %q lacks %q", w.seq, e.Summary, s)
					}
				}
			}
		})
	}
}

// TestSecretsStayOut: custom header values (often tokens) never appear in
// a timeline; their names do.
func TestSecretsStayOut(t *testing.T) {
	const secret = "Bearer tok-9f3a61c2"
	evs := append([]events.Event(nil), golden(t, 1, 1)["owner-cert-options"]...)
	last := evs[len(evs)-1]
	m := events.Meta{Time: last.Time.Add(time.Minute), Actor: "spiffe://ferry.test/user/bob"}
	mod, err := events.New(events.KindJob, last.AggregateID, m, &events.JobModified{
		Options: &events.JobOptions{CustomHeaders: []string{"Authorization: " + secret, "X-Trace: abc"}}})
	if err != nil {
		t.Fatal(err)
	}
	mod.ID, mod.Seq = uuid.MustParse("01a19b98-0000-7000-8000-00000000beef"), last.Seq+1
	r, err := history.Build(append(evs, mod), history.Point{})
	if err != nil {
		t.Fatal(err)
	}
	e := r.Timeline[len(r.Timeline)-1]
	if strings.Contains(e.Summary, secret) || strings.Contains(e.Summary, "tok-") {
		t.Fatalf("the timeline shows a header value: %s", e.Summary)
	}
	if !strings.Contains(e.Summary, "custom headers Authorization, X-Trace") {
		t.Fatalf("the timeline does not name the headers: %s", e.Summary)
	}
}

func TestPointAndHistoryRefusals(t *testing.T) {
	evs := golden(t, 10, 10)["cancel"]
	other := golden(t, 10, 10)["retries"]
	noSeq := append([]events.Event(nil), evs...)
	noSeq[2].Seq = 0
	backwards := append([]events.Event(nil), evs...)
	backwards[3].Seq = backwards[2].Seq
	mixed := append(append([]events.Event(nil), evs[:3]...), other[3])
	mixed[3].Seq = 1000
	for _, tc := range []struct {
		name string
		evs  []events.Event
		p    history.Point
		code job.Code // zero: an error without a code (a malformed history)
	}{
		{"both a sequence and a time", evs, history.Point{Seq: 20, Time: evs[0].Time}, job.E_INVALIDARG},
		{"no events", nil, history.Point{}, job.BG_E_NOT_FOUND},
		{"before the first sequence", evs, history.Point{Seq: 9}, job.BG_E_NOT_FOUND},
		{"before the first time", evs, history.Point{Time: evs[0].Time.Add(-time.Second)}, job.BG_E_NOT_FOUND},
		{"an event without a sequence", noSeq, history.Point{}, job.Code{}},
		{"sequences out of order", backwards, history.Point{}, job.Code{}},
		{"another job's event", mixed, history.Point{}, job.Code{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := history.Build(tc.evs, tc.p)
			if err == nil {
				t.Fatal("no error")
			}
			var je *job.Error
			isJobErr := asJobError(err, &je)
			switch {
			case tc.code == (job.Code{}) && isJobErr:
				t.Fatalf("%v: a malformed history is not a %s", err, je.Code.Symbol)
			case tc.code != (job.Code{}) && job.CodeOf(err) != tc.code:
				t.Fatalf("%v, want %s", err, tc.code.Symbol)
			}
		})
	}
}

func asJobError(err error, je **job.Error) bool {
	for err != nil {
		if e, ok := err.(*job.Error); ok {
			*je = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// TestUnknownEventStopsReplay: an event this version cannot decode stops
// the history instead of being skipped.
func TestUnknownEventStopsReplay(t *testing.T) {
	evs := append([]events.Event(nil), golden(t, 1, 1)["cancel"]...)
	evs[3].Type, evs[3].ID = "JobTeleported", uuid.MustParse("01a19b98-0000-7000-8000-000000000bad")
	if _, err := history.Build(evs, history.Point{}); err == nil || !strings.Contains(err.Error(), "JobTeleported") {
		t.Fatalf("unknown type: %v", err)
	}
	// The state before it is still there to see.
	if _, _, err := history.StateAt(evs, history.Point{Seq: 3}); err != nil {
		t.Fatalf("state before the unknown event: %v", err)
	}
}

// TestTimelineLeaseFields: a JobLeased that records previous_agent and
// deliveries is explained by them; one recorded before those fields (the
// golden histories, checked in TestTimelineEntries) by the state.
func TestTimelineLeaseFields(t *testing.T) {
	evs := append([]events.Event(nil), golden(t, 1, 1)["suspend-preempt-complete-failed"]...)
	const at = 18 // seq 19: host-b takes over from host-a's attempt 3
	old, err := evs[at].Payload()
	if err != nil {
		t.Fatal(err)
	}
	lease := *old.(*events.JobLeased)
	for _, tc := range []struct {
		name             string
		previous         string
		deliveries       int
		want, wantAbsent []string
		wantDeliveries   int
	}{
		{"first delivery, from the event", "host-a", 1, []string{"takes over from agent host-a (attempt 3)"}, []string{"delivery"}, 0},
		{"redelivered", "host-a", 3, []string{"delivery 3 of the dispatch", "takes over from agent host-a (attempt 3)"}, nil, 3},
		// The event's own word wins over what the state suggests.
		{"the event names the agent", "host-c", 2, []string{"takes over from agent host-c (attempt 3)", "delivery 2"}, []string{"from agent host-a"}, 2},
		{"deliveries unknown", "host-a", 0, []string{"takes over from agent host-a"}, []string{"delivery"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := lease
			p.PreviousAgent, p.Deliveries = tc.previous, tc.deliveries
			ev, err := events.New(events.KindJob, evs[at].AggregateID, events.Meta{Time: evs[at].Time, Actor: evs[at].Actor}, &p)
			if err != nil {
				t.Fatal(err)
			}
			ev.ID, ev.Seq = evs[at].ID, evs[at].Seq
			h := append([]events.Event(nil), evs...)
			h[at] = ev
			r, err := history.Build(h, history.Point{})
			if err != nil {
				t.Fatal(err)
			}
			e := r.Timeline[at]
			for _, s := range tc.want {
				if !strings.Contains(e.Summary, s) {
					t.Errorf("summary %q lacks %q", e.Summary, s)
				}
			}
			for _, s := range tc.wantAbsent {
				if strings.Contains(e.Summary, s) {
					t.Errorf("summary %q has %q", e.Summary, s)
				}
			}
			if e.Deliveries != tc.wantDeliveries || e.Agent != "host-b" || e.Attempt != 4 {
				t.Errorf("deliveries %d, agent %s, attempt %d; want %d, host-b, 4", e.Deliveries, e.Agent, e.Attempt, tc.wantDeliveries)
			}
		})
	}
}
