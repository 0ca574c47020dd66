package coordinator

// Projections that can be verified and rebuilt.
//
// The jobs read model lives in generations, each in a KV bucket of its own:
// generation 1 is ferry_jobs (every installation has it, so nothing needs
// migrating), generation n ≥ 2 is ferry_jobs_<n>. The pointer — the key
// "jobs" in the small KV bucket ferry_projections — names the generation
// readers use; no pointer means generation 1.
//
// A rebuild (RebuildProjection) replays the whole log into the next
// generation's bucket (Projector.Backfill: one write per job, not per
// event) while the current one keeps serving, catches up with
// the end of the log, then moves the pointer. Every coordinator watches the
// pointer: it starts a projector on the new bucket, lets it catch up with its
// own projector on the old one, then — with its projector stopped for the
// moment — makes the new bucket the one its queries read and its projector
// writes. Queries therefore never see a half-built model, nor one older than
// the one they saw a moment before. The old bucket is deleted once no
// coordinator reads it.
//
// Which coordinators read a bucket is known without any new writes: each
// holds a reader lease on the bucket it reads, a pull consumer named
// ferry_reader_<instance> on the bucket's stream that the server deletes by
// itself when the coordinator stops renewing it (InactiveThreshold). A
// coordinator takes its lease on the new bucket before it gives up the old
// one, and only once the queries that were using the old one have ended.
//
// One verify or rebuild runs at a time per projection: the lock is the key
// "lock.jobs" in ferry_projections, with a TTL that its holder renews.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ProjectionsBucket is the KV bucket of the projection pointers (which
// generation of each projection readers use) and the verify/rebuild locks.
const ProjectionsBucket = "ferry_projections"

// JobsProjection is the name of the jobs read model in the API, the CLI and
// the pointer bucket. Its rules are those of ProjectionName.
const JobsProjection = "jobs"

// Projections lists the projections that can be verified and rebuilt. The
// jobs read model is the only one: ferry_agents is written by the agents
// themselves (liveness with TTLs, not derived from the log), ferry_certs and
// ferry_settings are state of their own whose events are audit records, and
// the notifier's consumer produces deliveries, not state.
var Projections = []string{JobsProjection}

// JobsBucketFor is the bucket of generation gen of the jobs read model.
func JobsBucketFor(gen uint64) string {
	if gen <= 1 {
		return JobsBucket
	}
	return JobsBucket + "_" + strconv.FormatUint(gen, 10)
}

// jobsBucketRE matches every bucket the jobs projection makes: its
// generations and verify's scratch buckets.
var jobsBucketRE = regexp.MustCompile(`^ferry_jobs(_[0-9]+|_verify_[0-9a-f]+)?$`)

const (
	// readerPrefix starts the names of reader leases.
	readerPrefix = "ferry_reader_"
	// readerTTL is how long a reader lease outlives its coordinator;
	// readerRenew is how often a coordinator renews it and re-reads the
	// pointer (in case it missed a watch update).
	readerTTL   = 30 * time.Second
	readerRenew = 10 * time.Second
	// lockTTL is how long a lock outlives its holder; lockRenew how often
	// the holder renews it.
	lockTTL   = 30 * time.Second
	lockRenew = 10 * time.Second
	// progressEvery paces progress reports of long operations.
	progressEvery = 500 * time.Millisecond
	// DefaultSwitchTimeout bounds how long a rebuild waits for every
	// coordinator to leave the old generation before it deletes it.
	DefaultSwitchTimeout = 2 * time.Minute
	// catchUpTimeout bounds how long a coordinator's new projector may
	// take to catch up with its current one during a switch.
	catchUpTimeout = 2 * time.Minute
)

