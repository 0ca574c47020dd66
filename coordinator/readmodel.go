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
	"github.com/nats-io/nats.go"
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
	// OnApply, if set, is called after a job's new state is stored by Run
	// (not by Backfill, which stores states, not events).
	OnApply func(j *job.Job, ev *events.Event)
	// JS, if set, is the JetStream context of KV: Backfill then pipelines
	// its writes (asynchronous publishes that carry the expected revision)
	// instead of waiting for each one.
	JS jetstream.JetStream
	// BackfillChunk is how many jobs Backfill folds in memory before it
	// writes them (0: defaultBackfillChunk).
	BackfillChunk int

	mu      sync.Mutex
	applied uint64        // highest sequence applied
	waiters chan struct{} // closed and replaced whenever applied advances
}

type cached struct {
	j     job.Job
	rev   uint64 // revision of the stored entry, 0: none
	dirty bool   // j is ahead of the stored entry (Backfill)
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
			var err error
			if c, err = p.load(ctx, id); err != nil {
				return err
			}
			cache[id] = c
		}
		if ev.Seq <= c.j.Version {
			return nil // applied before
		}
		next := c.j.Clone()
		if err := evolve(&next, ev); err != nil {
			return err
		}
		rev, err := p.put(ctx, id, &next, c.rev)
		if isRevisionConflict(err) {
			delete(cache, id) // someone else wrote it: re-read and re-check
			continue
		}
		if err != nil {
			return err
		}
		c.j, c.rev = next, rev
		if p.OnApply != nil {
			p.OnApply(&c.j, ev)
		}
		return nil
	}
	return fmt.Errorf("coordinator: read model %s: too many concurrent updates", id)
}

// evolve applies one job event to a state.
func evolve(j *job.Job, ev *events.Event) error {
	if err := job.Evolve(j, ev); err != nil {
		// An event this version cannot apply is a bug or a newer writer;
		// stop rather than publish a wrong read model.
		return fmt.Errorf("coordinator: project %s: %w", ev.AggregateID, err)
	}
	return nil
}

// load reads a job's stored state and revision (none: the zero job at
// revision 0).
func (p *Projector) load(ctx context.Context, id string) (*cached, error) {
	c := &cached{}
	e, err := p.KV.Get(ctx, id)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return nil, fmt.Errorf("coordinator: read model get %s: %w", id, err)
	default:
		if err := json.Unmarshal(e.Value(), &c.j); err != nil {
			return nil, fmt.Errorf("coordinator: read model decode %s: %w", id, err)
		}
		c.rev = e.Revision()
	}
	return c, nil
}

// put stores j over revision rev (0: the key must not exist) and returns
// the new revision. A revision conflict is returned as the KV reports it
// (isRevisionConflict).
func (p *Projector) put(ctx context.Context, id string, j *job.Job, rev uint64) (uint64, error) {
	val, err := json.Marshal(j)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		rev, err = p.KV.Create(ctx, id, val)
	} else {
		rev, err = p.KV.Update(ctx, id, val, rev)
	}
	if err != nil && !isRevisionConflict(err) {
		return 0, fmt.Errorf("coordinator: read model put %s: %w", id, err)
	}
	return rev, err
}

// isRevisionConflict reports whether a compare-and-set write failed because
// the key is not at the expected revision.
func isRevisionConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// --- backfill -------------------------------------------------------------------

const (
	// defaultBackfillChunk bounds the jobs Backfill holds unwritten.
	defaultBackfillChunk = 4096
	// backfillCache bounds the written states Backfill keeps for the
	// jobs' later events; past it they are dropped (and read back from
	// the bucket if the job has more events).
	backfillCache = 16384
	// backfillInFlight bounds the pipelined writes awaiting their
	// acknowledgement.
	backfillInFlight = 256
)

// BackfillStats says what a Backfill did.
type BackfillStats struct {
	Events  int // job events folded
	Created int // of which job creations
	Writes  int // job entries written
}

// errBackfilled ends Backfill's subscription at its target.
var errBackfilled = errors.New("backfilled")

// Backfill brings the bucket from its stored position up to sequence to
// (the log's last sequence, typically, when a new generation is built),
// writing each job's state once rather than once per event: it folds the
// events into per-job states in memory with the projector's evolve, and
// each time BackfillChunk jobs are ahead of the bucket (and at to) it
// writes them and saves the position. Every write is compare-and-set on
// the revision it read or wrote, so a projector running on the same bucket
// meanwhile is never overwritten with an older state: if it is ahead, its
// entry is kept and the fold goes on from it. Memory stays bounded: a job
// written and dropped from the cache that has more events is read back
// (and made again from its events if that read was stale).
// After Backfill, Run continues from to. progress, if set, is called with
// the position after each chunk.
func (p *Projector) Backfill(ctx context.Context, to uint64, progress func(applied uint64)) (BackfillStats, error) {
	var st BackfillStats
	pos, err := p.position(ctx)
	if err != nil {
		return st, err
	}
	p.advance(pos)
	if pos >= to {
		return st, nil
	}
	chunk := p.BackfillChunk
	if chunk <= 0 {
		chunk = defaultBackfillChunk
	}
	cache := map[string]*cached{}
	var dirty []string
	last := pos // every event up to last is folded
	flush := func() error {
		n, err := p.writeBack(ctx, cache, dirty, last)
		st.Writes += n
		if err != nil {
			return err
		}
		dirty = dirty[:0]
		if err := p.savePosition(ctx, last); err != nil {
			return err
		}
		p.advance(last)
		if progress != nil {
			progress(last)
		}
		if len(cache) > backfillCache {
			clear(cache) // every state in it is written
		}
		return nil
	}
	err = p.Store.Subscribe(ctx, events.SubjectPrefix+">", pos, func(ev events.Event) error {
		if ev.Seq > to {
			return errBackfilled
		}
		if ev.Kind == events.KindJob {
			id := ev.AggregateID
			c, ok := cache[id]
			switch {
			case ok:
			case ev.Type == events.TypeJobCreated:
				// A job's first event: the bucket has no entry for it
				// (unless a projector running meanwhile wrote one,
				// which the write's revision check finds).
				c = &cached{}
				cache[id] = c
			default:
				if c, err = p.load(ctx, id); err != nil {
					return err
				}
				cache[id] = c
			}
			if ev.Seq > c.j.Version {
				if err := evolve(&c.j, &ev); err != nil {
					return err
				}
				st.Events++
				if ev.Type == events.TypeJobCreated {
					st.Created++
				}
				if !c.dirty {
					c.dirty = true
					dirty = append(dirty, id)
				}
			}
		}
		last = ev.Seq
		if len(dirty) >= chunk {
			if err := flush(); err != nil {
				return err
			}
		}
		if ev.Seq >= to {
			return errBackfilled
		}
		return nil
	})
	if !errors.Is(err, errBackfilled) {
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		return st, fmt.Errorf("coordinator: backfill: %w", err)
	}
	last = to // the log has no gaps (DenyDelete): nothing up to to is missing
	if err := flush(); err != nil {
		return st, fmt.Errorf("coordinator: backfill: %w", err)
	}
	return st, nil
}

