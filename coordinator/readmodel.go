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
// the projector's position under positionKey. It is the bucket of the
// model's first generation; `ferry replay rebuild` builds later generations
// in ferry_jobs_<n> and the pointer in ProjectionsBucket says which one
// readers use (see projections.go).
const JobsBucket = "ferry_jobs"

// ProjectionName is the durable name of the jobs projection. A new version of
// the projection gets a new name and bucket.
const ProjectionName = "jobs-v1"

const positionKey = "_position"

// EnsureJobsBucket creates or updates the read-model bucket.
func EnsureJobsBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	return ensureJobsBucketNamed(ctx, js, JobsBucket, 1, replicas)
}

// ensureJobsBucketNamed creates or updates the bucket of one generation of
// the jobs read model.
func ensureJobsBucketNamed(ctx context.Context, js jetstream.JetStream, bucket string, generation uint64, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jobsBucketConfig(bucket, generation, replicas))
	if err != nil {
		return nil, fmt.Errorf("coordinator: ensure bucket %s: %w", bucket, err)
	}
	return kv, nil
}

func jobsBucketConfig(bucket string, generation uint64, replicas int) jetstream.KeyValueConfig {
	if replicas < 1 {
		replicas = 1
	}
	desc := "ferry jobs read model (" + ProjectionName + ")"
	if generation > 1 {
		desc = fmt.Sprintf("ferry jobs read model (%s, generation %d)", ProjectionName, generation)
	}
	return jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: desc,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}
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

// Applied returns the highest log sequence the projector has applied (or
// skipped as not its own): the read model includes every job event up to it.
func (p *Projector) Applied() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied
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
		applied, next := p.progress()
		if applied >= seq {
			return nil
		}
		select {
		case <-next:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// progress returns the sequence applied so far and a channel that closes
// when it advances.
func (p *Projector) progress() (uint64, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waiters == nil {
		p.waiters = make(chan struct{})
	}
	return p.applied, p.waiters
}

// ReadModel answers queries from the KV bucket. ReadModel{KV: kv} reads
// one bucket; the coordinator's own (Service.ReadModel) follows the jobs
// projection from generation to generation: a rebuild switches it to a new
// bucket between two queries, and the old bucket is not given up before the
// queries that were using it have ended.
type ReadModel struct {
	KV jetstream.KeyValue

	src *modelSource // nil: KV
}

// Generation returns the generation of the jobs projection the model reads
// and its bucket (1 and KV's bucket for a fixed ReadModel{KV: kv}).
func (m ReadModel) Generation() (uint64, string) {
	if m.src == nil {
		if m.KV == nil {
			return 0, ""
		}
		return 1, m.KV.Bucket()
	}
	g, release := m.src.acquire()
	defer release()
	return g.gen, g.bucket
}

// kv returns the bucket to read and a function to call when done with it.
func (m ReadModel) kv() (jetstream.KeyValue, func()) {
	if m.src == nil {
		return m.KV, func() {}
	}
	g, release := m.src.acquire()
	return g.kv, release
}

// Get returns the projected state of one job.
func (m ReadModel) Get(ctx context.Context, id string) (job.Job, bool, error) {
	kv, release := m.kv()
	defer release()
	return getJob(ctx, kv, id)
}

func getJob(ctx context.Context, kv jetstream.KeyValue, id string) (job.Job, bool, error) {
	if !events.ValidID(id) || strings.HasPrefix(id, "_") {
		return job.Job{}, false, nil
	}
	e, err := kv.Get(ctx, id)
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
	kv, release := m.kv()
	defer release()
	lister, err := kv.ListKeys(ctx)
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
		j, ok, err := getJob(ctx, kv, key)
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

// modelSource is the generation of the read model that queries use now. A
// switch makes a new generation current; the old one is retired, and its
// drained channel closes once the last query that acquired it released it.
type modelSource struct {
	mu  sync.Mutex
	cur *modelGen
}

type modelGen struct {
	kv      jetstream.KeyValue
	gen     uint64
	bucket  string
	users   int  // queries using it (guarded by modelSource.mu)
	retired bool // no longer current
	drained chan struct{}
}

func newModelSource(kv jetstream.KeyValue, gen uint64) *modelSource {
	return &modelSource{cur: &modelGen{kv: kv, gen: gen, bucket: kv.Bucket(), drained: make(chan struct{})}}
}

func (s *modelSource) acquire() (*modelGen, func()) {
	s.mu.Lock()
	g := s.cur
	g.users++
	s.mu.Unlock()
	var once sync.Once
	return g, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			g.users--
			if g.retired && g.users == 0 {
				close(g.drained)
			}
		})
	}
}

// current returns the current generation without acquiring it.
func (s *modelSource) current() *modelGen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// swap makes kv (generation gen) current and returns the generation it
// replaces; wait on its drained channel before giving its bucket up.
func (s *modelSource) swap(kv jetstream.KeyValue, gen uint64) *modelGen {
	next := &modelGen{kv: kv, gen: gen, bucket: kv.Bucket(), drained: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur
	s.cur = next
	old.retired = true
	if old.users == 0 {
		close(old.drained)
	}
	return old
}
