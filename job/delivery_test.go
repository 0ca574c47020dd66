package job

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// TestDispatchFailed: a dispatch no agent could settle fails the job only in
// the states the dispatch was for; in every other state (including ERROR,
// so a repeated advisory) nothing happens.
func TestDispatchFailed(t *testing.T) {
	due := t0.Add(2 * time.Hour) // after the TRANSIENT_ERROR job's RetryAt (t0+1h)
	cases := []struct {
		state State
		now   time.Time
		fails bool
	}{
		{Queued, t0, true},
		{Connecting, t0, true},
		{Transferring, t0, true},
		{TransientError, due, true},
		{TransientError, t0, false}, // its retry is not due: the dispatch was not for it
		{Suspended, t0, false},
		{Errored, t0, false},
		{Transferred, t0, false},
		{Acknowledged, t0, false},
		{Cancelled, t0, false},
	}
	for _, tc := range cases {
		name := string(tc.state)
		if tc.now == due {
			name += "/retry due"
		}
		t.Run(name, func(t *testing.T) {
			j := inState(t, tc.state)
			before := j.Clone()
			ps, err := DecideDispatchFailed(&j, DispatchFailed{Deliveries: 20}, tc.now)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.fails {
				if len(ps) != 0 {
					t.Fatalf("events %s, want none", types(ps))
				}
				return
			}
			if got := types(ps); got != events.TypeJobFailed {
				t.Fatalf("events %s, want %s", got, events.TypeJobFailed)
			}
			e := ps[0].(*events.JobFailed).Error
			if e.Code != "E_FAIL" || e.HResult != "0x80004005" || e.Context != ContextGeneralQueueManager || e.FileIndex != -1 {
				t.Fatalf("error %+v", e)
			}
			if !strings.Contains(e.Description, "no agent could run the job: its dispatch was delivered 20 times") {
				t.Fatalf("description %q", e.Description)
			}
			if err := Apply(&j, ps[0], tc.now); err != nil {
				t.Fatal(err)
			}
			if j.State != Errored || j.Agent != "" || j.ErrorCount != before.ErrorCount+1 {
				t.Fatalf("after: state %s agent %q errors %d", j.State, j.Agent, j.ErrorCount)
			}
			// Decided again on the new state (a repeated advisory): nothing.
			if ps, err := DecideDispatchFailed(&j, DispatchFailed{Deliveries: 20}, tc.now); err != nil || len(ps) != 0 {
				t.Fatalf("repeat: events %s, err %v", types(ps), err)
			}
			// Resume queues it again.
			if ps, err := Decide(&j, Resume{}, tc.now); err != nil || types(ps) != events.TypeJobQueued {
				t.Fatalf("resume: events %s, err %v", types(ps), err)
			}
		})
	}
}

func TestDispatchFailedPendingComplete(t *testing.T) {
	j := inState(t, Transferred)
	if err := Apply(&j, &events.JobCompleteRequested{Agent: agentA}, t0); err != nil {
		t.Fatal(err)
	}
	if ps, err := DecideDispatchFailed(&j, DispatchFailed{Deliveries: 3}, t0); err != nil || len(ps) != 0 {
		t.Fatalf("events %s, err %v", types(ps), err)
	}
}

func TestDispatchFailedUnknownJob(t *testing.T) {
	var j Job
	_, err := DecideDispatchFailed(&j, DispatchFailed{Deliveries: 3}, t0)
	if CodeOf(err) != BG_E_NOT_FOUND {
		t.Fatalf("err %v", err)
	}
}