// ProjectionPointer says which generation of a projection readers use. It
// is the value of the projection's key in ProjectionsBucket.
type ProjectionPointer struct {
	Projection string `json:"projection"`
	// Version is the durable name of the rules it was built with.
	Version    string `json:"version"`
	Generation uint64 `json:"generation"`
	Bucket     string `json:"bucket"`
	// Position is the log sequence the generation had applied when it
	// became current (0 for generation 1, which was never switched to).
	Position uint64    `json:"position,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	By       string    `json:"by,omitempty"`
}

// firstGeneration is the pointer of an installation that never rebuilt.
func firstGeneration() ProjectionPointer {
	return ProjectionPointer{Projection: JobsProjection, Version: ProjectionName, Generation: 1, Bucket: JobsBucket}
}

// EnsureProjectionsBucket creates or updates the pointer bucket. Keys may
// carry a TTL (the locks).
func EnsureProjectionsBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         ProjectionsBucket,
		Description:    "ferry projections: which generation of each read model readers use; verify/rebuild locks",
		History:        1,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: ensure bucket %s: %w", ProjectionsBucket, err)
	}
	return kv, nil
}

// readPointer returns the projection's pointer and its revision (0 when
// there is none: generation 1).
func readPointer(ctx context.Context, kv jetstream.KeyValue, name string) (ProjectionPointer, uint64, error) {
	e, err := kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return firstGeneration(), 0, nil
	}
	if err != nil {
		return ProjectionPointer{}, 0, fmt.Errorf("coordinator: read the pointer of projection %s: %w", name, err)
	}
	p, err := decodePointer(e.Value())
	if err != nil {
		return ProjectionPointer{}, 0, err
	}
	return p, e.Revision(), nil
}

func decodePointer(b []byte) (ProjectionPointer, error) {
	var p ProjectionPointer
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("coordinator: projection pointer: %w", err)
	}
	if p.Generation < 1 || p.Bucket != JobsBucketFor(p.Generation) {
		return p, fmt.Errorf("coordinator: projection pointer names generation %d in bucket %q", p.Generation, p.Bucket)
	}
	return p, nil
}

// writePointer moves the pointer, if it is still at revision rev.
func writePointer(ctx context.Context, kv jetstream.KeyValue, p ProjectionPointer, rev uint64) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if rev == 0 {
		_, err = kv.Create(ctx, p.Projection, b)
	} else {
		_, err = kv.Update(ctx, p.Projection, b, rev)
	}
	if err != nil {
		return fmt.Errorf("coordinator: move the pointer of projection %s to generation %d: %w", p.Projection, p.Generation, err)
	}
	return nil
}

// canonicalProjection accepts a projection's name ("jobs") or the durable
// name of its rules ("jobs-v1").
func canonicalProjection(name string) (string, error) {
	switch name {
	case JobsProjection, ProjectionName:
		return JobsProjection, nil
	}
	return "", &job.Error{Code: withStatus(job.ERROR_NOT_FOUND, http.StatusNotFound),
		Detail: fmt.Sprintf("no projection %q (there is: %s)", name, strings.Join(Projections, ", "))}
}

// newInstanceID names this coordinator process in reader leases and locks:
// host name and a random suffix, in characters consumer names allow.
func newInstanceID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '-'
	}, host)
	if len(host) > 40 {
		host = host[:40]
	}
	if host == "" {
		host = "coordinator"
	}
	return host + "-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:8]
}

// --- reader leases ------------------------------------------------------------

// readerLease says "a coordinator reads this bucket": a pull consumer on the
// bucket's stream, filtered on a key nobody writes, that the server deletes
// readerTTL after the coordinator last renewed it.
type readerLease struct {
	js     jetstream.JetStream
	stream string
	cfg    jetstream.ConsumerConfig
	cons   jetstream.Consumer
}

func openLease(ctx context.Context, js jetstream.JetStream, bucket string, gen uint64, instance string) (*readerLease, error) {
	l := &readerLease{js: js, stream: "KV_" + bucket, cfg: jetstream.ConsumerConfig{
		Name:              readerPrefix + instance,
		Description:       "ferry coordinator " + instance + " reads this bucket",
		FilterSubject:     "$KV." + bucket + "._readers",
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: readerTTL,
		MemoryStorage:     true,
		Metadata:          map[string]string{"ferry_reader": instance, "ferry_generation": strconv.FormatUint(gen, 10)},
	}}
	if err := l.create(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *readerLease) create(ctx context.Context) error {
	cons, err := l.js.CreateOrUpdateConsumer(ctx, l.stream, l.cfg)
	if err != nil {
		return fmt.Errorf("coordinator: reader lease on %s: %w", l.stream, err)
	}
	l.cons = cons
	return nil
}

// renew counts as activity for the server (a pull request) and recreates
// the lease if the server dropped it (the coordinator was cut off longer
// than readerTTL).
func (l *readerLease) renew(ctx context.Context) error {
	if _, err := l.cons.Info(ctx); errors.Is(err, jetstream.ErrConsumerNotFound) {
		if err := l.create(ctx); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("coordinator: reader lease on %s: %w", l.stream, err)
	}
	batch, err := l.cons.FetchNoWait(1)
	if err != nil {
		return fmt.Errorf("coordinator: reader lease on %s: %w", l.stream, err)
	}
	for range batch.Messages() {
	}
	return nil
}

// release gives the lease up. A failure is not reported: the server drops
// the lease after readerTTL anyway.
func (l *readerLease) release(ctx context.Context) {
	_ = l.js.DeleteConsumer(ctx, l.stream, l.cfg.Name)
}

// leaseSet holds a coordinator's reader leases: normally one, two during a
// switch. renew runs on a goroutine of its own, so that a long switch never
// lets the lease on the generation still in use expire.
type leaseSet struct {
	mu sync.Mutex
	m  map[*readerLease]struct{}
}

func (ls *leaseSet) add(l *readerLease) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.m == nil {
		ls.m = map[*readerLease]struct{}{}
	}
	ls.m[l] = struct{}{}
}

func (ls *leaseSet) release(ctx context.Context, l *readerLease) {
	ls.mu.Lock()
	delete(ls.m, l)
	ls.mu.Unlock()
	l.release(ctx)
}

func (ls *leaseSet) all() []*readerLease {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	out := make([]*readerLease, 0, len(ls.m))
	for l := range ls.m {
		out = append(out, l)
	}
	return out
}

// renewLeases renews the leases every readerRenew until ctx ends, then
// releases them.
func (s *Service) renewLeases(ctx context.Context) {
	tick := time.NewTicker(readerRenew)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			for _, l := range s.leases.all() {
				s.leases.release(rctx, l)
			}
			return
		case <-tick.C:
			for _, l := range s.leases.all() {
				if err := l.renew(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn().Err(err).Str("stream", l.stream).Msg("reader lease not renewed")
				}
			}
		}
	}
}

// readersOf lists the coordinators that hold a reader lease on bucket.
func readersOf(ctx context.Context, js jetstream.JetStream, bucket string) ([]string, error) {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("coordinator: readers of %s: %w", bucket, err)
	}
	lister := st.ListConsumers(ctx)
	var out []string
	for info := range lister.Info() {
		if strings.HasPrefix(info.Name, readerPrefix) {
			out = append(out, strings.TrimPrefix(info.Name, readerPrefix))
		}
	}
	if err := lister.Err(); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("coordinator: readers of %s: %w", bucket, err)
	}
	slices.Sort(out)
	return out, nil
}

// --- opening and following the current generation -------------------------------

// openJobsModel opens the generation of the jobs read model the pointer
// names and takes a reader lease on it. The pointer is read again after the
// lease is taken: a rebuild that moved it meanwhile did not see the lease,
// so the generation may be gone; then it starts over with the new one.
func openJobsModel(ctx context.Context, js jetstream.JetStream, projKV jetstream.KeyValue, instance string, warn func(string)) (jetstream.KeyValue, ProjectionPointer, *readerLease, error) {
	var lastErr error
	for range 5 {
		ptr, _, err := readPointer(ctx, projKV, JobsProjection)
		if err != nil {
			return nil, ptr, nil, err
		}
		var kv jetstream.KeyValue
		if ptr.Generation == 1 {
			kv, err = EnsureJobsBucket(ctx, js, 1)
		} else if kv, err = js.KeyValue(ctx, ptr.Bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
			if again, _, rerr := readPointer(ctx, projKV, JobsProjection); rerr == nil && again.Generation != ptr.Generation {
				continue
			}
			// Someone deleted the current generation: start it again
			// from the log, as on a fresh installation.
			warn(fmt.Sprintf("bucket %s of the current read model generation %d is missing; the projector rebuilds it from the log", ptr.Bucket, ptr.Generation))
			kv, err = ensureJobsBucketNamed(ctx, js, ptr.Bucket, ptr.Generation, 1)
		}
		if err != nil {
			return nil, ptr, nil, fmt.Errorf("coordinator: open read model %s: %w", ptr.Bucket, err)
		}
		lease, err := openLease(ctx, js, ptr.Bucket, ptr.Generation, instance)
		if err != nil {
			lastErr = err
			continue
		}
		again, _, err := readPointer(ctx, projKV, JobsProjection)
		if err != nil {
			lease.release(ctx)
			return nil, ptr, nil, err
		}
		if again.Generation == ptr.Generation {
			return kv, ptr, lease, nil
		}
		lease.release(ctx)
	}
	if lastErr != nil {
		return nil, ProjectionPointer{}, nil, fmt.Errorf("coordinator: open read model: %w", lastErr)
	}
	return nil, ProjectionPointer{}, nil, errors.New("coordinator: open read model: the projection pointer kept moving")
}

// followProjection keeps this coordinator on the generation of the jobs
// read model that the pointer names, and its reader leases renewed.
func (s *Service) followProjection(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.renewLeases(ctx) })
	var w jetstream.KeyWatcher
	watch := func() {
		var err error
		if w, err = s.projKV.Watch(ctx, JobsProjection); err != nil {
			w = nil
			s.log.Warn().Err(err).Msg("cannot watch the projection pointer; reading it every few seconds")
		}
	}
	watch()
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	tick := time.NewTicker(readerRenew)
	defer tick.Stop()
	for {
		var updates <-chan jetstream.KeyValueEntry
		if w != nil {
			updates = w.Updates()
		}
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-updates:
			if !ok {
				_ = w.Stop()
				w = nil
				continue
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			ptr, err := decodePointer(e.Value())
			if err != nil {
				s.log.Error().Err(err).Msg("ignoring a bad projection pointer")
				continue
			}
			s.follow(ctx, ptr)
		case <-tick.C:
			if w == nil {
				watch()
			}
			ptr, _, err := readPointer(ctx, s.projKV, JobsProjection)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn().Err(err).Msg("projection pointer not read")
				}
				continue
			}
			s.follow(ctx, ptr)
		}
	}
}

func (s *Service) follow(ctx context.Context, ptr ProjectionPointer) {
	if ptr.Generation <= s.models.current().gen {
		return
	}
	if err := s.switchTo(ctx, ptr); err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Uint64("generation", ptr.Generation).Str("bucket", ptr.Bucket).
			Msg("read model not switched to the new generation; trying again in a moment")
	}
}

// handover asks runProjector to move the service's projector and queries
// to a new generation whose projector (temp) caught up with it.
type handover struct {
	kv   jetstream.KeyValue
	gen  uint64
	temp *runningProjector
	old  *modelGen // set when done, unless err
	err  error
	done chan struct{}
}

// switchTo moves this coordinator to generation ptr: a projector on its
// bucket catches up with the current one, then runProjector hands over, the
// queries still on the old generation end, and the lease on it goes.
func (s *Service) switchTo(ctx context.Context, ptr ProjectionPointer) error {
	start := time.Now()
	kv, err := s.js.KeyValue(ctx, ptr.Bucket)
	if err != nil {
		return fmt.Errorf("coordinator: open read model %s: %w", ptr.Bucket, err)
	}
	lease, err := openLease(ctx, s.js, ptr.Bucket, ptr.Generation, s.instance)
	if err != nil {
		return err
	}
	s.leases.add(lease)
	temp := startProjector(ctx, &Projector{Store: s.store, KV: kv, Log: s.log, OnApply: s.onApply})
	fail := func(err error) error {
		temp.halt()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		s.leases.release(rctx, lease)
		cancel()
		return err
	}
	// Catch up with the projector in use (which keeps going), so that the
	// switch never shows queries an older model than the one before.
	cctx, cancel := context.WithTimeout(ctx, catchUpTimeout)
	err = temp.waitApplied(cctx, s.projector.Applied(), nil)
	cancel()
	if err != nil {
		return fail(fmt.Errorf("coordinator: catch up with the read model on %s: %w", ptr.Bucket, err))
	}
	h := &handover{kv: kv, gen: ptr.Generation, temp: temp, done: make(chan struct{})}
	select {
	case s.handover <- h:
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	<-h.done
	if h.err != nil {
		return fail(h.err)
	}
	// Queries that started on the old generation finish there; then it
	// may go.
	select {
	case <-h.old.drained:
	case <-ctx.Done():
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	for _, l := range s.leases.all() {
		if l != lease {
			s.leases.release(rctx, l)
		}
	}
	rcancel()
	s.log.Info().Uint64("generation", ptr.Generation).Str("bucket", ptr.Bucket).Str("previous", h.old.bucket).
		Uint64("applied", s.projector.Applied()).Dur("took", time.Since(start)).Msg("read model switched to a new generation")
	return nil
}

// applyHandover runs on runProjector's goroutine while the service's
// projector is stopped. The new generation first catches up with where the
// stopped projector ended (a few events at most), so that queries never go
// back in time; if it cannot, nothing changes and the switch is tried again
// later.
func (s *Service) applyHandover(ctx context.Context, h *handover) {
	defer close(h.done)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := h.temp.waitApplied(sctx, s.projector.Applied(), nil); err != nil {
		h.temp.halt()
		h.err = fmt.Errorf("coordinator: the new read model did not catch up: %w", err)
		return
	}
	if err := h.temp.stop(sctx); err != nil {
		// The projector starts from an older position and skips what
		// it applied already.
		s.log.Warn().Err(err).Msg("switch: new read model position not saved")
	}
	s.projector.KV = h.kv
	s.projector.advance(h.temp.p.Applied())
	h.old = s.models.swap(h.kv, h.gen)
}

// --- running projectors -----------------------------------------------------------

// runningProjector is a Projector running on a goroutine of its own.
type runningProjector struct {
	p      *Projector
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	once   sync.Once
}

func startProjector(ctx context.Context, p *Projector) *runningProjector {
	ctx, cancel := context.WithCancel(ctx)
	r := &runningProjector{p: p, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = p.Run(ctx)
	}()
	return r
}

// halt ends the run and waits for it.
func (r *runningProjector) halt() {
	r.once.Do(func() {
		r.cancel()
		<-r.done
	})
}

// stop ends the run and stores the position it reached in its bucket.
func (r *runningProjector) stop(ctx context.Context) error {
	r.halt()
	return r.p.savePosition(ctx, r.p.Applied())
}

// waitApplied waits until the projector has applied seq, reporting its
// position every progressEvery if report is set. It fails if the run ends
// first (an event it cannot apply, a bucket it cannot write).
func (r *runningProjector) waitApplied(ctx context.Context, seq uint64, report func(uint64)) error {
	return waitApplied(ctx, r.p, seq, r.done, func() error { return r.err }, report)
}

func waitApplied(ctx context.Context, p *Projector, seq uint64, done <-chan struct{}, why func() error, report func(uint64)) error {
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		applied, next := p.progress()
		if applied >= seq {
			return nil
		}
		select {
		case <-next:
		case <-tick.C:
			if report != nil {
				report(applied)
			}
		case <-done:
			if p.Applied() >= seq {
				return nil
			}
			return fmt.Errorf("projector stopped at sequence %d of %d: %w", p.Applied(), seq, why())
		case <-ctx.Done():
			return fmt.Errorf("projector at sequence %d of %d: %w", applied, seq, ctx.Err())
		}
	}
}

// logEnd is the sequence of the last event in the log.
func (s *Service) logEnd(ctx context.Context) (uint64, error) {
	st, err := s.js.Stream(ctx, events.StreamName)
	if err != nil {
		return 0, fmt.Errorf("coordinator: event log: %w", err)
	}
	return st.CachedInfo().State.LastSeq, nil
}

// --- locks ----------------------------------------------------------------------

// LockInfo says who runs a verify or rebuild.
type LockInfo struct {
	Op          string    `json:"op"`
	Coordinator string    `json:"coordinator"`
	By          string    `json:"by,omitempty"`
	Since       time.Time `json:"since"`
}

type projectionLock struct {
	s   *Service
	key string
	rev uint64
}

func lockKey(name string) string { return "lock." + name }

// withLock runs fn holding the projection's lock; fn's context ends if the
// lock is lost (it could not be renewed for lockTTL).
func (s *Service) withLock(ctx context.Context, name, op, by string, fn func(context.Context) error) error {
	info := LockInfo{Op: op, Coordinator: s.instance, By: by, Since: time.Now().UTC()}
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	key := lockKey(name)
	rev, err := s.projKV.Create(ctx, key, b, jetstream.KeyTTL(lockTTL))
	if errors.Is(err, jetstream.ErrKeyExists) {
		detail := fmt.Sprintf("another verify or rebuild of projection %s is running; try again when it ends", name)
		if e, gerr := s.projKV.Get(ctx, key); gerr == nil {
			var h LockInfo
			if json.Unmarshal(e.Value(), &h) == nil {
				detail = fmt.Sprintf("a %s of projection %s is running on coordinator %s since %s (started by %s); try again when it ends",
					h.Op, name, h.Coordinator, h.Since.Format(time.RFC3339), h.By)
			}
		}
		return &job.Error{Code: withStatus(job.ERROR_SERVICE_UNAVAILABLE, http.StatusConflict), Detail: detail}
	}
	if err != nil {
		return fmt.Errorf("coordinator: lock projection %s: %w", name, err)
	}
	l := &projectionLock{s: s, key: key, rev: rev}
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(lockRenew)
		defer tick.Stop()
		for {
			select {
			case <-lctx.Done():
				return
			case <-tick.C:
				if err := l.renew(lctx, b); err != nil && lctx.Err() == nil {
					cancel(fmt.Errorf("coordinator: lost the lock of projection %s: %w", name, err))
					return
				}
			}
		}
	})
	err = fn(lctx)
	cancel(nil)
	wg.Wait()
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer rcancel()
	if derr := s.projKV.Delete(rctx, key, jetstream.LastRevision(l.rev)); derr != nil {
		s.log.Warn().Err(derr).Str("lock", key).Msg("lock not released; it expires by itself")
	}
	if err != nil && lctx.Err() != nil && ctx.Err() == nil {
		if cause := context.Cause(lctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return errors.Join(err, cause)
		}
	}
	return err
}

// renew writes the lock again with a fresh TTL, only over its own last
// revision.
func (l *projectionLock) renew(ctx context.Context, val []byte) error {
	ack, err := l.s.js.PublishMsg(ctx, &nats.Msg{Subject: "$KV." + ProjectionsBucket + "." + l.key, Data: val},
		jetstream.WithMsgTTL(lockTTL), jetstream.WithExpectStream("KV_"+ProjectionsBucket),
		jetstream.WithExpectLastSequencePerSubject(l.rev))
	if err != nil {
		return err
	}
	l.rev = ack.Sequence
	return nil
}

// --- rebuild ----------------------------------------------------------------------

// ProjectionProgress reports how a verify or rebuild is getting on.
type ProjectionProgress struct {
	Projection string `json:"projection"`
	// Phase is one of: cleanup, replay, catch-up, live, compare,
	// recheck (verify), switch, readers, drop (rebuild).
	Phase   string `json:"phase"`
	Applied uint64 `json:"applied,omitempty"`
	Target  uint64 `json:"target,omitempty"`
	Jobs    int    `json:"jobs,omitempty"`
	Message string `json:"message,omitempty"`
}

// RebuildOptions tune RebuildProjection.
type RebuildOptions struct {
	// SwitchTimeout bounds the wait for every coordinator to leave the
	// old generation (default DefaultSwitchTimeout); after it the old
	// bucket is kept, and the next rebuild deletes it once unused.
	SwitchTimeout time.Duration
	// By is who asked (for the pointer and the lock).
	By string
}

// RebuildReport is what a rebuild did.
type RebuildReport struct {
	Projection     string `json:"projection"`
	Version        string `json:"version"`
	FromGeneration uint64 `json:"from_generation"`
	FromBucket     string `json:"from_bucket"`
	Generation     uint64 `json:"generation"`
	Bucket         string `json:"bucket"`
	// Position is the log sequence the new generation had applied when
	// it became current; Jobs how many jobs it held then.
	Position uint64 `json:"position"`
	Jobs     int    `json:"jobs"`
	Switched bool   `json:"switched"`
	// OldBucketDeleted is false when some coordinators (StillReading) had
	// not left the old generation within the switch timeout.
	OldBucketDeleted bool     `json:"old_bucket_deleted"`
	StillReading     []string `json:"still_reading,omitempty"`
	// Removed lists leftover buckets deleted first (of an interrupted
	// rebuild or verify, or generations kept by an earlier rebuild).
	Removed    []string `json:"removed,omitempty"`
	DurationMS int64    `json:"duration_ms"`
}

// RebuildProjection builds the next generation of a projection from the
// whole log while the current one keeps serving, switches every
// coordinator to it and deletes the old generation. progress, if set, is
// called from the calling goroutine.
func (s *Service) RebuildProjection(ctx context.Context, name string, opts RebuildOptions, progress func(ProjectionProgress)) (RebuildReport, error) {
	name, err := canonicalProjection(name)
	if err != nil {
		return RebuildReport{}, err
	}
	if opts.SwitchTimeout <= 0 {
		opts.SwitchTimeout = DefaultSwitchTimeout
	}
	if progress == nil {
		progress = func(ProjectionProgress) {}
	}
	report := func(p ProjectionProgress) { p.Projection = name; progress(p) }
	start := time.Now()
	rep := RebuildReport{Projection: name, Version: ProjectionName}
	err = s.withLock(ctx, name, "rebuild", opts.By, func(ctx context.Context) error {
		return s.rebuild(ctx, opts, &rep, report)
	})
	rep.DurationMS = time.Since(start).Milliseconds()
	return rep, err
}

func (s *Service) rebuild(ctx context.Context, opts RebuildOptions, rep *RebuildReport, report func(ProjectionProgress)) error {
	ptr, rev, err := readPointer(ctx, s.projKV, JobsProjection)
	if err != nil {
		return err
	}
	rep.FromGeneration, rep.FromBucket = ptr.Generation, ptr.Bucket
	removed, err := s.dropLeftovers(ctx, ptr, report)
	if err != nil {
		return err
	}
	rep.Removed = removed
	next := ptr.Generation + 1
	bucket := JobsBucketFor(next)
	rep.Generation, rep.Bucket = next, bucket
	kv, err := s.js.CreateKeyValue(ctx, jobsBucketConfig(bucket, next, 1))
	if err != nil {
		return fmt.Errorf("coordinator: create bucket %s: %w", bucket, err)
	}
	keep := false
	defer func() {
		if !keep {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if err := s.js.DeleteKeyValue(dctx, bucket); err != nil {
				s.log.Warn().Err(err).Str("bucket", bucket).Msg("half-built generation not deleted; the next rebuild deletes it")
			}
			cancel()
		}
	}()
	s.log.Info().Str("bucket", bucket).Uint64("generation", next).Str("by", opts.By).Msg("rebuilding the jobs read model")

	// The whole log as it is now, folded in memory and written a job at a
	// time (not an event at a time: BENCHMARKS.md), then what came
	// meanwhile by a projector like any other; each coordinator catches up
	// the last few events itself as it switches.
	log := s.log.With().Str("bucket", bucket).Logger()
	target, err := s.logEnd(ctx)
	if err != nil {
		return err
	}
	report(ProjectionProgress{Phase: "replay", Target: target})
	st, err := (&Projector{Store: s.store, KV: kv, JS: s.js, Log: log}).Backfill(ctx, target, func(a uint64) {
		report(ProjectionProgress{Phase: "replay", Applied: a, Target: target})
	})
	if err != nil {
		return fmt.Errorf("coordinator: rebuild %s: %w", bucket, err)
	}
	var jobs atomic.Int64
	jobs.Store(int64(st.Created))
	b := startProjector(ctx, &Projector{Store: s.store, KV: kv, Log: log,
		OnApply: func(_ *job.Job, ev *events.Event) {
			if ev.Type == events.TypeJobCreated {
				jobs.Add(1)
			}
		}})
	defer b.halt()
	target, err = s.logEnd(ctx)
	if err != nil {
		return err
	}
	report(ProjectionProgress{Phase: "catch-up", Applied: b.p.Applied(), Target: target, Jobs: int(jobs.Load())})
	if err := b.waitApplied(ctx, target, func(a uint64) {
		report(ProjectionProgress{Phase: "catch-up", Applied: a, Target: target, Jobs: int(jobs.Load())})
	}); err != nil {
		return fmt.Errorf("coordinator: rebuild %s: %w", bucket, err)
	}
	if err := b.stop(ctx); err != nil {
		return fmt.Errorf("coordinator: rebuild %s: %w", bucket, err)
	}
	rep.Position, rep.Jobs = b.p.Applied(), int(jobs.Load())

	np := ProjectionPointer{Projection: JobsProjection, Version: ProjectionName, Generation: next, Bucket: bucket,
		Position: rep.Position, Since: time.Now().UTC(), By: opts.By}
	if err := writePointer(ctx, s.projKV, np, rev); err != nil {
		// A write whose answer was lost may have moved it: look.
		cur, _, rerr := readPointer(context.WithoutCancel(ctx), s.projKV, JobsProjection)
		switch {
		case rerr != nil:
			keep = true // it may be current: the next rebuild decides
			return errors.Join(err, rerr)
		case cur.Generation != next:
			return err
		}
	}
	keep = true
	rep.Switched = true
	report(ProjectionProgress{Phase: "switch", Applied: rep.Position, Jobs: rep.Jobs,
		Message: fmt.Sprintf("generation %d (%s) is current; coordinators are switching to it", next, bucket)})
	s.log.Info().Str("bucket", bucket).Uint64("generation", next).Uint64("position", rep.Position).Int("jobs", rep.Jobs).
		Msg("jobs read model rebuilt; pointer moved")

	// The switch is made: finish even if the caller went away.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.SwitchTimeout)
	defer cancel()
	still, err := s.waitReadersLeave(wctx, ptr.Bucket, report)
	if err != nil || len(still) > 0 {
		rep.StillReading = still
		s.log.Warn().Err(err).Strs("still_reading", still).Str("bucket", ptr.Bucket).
			Msg("old read model generation kept: coordinators still read it")
		return nil
	}
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer dcancel()
	if err := s.js.DeleteKeyValue(dctx, ptr.Bucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("coordinator: delete the old generation %s: %w", ptr.Bucket, err)
	}
	rep.OldBucketDeleted = true
	report(ProjectionProgress{Phase: "drop", Message: "deleted the old generation " + ptr.Bucket})
	return nil
}

// waitReadersLeave waits until no coordinator holds a reader lease on
// bucket, reporting who still does. It returns them when ctx ends first.
func (s *Service) waitReadersLeave(ctx context.Context, bucket string, report func(ProjectionProgress)) ([]string, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last time.Time
	for {
		readers, err := readersOf(ctx, s.js, bucket)
		if err == nil && len(readers) == 0 {
			return nil, nil
		}
		if err == nil && time.Since(last) >= time.Second {
			report(ProjectionProgress{Phase: "readers", Message: fmt.Sprintf("waiting for %d coordinator(s) to leave %s: %s",
				len(readers), bucket, strings.Join(readers, ", "))})
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return readers, err
		case <-tick.C:
		}
	}
}

// dropLeftovers deletes the buckets of the jobs projection that the
// pointer does not name and no coordinator reads: generations an earlier
// rebuild had to keep, half-built ones of an interrupted rebuild, scratch
// buckets of an interrupted verify. The caller holds the lock, so none of
// them is being built.
func (s *Service) dropLeftovers(ctx context.Context, cur ProjectionPointer, report func(ProjectionProgress)) ([]string, error) {
	lister := s.js.StreamNames(ctx)
	var buckets []string
	for name := range lister.Name() {
		if b, ok := strings.CutPrefix(name, "KV_"); ok && jobsBucketRE.MatchString(b) && b != cur.Bucket {
			buckets = append(buckets, b)
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("coordinator: list buckets: %w", err)
	}
	var removed []string
	for _, b := range buckets {
		readers, err := readersOf(ctx, s.js, b)
		if err != nil {
			return removed, err
		}
		if len(readers) > 0 {
			report(ProjectionProgress{Phase: "cleanup", Message: fmt.Sprintf("kept %s: still read by %s", b, strings.Join(readers, ", "))})
			continue
		}
		if err := s.js.DeleteKeyValue(ctx, b); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			return removed, fmt.Errorf("coordinator: delete leftover bucket %s: %w", b, err)
		}
		removed = append(removed, b)
		report(ProjectionProgress{Phase: "cleanup", Message: "deleted leftover bucket " + b})
		s.log.Info().Str("bucket", b).Msg("deleted a leftover read model bucket")
	}
	return removed, nil
}