// writeBack stores the states of the dirty jobs ids, which include every
// event up to upTo, and returns how many it wrote. With JS the writes are
// pipelined; a write that finds another revision than the one expected is
// done again synchronously (reconcile).
func (p *Projector) writeBack(ctx context.Context, cache map[string]*cached, ids []string, upTo uint64) (int, error) {
	var (
		n         int
		conflicts []string
	)
	if p.JS == nil {
		for _, id := range ids {
			c := cache[id]
			rev, err := p.put(ctx, id, &c.j, c.rev)
			switch {
			case isRevisionConflict(err):
				conflicts = append(conflicts, id)
			case err != nil:
				return n, err
			default:
				c.rev, c.dirty = rev, false
				n++
			}
		}
	} else {
		var err error
		if n, conflicts, err = p.publishAll(ctx, cache, ids); err != nil {
			return n, err
		}
	}
	for _, id := range conflicts {
		wrote, err := p.reconcile(ctx, cache[id], id, upTo)
		if err != nil {
			return n, err
		}
		if wrote {
			n++
		}
	}
	return n, nil
}

// publishAll writes the states of ids with asynchronous publishes, at most
// backfillInFlight awaiting their acknowledgement, each expecting the key
// at the revision the job's state was read or written at. It returns how
// many were written and the jobs whose write found another revision.
func (p *Projector) publishAll(ctx context.Context, cache map[string]*cached, ids []string) (int, []string, error) {
	type pending struct {
		id  string
		ack jetstream.PubAckFuture
	}
	var (
		n         int
		conflicts []string
		window    []pending
	)
	pre := "$KV." + p.KV.Bucket() + "."
	stream := "KV_" + p.KV.Bucket()
	wait := func(w pending) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ack := <-w.ack.Ok():
			c := cache[w.id]
			c.rev, c.dirty = ack.Sequence, false
			n++
		case err := <-w.ack.Err():
			if !isRevisionConflict(err) {
				return fmt.Errorf("coordinator: read model put %s: %w", w.id, err)
			}
			conflicts = append(conflicts, w.id)
		}
		return nil
	}
	for _, id := range ids {
		if len(window) == backfillInFlight {
			if err := wait(window[0]); err != nil {
				return n, conflicts, err
			}
			window = window[1:]
		}
		c := cache[id]
		val, err := json.Marshal(&c.j)
		if err != nil {
			return n, conflicts, err
		}
		ack, err := p.JS.PublishMsgAsync(&nats.Msg{Subject: pre + id, Data: val},
			jetstream.WithExpectStream(stream), jetstream.WithExpectLastSequencePerSubject(c.rev))
		if err != nil {
			return n, conflicts, fmt.Errorf("coordinator: read model put %s: %w", id, err)
		}
		window = append(window, pending{id, ack})
	}
	for _, w := range window {
		if err := wait(w); err != nil {
			return n, conflicts, err
		}
	}
	return n, conflicts, nil
}

// reconcile stores a job's state after a write found its key at another
// revision than expected: someone else wrote the entry, or the state the
// fold started from was read from a replica that lagged. The state is
// therefore made again from the job's own events up to the fold's position
// upTo, then written over the entry, unless the entry includes those events
// already (its version is not lower): then it becomes the fold's state. It
// reports whether it wrote.
func (p *Projector) reconcile(ctx context.Context, c *cached, id string, upTo uint64) (bool, error) {
	evs, err := p.Store.Load(ctx, events.JobSubject(id), 0)
	if err != nil {
		return false, fmt.Errorf("coordinator: backfill: load the events of %s: %w", id, err)
	}
	var j job.Job
	for i := range evs {
		if evs[i].Seq > upTo {
			break
		}
		if err := evolve(&j, &evs[i]); err != nil {
			return false, err
		}
	}
	for range 5 {
		stored, err := p.load(ctx, id)
		if err != nil {
			return false, err
		}
		if stored.j.Version >= j.Version {
			*c = *stored
			return false, nil
		}
		rev, err := p.put(ctx, id, &j, stored.rev)
		if isRevisionConflict(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		c.j, c.rev, c.dirty = j, rev, false
		return true, nil
	}
	return false, fmt.Errorf("coordinator: read model %s: too many concurrent updates", id)
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
