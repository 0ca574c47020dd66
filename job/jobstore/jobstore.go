// Package jobstore loads jobs from an event store and runs commands against
// them with optimistic concurrency: load, decide, append with the expected
// last sequence, and on a conflict reload and decide again.
//
// It is the one place where the pure job model meets I/O; the coordinator and
// the agents both use it. It imports job and events only.
package jobstore

import (
	"context"
	"errors"
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
	// Snapshots, if set, is where Load (and Execute, which loads) starts:
	// a job's state from a snapshot plus the job's events after it, instead
	// of all of its events. Without it, or when it has no usable snapshot
	// of a job, Load replays the job from its first event.
	Snapshots Snapshots
	// SnapshotUnusable, if set, is called when Snapshots failed or returned
	// a snapshot Load could not use (it then replayed the whole job), with
	// the reason. Frequent calls mean slow loads: log or count them.
	SnapshotUnusable func(id string, reason error)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxAttempts bounds conflict retries; 0 means DefaultMaxAttempts.
	MaxAttempts int
	// StaleWait bounds how long a load waits for a read that lags behind
	// a sequence known to exist; 0 means DefaultStaleWait.
	StaleWait time.Duration
}

// Snapshots is a source of job states that were built from a job's events
// up to some sequence: a projection such as the coordinator's read model.
// Loading a job with many events is then a snapshot and the few events
// after it.
type Snapshots interface {
	// Snapshot returns the stored state of job id and the stream sequence
	// of the last event it includes, which must equal j.Version (the
	// projection applied exactly the job's events up to seq, in order,
	// with job.Evolve of the same rules as this process). ok is false when
	// there is none; an error means the source failed. Repo copies j
	// before it applies anything to it.
	Snapshot(ctx context.Context, id string) (j job.Job, seq uint64, ok bool, err error)
}

// ErrSnapshotUnusable is wrapped by the reasons given to
// Repo.SnapshotUnusable.
var ErrSnapshotUnusable = errors.New("jobstore: snapshot unusable")

func (r *Repo) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Load rebuilds job id: from its snapshot and the events after it when
// Snapshots has a usable one, else from all of its events. It returns a
// BG_E_NOT_FOUND *job.Error when the job has no events.
func (r *Repo) Load(ctx context.Context, id string) (job.Job, error) {
	if !events.ValidID(id) {
		return job.Job{}, job.Errorf(job.BG_E_NOT_FOUND, "job %q not found", id)
	}
	j, ok, err := r.fromSnapshot(ctx, id)
	if err != nil {
		return job.Job{}, err
	}
	if !ok {
		if err := r.Refresh(ctx, &j, id); err != nil {
			return job.Job{}, err
		}
	}
	if !j.Exists() {
		// A read from a replica that lags behind the stream leader may miss
		// a job created a moment ago: ask the store where the job's subject
		// really ends before answering "not found".
		last, err := r.Store.LastSeq(ctx, events.JobSubject(id))
		if err != nil {
			return job.Job{}, fmt.Errorf("jobstore: load %s: %w", id, err)
		}
		if last == 0 {
			return job.Job{}, job.Errorf(job.BG_E_NOT_FOUND, "job %s not found", id)
		}
		if err := r.refreshAtLeast(ctx, &j, id, last); err != nil {
			return job.Job{}, err
		}
	}
	return j, nil
}

// LoadAtLeast is Load for a caller that knows the job has an event at
// sequence seq or later — a dispatch's JobSeq, a lease, the sequence a
// conflict reported. On a cluster, reads go to any replica and one may lag a
// few messages behind; a view older than seq is such a read, and it is
// retried until it has caught up (within StaleWait and ctx). A job that
// never reaches seq is an error wrapping ErrStale.
func (r *Repo) LoadAtLeast(ctx context.Context, id string, seq uint64) (job.Job, error) {
	j, err := r.Load(ctx, id)
	if err != nil && job.CodeOf(err) != job.BG_E_NOT_FOUND {
		return job.Job{}, err
	}
	if err == nil && j.Version >= seq {
		return j, nil
	}
	if err := r.refreshAtLeast(ctx, &j, id, seq); err != nil {
		return job.Job{}, err
	}
	return j, nil
}

