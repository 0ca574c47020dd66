package job

import (
	"fmt"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// DispatchFailed is the coordinator's command when NATS gave up on a job's
// dispatch: the command was delivered to agents MaxDeliver times and none
// settled it (each crashed on it, was cut off past AckWait, or handed it
// back). No agent can run the job, so a job the dispatch was for goes to
// ERROR (BITS: the queue manager failed the job); Resume queues it again.
//
// The dispatch mattered while the job is QUEUED, CONNECTING or TRANSFERRING
// (a lease taken on it ends: its agent is fenced), or TRANSIENT_ERROR with
// its retry due (the dispatch was the retry). In any other state the job has
// moved on (suspended, failed, finished, cancelled) and DispatchFailed
// changes nothing, so a repeated advisory is harmless.
type DispatchFailed struct {
	// Deliveries is how many times the dispatch was delivered.
	Deliveries uint64
}

func (DispatchFailed) commandName() string { return "fail dispatch of" }

// DecideDispatchFailed is Decide for DispatchFailed: the events it causes
// on j at now (none when the dispatch no longer matters), or BG_E_NOT_FOUND.
// It is pure.
func DecideDispatchFailed(j *Job, c DispatchFailed, now time.Time) ([]events.Payload, error) {
	if !j.Exists() {
		return nil, Errorf(BG_E_NOT_FOUND, "job not found")
	}
	if !DispatchMatters(j, now) {
		return nil, nil
	}
	return one(&events.JobFailed{Error: events.ErrorInfo{
		Context: ContextGeneralQueueManager,
		Code:    E_FAIL.Symbol, HResult: E_FAIL.HResultString(),
		Description: fmt.Sprintf("no agent could run the job: its dispatch was delivered %d times "+
			"and no agent finished with it (agents crashed, were cut off, or handed it back); resume the job to try again",
			c.Deliveries),
		FileIndex: -1,
	}}), nil
}

// DispatchMatters reports whether j, at now, is in a state a pool dispatch
// is for: waiting for an agent, held by one, or due for its retry.
func DispatchMatters(j *Job, now time.Time) bool {
	switch {
	case j.State.Final(), j.PendingComplete:
		return false
	case j.State.Active():
		return true
	case j.State == TransientError:
		return j.RetryAt != nil && !now.Before(*j.RetryAt)
	}
	return false
}
