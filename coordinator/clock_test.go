package coordinator

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/rs/zerolog"
)

// clockRig runs the coordinator's clock against an in-memory store, in
// virtual time (testing/synctest), and plays an agent by hand.
type clockRig struct {
	t     *testing.T
	ctx   context.Context
	repo  *jobstore.Repo
	id    string
	kick  chan struct{}
	mu    sync.Mutex
	sends []time.Time // when a transfer dispatch was published
}

const rigAgent = "agent-1"

func newClockRig(t *testing.T, create job.Create) *clockRig {
	t.Helper()
	r := &clockRig{t: t, ctx: t.Context(), repo: &jobstore.Repo{Store: events.NewMemoryStore()}, kick: make(chan struct{}, 1)}
	id, err := newJobID()
	if err != nil {
		t.Fatal(err)
	}
	r.id = id
	create.JobID, create.DisplayName, create.Owner = id, "clock", "alice"
	create.Files = []events.FileSpec{{RemoteURL: "https://origin.test/f", LocalName: "/data/f"}}
	r.do(create)
	r.do(job.Resume{})
	c := &clock{
		interval: 24 * time.Hour, inactivity: -1, kick: r.kick, log: zerolog.Nop(),
		list: func(ctx context.Context) ([]job.Job, error) {
			j, err := r.repo.Load(ctx, r.id)
			return []job.Job{j}, err
		},
		publish: func(_ context.Context, j *job.Job) {
			if _, cmd, ok := commandFor(j, time.Now()); ok && cmd.Kind == "transfer" && j.State == job.TransientError {
				r.mu.Lock()
				r.sends = append(r.sends, time.Now())
				r.mu.Unlock()
			}
		},
		timeout: func(ctx context.Context, j *job.Job, tc job.Timeout) error {
			_, err := r.repo.Execute(ctx, j.ID, tc, events.Meta{Actor: "service/coordinator"}, nil)
			return err
		},
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *clockRig) do(c job.Command) job.Job {
	r.t.Helper()
	res, err := r.repo.Execute(r.ctx, r.id, c, events.Meta{Actor: "test"}, nil)
	if err != nil {
		r.t.Fatalf("%s: %v", job.CommandName(c), err)
	}
	// What the projector's onApply does in the service.
	for _, ev := range res.Events {
		if movesDeadline(ev.Type) {
			select {
			case r.kick <- struct{}{}:
			default:
			}
		}
	}
	return res.Job
}

func (r *clockRig) job() job.Job {
	r.t.Helper()
	j, err := r.repo.Load(r.ctx, r.id)
	if err != nil {
		r.t.Fatal(err)
	}
	return j
}

// failTransient plays an agent that leases the job, connects and fails
// with a transient error (the origin's Retry-After, if any).
func (r *clockRig) failTransient(retryAfter time.Duration) job.Job {
	r.do(job.Lease{Agent: rigAgent})
	r.do(job.StartConnecting{Agent: rigAgent})
	return r.do(job.Fail{Agent: rigAgent, Transient: true, RetryAfter: retryAfter,
		Error: events.ErrorInfo{Context: job.ContextRemoteFile, Code: "BG_E_HTTP_ERROR_503", Description: "503"}})
}

func (r *clockRig) dispatches() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.sends...)
}

// sleepUntil advances virtual time to at and lets the clock act.
func sleepUntil(at time.Time) {
	time.Sleep(time.Until(at))
	synctest.Wait()
}

func TestClockRetryTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newClockRig(t, job.Create{MinimumRetryDelay: ptr(60 * time.Second), NoProgressTimeout: ptr(10 * time.Minute)})
		start := time.Now()

		// MinimumRetryDelay: the retry is dispatched exactly 60 s later.
		j := r.failTransient(0)
		if want := start.Add(60 * time.Second); !j.RetryAt.Equal(want) {
			t.Fatalf("retry at %s, want %s", j.RetryAt, want)
		}
		sleepUntil(j.RetryAt.Add(-time.Millisecond))
		if n := len(r.dispatches()); n != 0 {
			t.Fatalf("dispatched %d times before the retry delay ran out", n)
		}
		sleepUntil(*j.RetryAt)
		if d := r.dispatches(); len(d) != 1 || !d[0].Equal(*j.RetryAt) {
			t.Fatalf("dispatches %v, want one at %s", d, j.RetryAt)
		}

		// Retry-After longer than the delay wins.
		j = r.failTransient(4 * time.Minute)
		if want := time.Now().Add(4 * time.Minute); !j.RetryAt.Equal(want) {
			t.Fatalf("retry at %s, want %s (Retry-After)", j.RetryAt, want)
		}
		sleepUntil(*j.RetryAt)
		if d := r.dispatches(); len(d) != 2 || !d[1].Equal(*j.RetryAt) {
			t.Fatalf("dispatches %v", d)
		}

		// NoProgressTimeout: a retry scheduled after the deadline never
		// happens; the job turns to ERROR exactly at the deadline.
		j = r.failTransient(30 * time.Minute)
		deadline := start.Add(10 * time.Minute)
		if j.State != job.TransientError || !j.RetryAt.After(deadline) {
			t.Fatalf("state %s retry %s", j.State, j.RetryAt)
		}
		sleepUntil(deadline.Add(-time.Millisecond))
		if s := r.job().State; s != job.TransientError {
			t.Fatalf("state before the no-progress deadline: %s", s)
		}
		sleepUntil(deadline)
		got := r.job()
		if got.State != job.Errored || !got.Times.Modification.Equal(deadline) {
			t.Fatalf("at the deadline: %s (modified %s), want ERROR at %s", got.State, got.Times.Modification, deadline)
		}
		sleepUntil(j.RetryAt.Add(time.Minute))
		if n := len(r.dispatches()); n != 2 {
			t.Fatalf("a retry was dispatched after the job failed (%d dispatches)", n)
		}
	})
}

func TestClockMaxDownloadTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newClockRig(t, job.Create{MaxDownloadTime: ptr(30 * time.Minute)})
		r.do(job.Lease{Agent: rigAgent})
		r.do(job.StartConnecting{Agent: rigAgent})
		started := time.Now()
		r.do(job.StartTransferring{Agent: rigAgent, BytesTotal: 1 << 40})
		// Steady progress: only MaxDownloadTime can stop it.
		var last job.Job
		for i := int64(1); time.Since(started) < 29*time.Minute; i++ {
			time.Sleep(time.Minute)
			last = r.do(job.Checkpoint{Agent: rigAgent, BytesTransferred: i << 20, BytesTotal: 1 << 40})
		}
		if last.State != job.Transferring {
			t.Fatalf("state %s before the limit", last.State)
		}
		sleepUntil(started.Add(30 * time.Minute))
		j := r.job()
		if j.State != job.Errored || j.Error == nil || j.Error.Code != "BG_E_MAXDOWNLOAD_TIMEOUT" {
			t.Fatalf("after MaxDownloadTime: %s %+v", j.State, j.Error)
		}
		if !j.Times.Modification.Equal(started.Add(30 * time.Minute)) {
			t.Fatalf("failed at %s, want %s", j.Times.Modification, started.Add(30*time.Minute))
		}
		// The agent's next write is refused: it has been fenced.
		if _, err := r.repo.Execute(r.ctx, r.id, job.Checkpoint{Agent: rigAgent, BytesTransferred: 1 << 30}, events.Meta{}, nil); job.CodeOf(err) != job.BG_E_INVALID_STATE {
			t.Fatalf("agent write after the limit: %v", err)
		}
	})
}

func TestClockSuspendedTimeDoesNotCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newClockRig(t, job.Create{MaxDownloadTime: ptr(30 * time.Minute)})
		r.do(job.Lease{Agent: rigAgent})
		r.do(job.StartConnecting{Agent: rigAgent})
		time.Sleep(20 * time.Minute)
		r.do(job.Suspend{})
		time.Sleep(5 * time.Hour) // suspended: the clock does not run
		synctest.Wait()
		r.do(job.Resume{}) // and Resume resets it
		r.do(job.Lease{Agent: rigAgent})
		r.do(job.StartConnecting{Agent: rigAgent})
		again := time.Now()
		sleepUntil(again.Add(29 * time.Minute))
		if s := r.job().State; s != job.Connecting {
			t.Fatalf("state %s: suspended time or time before Resume was counted", s)
		}
		sleepUntil(again.Add(30 * time.Minute))
		if s := r.job().State; s != job.Errored {
			t.Fatalf("state %s after 30 min connecting", s)
		}
	})
}

func TestClockInactivityCancels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newClockRig(t, job.Create{})
		r.do(job.Suspend{})
		touched := time.Now()
		// The rig's clock has inactivity off; run one with 90 days.
		c := &clock{interval: 24 * time.Hour, kick: make(chan struct{}), log: zerolog.Nop(),
			list: func(ctx context.Context) ([]job.Job, error) {
				j, err := r.repo.Load(ctx, r.id)
				return []job.Job{j}, err
			},
			publish: func(context.Context, *job.Job) {},
			timeout: func(ctx context.Context, j *job.Job, tc job.Timeout) error {
				_, err := r.repo.Execute(ctx, j.ID, tc, events.Meta{Actor: "service/coordinator"}, nil)
				return err
			},
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() { _ = c.run(ctx) }()
		sleepUntil(touched.Add(job.DefaultJobInactivityTimeout - time.Second))
		if s := r.job().State; s != job.Suspended {
			t.Fatalf("cancelled early: %s", s)
		}
		sleepUntil(touched.Add(job.DefaultJobInactivityTimeout))
		j := r.job()
		if j.State != job.Cancelled {
			t.Fatalf("after 90 days untouched: %s", j.State)
		}
		evs, _ := r.repo.Store.Load(r.ctx, events.JobSubject(r.id), 0)
		last, _ := evs[len(evs)-1].Payload()
		if c, ok := last.(*events.JobCancelled); !ok || c.Reason != events.CancelledInactivity {
			t.Fatalf("last event %T %+v", last, last)
		}
		cancel()
		synctest.Wait()
	})
}

func ptr[T any](v T) *T { return &v }
