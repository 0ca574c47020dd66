package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// JobsBucket is the KV bucket of the jobs read model: one key per job ID
// holding the job's state (its Version is the last applied sequence), plus
// the projector's position under positionKey.
const JobsBucket = "ferry_jobs"

// ProjectionName is the durable name of the jobs projection. A new version of
// the projection gets a new name and bucket.
const ProjectionName = "jobs-v1"

const positionKey = "_position"

// EnsureJobsBucket creates or updates the read-model bucket.
func EnsureJobsBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	if replicas < 1 {
		replicas = 1
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      JobsBucket,
		Description: "ferry jobs read model (" + ProjectionName + ")",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: ensure bucket %s: %w", JobsBucket, err)
	}
	return kv, nil
}

// Projector keeps the KV read model up to date with the event log. Writes
// are compare-and-set on the key's revision, and each job stores the sequence
// of the last event applied, so several projectors (or a restarted one that
// replays a few events again) never go backwards or apply an event twice.
type Projector struct {
	Store events.Store
	KV    jetstream.KeyValue
	Log   zerolog.Logger
	// OnApply, if set, is called after a job's new state is stored.
	OnApply func(j *job.Job, ev *events.Event)

	mu      sync.Mutex
	applied uint64        // highest sequence applied
	waiters chan struct{} // closed and replaced whenever applied advances
}

type cached struct {
	j   job.Job
	rev uint64
}

// Run follows the log from the stored position until ctx ends.
func (p *Projector) Run(ctx context.Context) error {
	pos, err := p.position(ctx)
	if err != nil {
		return err
	}
	p.advance(pos)
	cache := map[string]*cached{}
	lastSaved, lastSaveAt := pos, time.Now()
	// The whole log, skipping what is not a job's: the server matches one
	// wildcard token far faster than ferry.evt.job.> across many job
	// subjects (a rebuild is about 2x faster; BENCHMARKS.md).
	err = p.Store.Subscribe(ctx, events.SubjectPrefix+">", pos, func(ev events.Event) error {
		if ev.Kind == events.KindJob {
			if err := p.apply(ctx, cache, &ev); err != nil {
				return err
			}
		}
		p.advance(ev.Seq)
		if ev.Seq-lastSaved >= 256 || time.Since(lastSaveAt) >= time.Second {
			if err := p.savePosition(ctx, ev.Seq); err != nil {
				return err
			}
			lastSaved, lastSaveAt = ev.Seq, time.Now()
		}
		if len(cache) > 10000 {
			clear(cache)
		}
		return nil
	})
	if ctx.Err() != nil {
		// Keep the position for a fast restart; a stale one is only slower.
		p.mu.Lock()
		applied := p.applied
		p.mu.Unlock()
		saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = p.savePosition(saveCtx, applied)
		cancel()
		return ctx.Err()
	}
	return fmt.Errorf("coordinator: projector: %w", err)
}

func (p *Projector) apply(ctx context.Context, cache map[string]*cached, ev *events.Event) error {
	id := ev.AggregateID
	for range 5 {
		c, ok := cache[id]
		if !ok {
			c = &cached{}
			e, err := p.KV.Get(ctx, id)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				return fmt.Errorf("coordinator: read model get %s: %w", id, err)
			default:
				if err := json.Unmarshal(e.Value(), &c.j); err != nil {
					return fmt.Errorf("coordinator: read model decode %s: %w", id, err)
				}
				c.rev = e.Revision()
			}
			cache[id] = c
		}
		if ev.Seq <= c.j.Version {
			return nil // applied before
		}
		next := c.j.Clone()
		if err := job.Evolve(&next, ev); err != nil {
			// An event this version cannot apply is a bug or a newer writer;
			// stop rather than publish a wrong read model.
			return fmt.Errorf("coordinator: project %s: %w", id, err)
		}
		val, err := json.Marshal(&next)
		if err != nil {
			return err
		}
		var rev uint64
		if c.rev == 0 {
			rev, err = p.KV.Create(ctx, id, val)
		} else {
			rev, err = p.KV.Update(ctx, id, val, c.rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			delete(cache, id) // someone else wrote it: re-read and re-check
			continue
		}
		if err != nil {
			return fmt.Errorf("coordinator: read model put %s: %w", id, err)
		}
		c.j, c.rev = next, rev
		if p.OnApply != nil {
			p.OnApply(&c.j, ev)
		}
		return nil
	}
	return fmt.Errorf("coordinator: read model %s: too many concurrent updates", id)
}

func (p *Projector) position(ctx context.Context) (uint64, error) {
	e, err := p.KV.Get(ctx, positionKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("coordinator: projector position: %w", err)
	}
	return strconv.ParseUint(string(e.Value()), 10, 64)
}

func (p *Projector) savePosition(ctx context.Context, seq uint64) error {
	if _, err := p.KV.Put(ctx, positionKey, []byte(strconv.FormatUint(seq, 10))); err != nil {
		return fmt.Errorf("coordinator: save projector position: %w", err)
	}
	return nil
}

func (p *Projector) advance(seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq > p.applied {
		p.applied = seq
	}
	if p.waiters != nil {
		close(p.waiters)
		p.waiters = nil
	}
}

// WaitFor blocks until the projector has applied sequence seq (read your
// writes), or ctx ends.
func (p *Projector) WaitFor(ctx context.Context, seq uint64) error {
	for {
		p.mu.Lock()
		if p.applied >= seq {
			p.mu.Unlock()
			return nil
		}
		if p.waiters == nil {
			p.waiters = make(chan struct{})
		}
		ch := p.waiters
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ReadModel answers queries from the KV bucket.
type ReadModel struct{ KV jetstream.KeyValue }

// Get returns the projected state of one job.
func (m ReadModel) Get(ctx context.Context, id string) (job.Job, bool, error) {
	if !events.ValidID(id) || strings.HasPrefix(id, "_") {
		return job.Job{}, false, nil
	}
	e, err := m.KV.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return job.Job{}, false, nil
	}
	if err != nil {
		return job.Job{}, false, fmt.Errorf("coordinator: read model get %s: %w", id, err)
	}
	var j job.Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		return job.Job{}, false, fmt.Errorf("coordinator: read model decode %s: %w", id, err)
	}
	return j, true, nil
}

// Snapshot is the read model as a jobstore.Snapshots source: a job's
// projected state is the replay of its events up to its version, so a
// writer loads only the events after it.
func (m ReadModel) Snapshot(ctx context.Context, id string) (job.Job, uint64, bool, error) {
	j, ok, err := m.Get(ctx, id)
	if err != nil || !ok {
		return job.Job{}, 0, false, err
	}
	return j, j.Version, true, nil
}

// List returns every job for which keep returns true, newest first.
func (m ReadModel) List(ctx context.Context, keep func(*job.Job) bool) ([]job.Job, error) {
	lister, err := m.KV.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return []job.Job{}, nil
		}
		return nil, fmt.Errorf("coordinator: list jobs: %w", err)
	}
	defer lister.Stop()
	out := []job.Job{}
	for key := range lister.Keys() {
		if strings.HasPrefix(key, "_") {
			continue
		}
		j, ok, err := m.Get(ctx, key)
		if err != nil {
			return nil, err
		}
		if ok && (keep == nil || keep(&j)) {
			out = append(out, j)
		}
	}
	sort.Slice(out, func(a, b int) bool {
		if !out[a].Times.Creation.Equal(out[b].Times.Creation) {
			return out[a].Times.Creation.After(out[b].Times.Creation)
		}
		return out[a].ID > out[b].ID
	})
	return out, nil
}