// LoadLatest is Load up to the end of the job's events as the store's
// LastSeq tells it (on JetStream, the stream leader), for a decision that
// must not be taken on a replica's older view — a refusal, say.
func (r *Repo) LoadLatest(ctx context.Context, id string) (job.Job, error) {
	if !events.ValidID(id) {
		return job.Job{}, job.Errorf(job.BG_E_NOT_FOUND, "job %q not found", id)
	}
	last, err := r.Store.LastSeq(ctx, events.JobSubject(id))
	if err != nil {
		return job.Job{}, fmt.Errorf("jobstore: load %s: %w", id, err)
	}
	return r.LoadAtLeast(ctx, id, last)
}

// ErrStale is wrapped by the error of a load that did not reach the
// sequence its caller knows exists.
var ErrStale = errors.New("jobstore: the event log read stayed behind a known sequence")

// DefaultStaleWait bounds how long a load waits for a lagging replica.
const DefaultStaleWait = 10 * time.Second

// refreshAtLeast refreshes j until its version is at least seq, retrying
// reads that lag behind with a short backoff.
func (r *Repo) refreshAtLeast(ctx context.Context, j *job.Job, id string, seq uint64) error {
	wait := r.StaleWait
	if wait <= 0 {
		wait = DefaultStaleWait
	}
	deadline := time.Now().Add(wait)
	for pause := 2 * time.Millisecond; ; pause = min(2*pause, 200*time.Millisecond) {
		if err := r.Refresh(ctx, j, id); err != nil {
			return err
		}
		if j.Version >= seq {
			if !j.Exists() {
				return job.Errorf(job.BG_E_NOT_FOUND, "job %s not found", id)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jobstore: load %s: at sequence %d, want %d: %w", id, j.Version, seq, ErrStale)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("jobstore: load %s: at sequence %d, want %d: %w", id, j.Version, seq, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// fromSnapshot loads job id from its snapshot and the events after it. ok
// is false when there is no usable snapshot: then j is zero and the caller
// replays the job from the start. A snapshot is used only when its sequence
// is an event of this job in this log, which one read shows: the events
// from that sequence on (not after it), the first of which must be the one
// at the snapshot's sequence. So a snapshot ahead of the log (a log
// restored from an older backup, a replica that lags, a purged job) is
// never used. (One made from another copy of the log would be, should its
// sequence happen to be an event of this job here: keep snapshots with
// their log, and rebuild them when the log is restored.)
func (r *Repo) fromSnapshot(ctx context.Context, id string) (j job.Job, ok bool, err error) {
	if r.Snapshots == nil {
		return job.Job{}, false, nil
	}
	unusable := func(format string, args ...any) (job.Job, bool, error) {
		if r.SnapshotUnusable != nil {
			r.SnapshotUnusable(id, fmt.Errorf("%w: job %s: "+format, append([]any{ErrSnapshotUnusable, id}, args...)...))
		}
		return job.Job{}, false, nil
	}
	snap, seq, ok, err := r.Snapshots.Snapshot(ctx, id)
	switch {
	case err != nil:
		if ctx.Err() != nil {
			return job.Job{}, false, fmt.Errorf("jobstore: load %s: %w", id, ctx.Err())
		}
		return unusable("%w", err)
	case !ok:
		return job.Job{}, false, nil
	case seq == 0 || snap.Version != seq:
		return unusable("sequence %d, state version %d", seq, snap.Version)
	case snap.ID != id:
		return unusable("state of job %q", snap.ID)
	}
	evs, err := r.Store.Load(ctx, events.JobSubject(id), seq-1)
	if err != nil {
		return job.Job{}, false, fmt.Errorf("jobstore: load %s: %w", id, err)
	}
	if len(evs) == 0 || evs[0].Seq != seq {
		return unusable("sequence %d is not one of its events in the log", seq)
	}
	j = snap.Clone()
	for i := range evs[1:] {
		if err := job.Evolve(&j, &evs[1+i]); err != nil {
			return job.Job{}, false, err
		}
	}
	return j, true, nil
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
		// Someone else wrote first: catch up (at least to where the
		// conflict says the job is) and decide again.
		var ce *events.ConflictError
		errors.As(err, &ce)
		if ce != nil && ce.Actual > cur.Version {
			err = r.refreshAtLeast(ctx, &cur, id, ce.Actual)
		} else {
			err = r.Refresh(ctx, &cur, id)
		}
		if err != nil {
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
