// Package jobstore loads jobs from an event store and runs commands against
// them with optimistic concurrency: load, decide, append with the expected
// last sequence, and on a conflict reload and decide again.
//
// It is the one place where the pure job model meets I/O; the coordinator and
// the agents both use it. It imports job and events only.
package jobstore

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// DefaultMaxAttempts bounds the reload-and-retry loop on conflicts.
const DefaultMaxAttempts = 8

// Repo runs commands on jobs stored in an events.Store.
type Repo struct {
	Store events.Store
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxAttempts bounds conflict retries; 0 means DefaultMaxAttempts.
	MaxAttempts int
}

func (r *Repo) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Load replays job id from its events. It returns a BG_E_NOT_FOUND *job.Error
// when the job has no events.
func (r *Repo) Load(ctx context.Context, id string) (job.Job, error) {
	if !events.ValidID(id) {
		return job.Job{}, job.Errorf(job.BG_E_NOT_FOUND, "job %q not found", id)
	}
	var j job.Job
	if err := r.Refresh(ctx, &j, id); err != nil {
		return job.Job{}, err
	}
	if !j.Exists() {
		return job.Job{}, job.Errorf(job.BG_E_NOT_FOUND, "job %s not found", id)
	}
	return j, nil
}

// Refresh applies the events of job id after j.Version to j.
func (r *Repo) Refresh(ctx context.Context, j *job.Job, id string) error {
	evs, err := r.Store.Load(ctx, events.JobSubject(id), j.Version)
	if err != nil {
		return fmt.Errorf("jobstore: load %s: %w", id, err)
	}
	for i := range evs {
		if err := job.Evolve(j, &evs[i]); err != nil {
			return err
		}
	}
	return nil
}

// Result is what Execute did.
type Result struct {
	Job    job.Job        // state after the command
	Events []events.Event // events appended (none for an idempotent repeat)
}

// Execute runs command c on job id. If j is non-nil it is the caller's
// current view of the job (for example an agent's, chained on its own
// writes); it is used for the first decision and updated in place to the new
// state (a zero j is loaded first). On a conflict the job is reloaded and c decided again, so the caller
// sees either success on the latest state or the refusal of that state.
func (r *Repo) Execute(ctx context.Context, id string, c job.Command, m events.Meta, j *job.Job) (Result, error) {
	var cur job.Job
	// fresh: cur is known to include every event (just loaded). A refusal
	// or a no-op decided on a view that may be stale is checked against the
	// latest events before it is believed.
	fresh := false
	if j != nil && j.Exists() {
		cur = j.Clone()
	} else if _, create := c.(job.Create); !create {
		var err error
		if cur, err = r.Load(ctx, id); err != nil {
			return Result{}, err
		}
		fresh = true
	}
	attempts := r.MaxAttempts
	if attempts <= 0 {
		attempts = DefaultMaxAttempts
	}
	for attempt := 1; ; attempt++ {
		if m.Time.IsZero() || attempt > 1 {
			m.Time = r.now()
		}
		ps, err := job.Decide(&cur, c, m.Time)
		if (err != nil || len(ps) == 0) && !fresh {
			before := cur.Version
			if err := r.Refresh(ctx, &cur, id); err != nil {
				return Result{}, err
			}
			fresh = true
			if cur.Version != before {
				continue
			}
		}
		if err != nil {
			r.sync(j, cur)
			return Result{Job: cur}, err
		}
		if len(ps) == 0 {
			r.sync(j, cur)
			return Result{Job: cur}, nil
		}
		evs, err := job.NewEvents(id, m, ps)
		if err != nil {
			return Result{}, err
		}
		_, err = r.Store.Append(ctx, events.JobSubject(id), cur.Version, evs)
		if err == nil {
			for i := range evs {
				if err := job.Evolve(&cur, &evs[i]); err != nil {
					return Result{}, err
				}
			}
			r.sync(j, cur)
			return Result{Job: cur, Events: evs}, nil
		}
		if !events.IsConflict(err) || attempt >= attempts {
			return Result{}, fmt.Errorf("jobstore: %s job %s: %w", job.CommandName(c), id, err)
		}
		// Someone else wrote first: catch up and decide again.
		if err := r.Refresh(ctx, &cur, id); err != nil {
			return Result{}, err
		}
		fresh = true
	}
}

func (r *Repo) sync(dst *job.Job, cur job.Job) {
	if dst != nil {
		*dst = cur
	}
}
