package jobstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// laggingStore answers Load like a replica that is behind the stream
// leader: the next `stale` loads see nothing after sequence horizon, while
// Append and LastSeq are the leader's truth.
type laggingStore struct {
	events.Store
	mu      sync.Mutex
	horizon uint64
	stale   int
	loads   int
}

func (s *laggingStore) lag(horizon uint64, loads int) {
	s.mu.Lock()
	s.horizon, s.stale = horizon, loads
	s.mu.Unlock()
}

func (s *laggingStore) Load(ctx context.Context, subject string, after uint64) ([]events.Event, error) {
	evs, err := s.Store.Load(ctx, subject, after)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	if err != nil || s.stale == 0 {
		return evs, err
	}
	s.stale--
	var seen []events.Event
	for _, ev := range evs {
		if ev.Seq <= s.horizon {
			seen = append(seen, ev)
		}
	}
	return seen, nil
}

// TestLoadWaitsForLaggingReplica: reads that lag behind what a caller knows
// exists — a job created a moment ago, a dispatch's sequence, the sequence a
// conflict reported — are retried until they have caught up, instead of
// answering BG_E_NOT_FOUND or deciding on an old state.
func TestLoadWaitsForLaggingReplica(t *testing.T) {
	ctx := context.Background()
	store := &laggingStore{Store: events.NewMemoryStore()}
	r := &jobstore.Repo{Store: store}
	create(t, r, "lag1", file)

	// Just created, and the replica has none of it yet.
	store.lag(0, 3)
	j, err := r.Load(ctx, "lag1")
	if err != nil {
		t.Fatalf("load of a job the replica has not seen yet: %v", err)
	}
	if !j.Exists() || j.ID != "lag1" {
		t.Fatalf("loaded %+v", j)
	}

	// A dispatch at the job's latest sequence; the replica is one behind.
	res, err := r.Execute(ctx, "lag1", job.Resume{}, events.Meta{Actor: "alice"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dispatchSeq := res.Job.Version
	store.lag(dispatchSeq-1, 2)
	j, err = r.LoadAtLeast(ctx, "lag1", dispatchSeq)
	if err != nil {
		t.Fatal(err)
	}
	if j.Version != dispatchSeq || j.State != job.Queued {
		t.Fatalf("LoadAtLeast(%d) = version %d state %s", dispatchSeq, j.Version, j.State)
	}

	// An unknown job is still not found, at once.
	if _, err := r.Load(ctx, "nosuchjob"); job.CodeOf(err) != job.BG_E_NOT_FOUND {
		t.Fatalf("unknown job: %v", err)
	}

	// A conflict says where the job is; the reload catches up to it even
	// when the first reads lag, and the command is decided on that state.
	var stale job.Job = j.Clone()
	if _, err := r.Execute(ctx, "lag1", job.Suspend{}, events.Meta{Actor: "alice"}, nil); err != nil {
		t.Fatal(err)
	}
	store.lag(stale.Version, 2*jobstore.DefaultMaxAttempts)
	if _, err := r.Execute(ctx, "lag1", job.Cancel{}, events.Meta{Actor: "alice"}, &stale); err != nil {
		t.Fatalf("cancel on a stale view with lagging reloads: %v", err)
	}
	if stale.State != job.Cancelled {
		t.Fatalf("state after cancel: %s", stale.State)
	}
}

// TestLoadAtLeastGivesUp: a read that never reaches the known sequence is
// an error wrapping ErrStale after StaleWait, not an old state.
func TestLoadAtLeastGivesUp(t *testing.T) {
	ctx := context.Background()
	store := &laggingStore{Store: events.NewMemoryStore()}
	r := &jobstore.Repo{Store: store, StaleWait: 50 * time.Millisecond}
	create(t, r, "lag2", file)
	last, err := store.LastSeq(ctx, events.JobSubject("lag2"))
	if err != nil {
		t.Fatal(err)
	}
	store.lag(last-1, 1<<30)
	_, err = r.LoadAtLeast(ctx, "lag2", last)
	if !errors.Is(err, jobstore.ErrStale) {
		t.Fatalf("err = %v, want ErrStale", err)
	}
}

// TestLoadLatestReadsToTheLeadersEnd: a refusal is decided on the job as
// far as the log really goes, not on a lagging replica's view (certvault
// re-reads this way before it denies a release).
func TestLoadLatestReadsToTheLeadersEnd(t *testing.T) {
	ctx := context.Background()
	store := &laggingStore{Store: events.NewMemoryStore()}
	r := &jobstore.Repo{Store: store}
	create(t, r, "lag3", file)
	res, err := r.Execute(ctx, "lag3", job.Resume{}, events.Meta{Actor: "alice"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	store.lag(res.Job.Version-1, 2)
	if j, err := r.Load(ctx, "lag3"); err != nil || j.State == job.Queued {
		t.Fatalf("the lagging read should show the old state: %v %s", err, j.State)
	}
	store.lag(res.Job.Version-1, 2)
	j, err := r.LoadLatest(ctx, "lag3")
	if err != nil || j.Version != res.Job.Version || j.State != job.Queued {
		t.Fatalf("LoadLatest = version %d state %s, %v; want %d QUEUED", j.Version, j.State, err, res.Job.Version)
	}
	if _, err := r.LoadLatest(ctx, "nosuchjob"); job.CodeOf(err) != job.BG_E_NOT_FOUND {
		t.Fatalf("unknown job: %v", err)
	}
}
