package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
)

// Verification: a projection agrees with the log when every entry of the
// live model is what replaying the log gives. Verify replays the whole log
// into a scratch bucket with the projector's own code (Backfill), up to the
// log's end T, waits until this coordinator's projector has passed T too, and
// compares the two buckets entry by entry. The live model keeps moving
// meanwhile, so an entry that differs is not reported at once: it is
// checked again exactly — the live entry at version v must equal the replay
// of the job's own events up to v, v must be one of them, and no event the
// live projector has passed may be missing — and only what fails that
// check is a mismatch.

// Mismatch kinds.
const (
	// MismatchDiffers: same version, different state.
	MismatchDiffers = "differs"
	// MismatchMissing: the log has the job; the live model does not.
	MismatchMissing = "missing"
	// MismatchUnexpected: the live model has an entry no job of the log
	// explains.
	MismatchUnexpected = "unexpected"
	// MismatchBehind: the live entry lacks events the live projector has
	// passed.
	MismatchBehind = "behind"
	// MismatchBadVersion: the live entry's version is not one of the
	// job's events.
	MismatchBadVersion = "bad-version"
	// MismatchUndecodable: the live entry is not a job document.
	MismatchUndecodable = "undecodable"
)

// maxDifferences bounds the field differences listed per mismatch.
const maxDifferences = 20

// Mismatch is one entry of the live model that does not agree with the log.
type Mismatch struct {
	Job  string `json:"job"`
	Kind string `json:"kind"`
	// LiveVersion and ReplayedVersion are the sequences of the last event
	// each includes (0: no entry).
	LiveVersion     uint64 `json:"live_version"`
	ReplayedVersion uint64 `json:"replayed_version"`
	// Differences are field by field, "path: live X, replayed Y".
	Differences []string `json:"differences,omitempty"`
	Detail      string   `json:"detail,omitempty"`
}

// ProjectionVerify is the verdict on one projection.
type ProjectionVerify struct {
	Projection string `json:"projection"`
	Version    string `json:"version"`
	Generation uint64 `json:"generation"`
	Bucket     string `json:"bucket"`
	// Position is the log sequence the comparison was made at.
	Position uint64 `json:"position"`
	// Checked counts the entries compared, Rechecked those that moved or
	// differed and were checked again job by job.
	Checked    int        `json:"checked"`
	Rechecked  int        `json:"rechecked"`
	Mismatches []Mismatch `json:"mismatches"`
	Agree      bool       `json:"agree"`
	DurationMS int64      `json:"duration_ms"`
}

// VerifyReport is the verdict on every projection verified.
type VerifyReport struct {
	Projections []ProjectionVerify `json:"projections"`
	Agree       bool               `json:"agree"`
}

// VerifyOptions tune VerifyProjections.
type VerifyOptions struct {
	// Projections to verify; none: all of them.
	Projections []string
	// LiveTimeout bounds the wait for this coordinator's projector to
	// reach the end of the log as it was at the start (default 2 min).
	LiveTimeout time.Duration
	// By is who asked (for the lock).
	By string
}

// VerifyProjections rebuilds each projection from the log into a scratch
// bucket, compares it with the live model and reports every mismatch.
// progress, if set, is called from the calling goroutine.
func (s *Service) VerifyProjections(ctx context.Context, opts VerifyOptions, progress func(ProjectionProgress)) (VerifyReport, error) {
	names := opts.Projections
	if len(names) == 0 {
		names = Projections
	}
	var canon []string
	for _, n := range names {
		c, err := canonicalProjection(n)
		if err != nil {
			return VerifyReport{}, err
		}
		if !slices.Contains(canon, c) {
			canon = append(canon, c)
		}
	}
	if opts.LiveTimeout <= 0 {
		opts.LiveTimeout = 2 * time.Minute
	}
	if progress == nil {
		progress = func(ProjectionProgress) {}
	}
	rep := VerifyReport{Agree: true, Projections: []ProjectionVerify{}}
	for _, name := range canon {
		report := func(p ProjectionProgress) { p.Projection = name; progress(p) }
		start := time.Now()
		v := ProjectionVerify{Projection: name, Version: ProjectionName, Mismatches: []Mismatch{}}
		err := s.withLock(ctx, name, "verify", opts.By, func(ctx context.Context) error {
			return s.verifyJobs(ctx, opts, &v, report)
		})
		if err != nil {
			return rep, err
		}
		v.Agree = len(v.Mismatches) == 0
		v.DurationMS = time.Since(start).Milliseconds()
		rep.Projections = append(rep.Projections, v)
		rep.Agree = rep.Agree && v.Agree
	}
	return rep, nil
}

func (s *Service) verifyJobs(ctx context.Context, opts VerifyOptions, v *ProjectionVerify, report func(ProjectionProgress)) error {
	ptr, _, err := readPointer(ctx, s.projKV, JobsProjection)
	if err != nil {
		return err
	}
	// The live model is the generation this coordinator reads; its
	// follower moves to a new pointer within moments.
	if err := s.waitGeneration(ctx, ptr.Generation); err != nil {
		return err
	}
	g, release := s.models.acquire()
	defer release()
	live := g.kv
	v.Generation, v.Bucket = g.gen, g.bucket
	if _, err := s.dropLeftovers(ctx, ptr, report); err != nil {
		return err
	}

	// Replay the whole log into a scratch bucket.
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	bucket := JobsBucket + "_verify_" + hex.EncodeToString(suffix[:])
	scratch, err := s.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: 1, Storage: jetstream.FileStorage,
		Description: "ferry: scratch replay of the jobs read model for `ferry replay verify`; deleted afterwards"})
	if err != nil {
		return fmt.Errorf("coordinator: create scratch bucket %s: %w", bucket, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		if err := s.js.DeleteKeyValue(dctx, bucket); err != nil {
			s.log.Warn().Err(err).Str("bucket", bucket).Msg("scratch bucket not deleted; the next verify or rebuild deletes it")
		}
		cancel()
	}()
	target, err := s.logEnd(ctx)
	if err != nil {
		return err
	}
	v.Position = target
	report(ProjectionProgress{Phase: "replay", Target: target})
	_, err = (&Projector{Store: s.store, KV: scratch, JS: s.js, Log: s.log.With().Str("bucket", bucket).Logger()}).Backfill(ctx, target, func(a uint64) {
		report(ProjectionProgress{Phase: "replay", Applied: a, Target: target})
	})
	if err != nil {
		return fmt.Errorf("coordinator: verify: replay the log: %w", err)
	}

	// The live model must have passed the same point.
	report(ProjectionProgress{Phase: "live", Applied: s.projector.Applied(), Target: target})
	lctx, cancel := context.WithTimeout(ctx, opts.LiveTimeout)
	err = waitApplied(lctx, s.projector, target, nil, nil, func(a uint64) {
		report(ProjectionProgress{Phase: "live", Applied: a, Target: target})
	})
	cancel()
	if err != nil {
		return fmt.Errorf("coordinator: verify: the live projector did not reach the end of the log: %w", err)
	}

	// Compare. Entries equal at the same version agree; the others are
	// checked again, exactly, job by job.
	report(ProjectionProgress{Phase: "compare", Target: target})
	liveSums := map[string]entrySum{}
	if err := scanBucket(ctx, live, func(id string, e entrySum) { liveSums[id] = e }); err != nil {
		return fmt.Errorf("coordinator: verify: read %s: %w", g.bucket, err)
	}
	var suspects []string
	last := time.Now()
	err = scanBucket(ctx, scratch, func(id string, r entrySum) {
		l, ok := liveSums[id]
		if !ok || l.bad || r.bad || l.version != r.version || l.sum != r.sum {
			suspects = append(suspects, id)
		}
		delete(liveSums, id)
		v.Checked++
		if time.Since(last) >= progressEvery {
			report(ProjectionProgress{Phase: "compare", Jobs: v.Checked, Target: target})
			last = time.Now()
		}
	})
	if err != nil {
		return fmt.Errorf("coordinator: verify: read %s: %w", bucket, err)
	}
	for id := range liveSums { // in the live model only
		suspects = append(suspects, id)
		v.Checked++
	}
	sort.Strings(suspects)
	v.Rechecked = len(suspects)
	for i, id := range suspects {
		if time.Since(last) >= progressEvery {
			report(ProjectionProgress{Phase: "recheck", Jobs: i, Message: fmt.Sprintf("%d of %d entries checked again", i, len(suspects))})
			last = time.Now()
		}
		m, err := s.recheck(ctx, live, id)
		if err != nil {
			return err
		}
		if m != nil {
			v.Mismatches = append(v.Mismatches, *m)
		}
	}
	return nil
}

// waitGeneration waits (briefly) until this coordinator reads generation gen.
func (s *Service) waitGeneration(ctx context.Context, gen uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		cur := s.models.current().gen
		if cur == gen {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("coordinator: this coordinator reads generation %d of the read model, the pointer names %d: %w", cur, gen, ctx.Err())
		case <-tick.C:
		}
	}
}

// entrySum is an entry's version and the hash of its canonical form (the
// job decoded and encoded again, so that documents written by older
// versions compare by meaning).
type entrySum struct {
	version uint64
	sum     [32]byte
	bad     bool
}

func summarize(b []byte) entrySum {
	var j job.Job
	if err := json.Unmarshal(b, &j); err != nil {
		return entrySum{bad: true}
	}
	c, err := json.Marshal(&j)
	if err != nil {
		return entrySum{bad: true}
	}
	return entrySum{version: j.Version, sum: sha256.Sum256(c)}
}

// scanBucket calls fn for every job entry of kv (keys starting with "_"
// are the projector's own), as the bucket is when the scan starts.
func scanBucket(ctx context.Context, kv jetstream.KeyValue, fn func(string, entrySum)) error {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch ended early")
			}
			if e == nil {
				return nil // every entry seen
			}
			if !strings.HasPrefix(e.Key(), "_") {
				fn(e.Key(), summarize(e.Value()))
			}
		}
	}
}

// recheck checks one live entry exactly against the job's events: the
// entry at version v must be the replay of the job's events up to v, and
// include every event the live projector has passed. It returns nil when
// the entry agrees. A state that differs at the same version is final (the
// events up to a version never change); the other verdicts may come from a
// read that lagged (a replica behind its leader), so they are read again a
// few times before they count.
func (s *Service) recheck(ctx context.Context, live jetstream.KeyValue, id string) (*Mismatch, error) {
	var m *Mismatch
	for attempt := range 4 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
			}
		}
		var err error
		m, err = s.checkEntry(ctx, live, id)
		if err != nil || m == nil {
			return nil, err
		}
		if m.Kind == MismatchDiffers || m.Kind == MismatchUndecodable || (m.Kind == MismatchUnexpected && !events.ValidID(id)) {
			return m, nil
		}
	}
	return m, nil
}

func (s *Service) checkEntry(ctx context.Context, live jetstream.KeyValue, id string) (*Mismatch, error) {
	applied := s.projector.Applied() // before the entry is read
	var (
		lj      job.Job
		found   bool
		decoded = true
	)
	e, err := live.Get(ctx, id)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return nil, fmt.Errorf("coordinator: verify: read %s: %w", id, err)
	default:
		found = true
		if json.Unmarshal(e.Value(), &lj) != nil {
			decoded = false
		}
	}
	if !events.ValidID(id) {
		return &Mismatch{Job: id, Kind: MismatchUnexpected, LiveVersion: lj.Version, Detail: "the key is not a job ID"}, nil
	}
	evs, err := s.store.Load(ctx, events.JobSubject(id), 0)
	if err != nil {
		return nil, fmt.Errorf("coordinator: verify: load the events of %s: %w", id, err)
	}
	// The replay of the job's events up to seq.
	replayTo := func(seq uint64) (job.Job, error) {
		var j job.Job
		for i := range evs {
			if evs[i].Seq > seq {
				break
			}
			if err := job.Evolve(&j, &evs[i]); err != nil {
				return j, fmt.Errorf("coordinator: verify: replay %s: %w", id, err)
			}
		}
		return j, nil
	}
	var passed uint64 // the job's last event the live projector passed
	has := func(seq uint64) bool {
		_, ok := slices.BinarySearchFunc(evs, seq, func(ev events.Event, s uint64) int { return cmpU(ev.Seq, s) })
		return ok
	}
	for i := range evs {
		if evs[i].Seq <= applied {
			passed = evs[i].Seq
		}
	}
	switch {
	case !found && passed == 0:
		return nil, nil // not projected yet: nothing to compare
	case !found:
		want, err := replayTo(passed)
		if err != nil {
			return nil, err
		}
		return &Mismatch{Job: id, Kind: MismatchMissing, ReplayedVersion: want.Version,
			Detail: fmt.Sprintf("the log has the job (%s); the live model has no entry", want.State)}, nil
	case !decoded:
		return &Mismatch{Job: id, Kind: MismatchUndecodable, ReplayedVersion: passed, Detail: "the live entry is not a job document"}, nil
	case len(evs) == 0:
		return &Mismatch{Job: id, Kind: MismatchUnexpected, LiveVersion: lj.Version, Detail: "the log has no events of this job"}, nil
	case !has(lj.Version):
		want, err := replayTo(max(passed, evs[0].Seq))
		if err != nil {
			return nil, err
		}
		return &Mismatch{Job: id, Kind: MismatchBadVersion, LiveVersion: lj.Version, ReplayedVersion: want.Version,
			Differences: DiffJobs(lj, want), Detail: fmt.Sprintf("version %d is not one of the job's events", lj.Version)}, nil
	case lj.Version < passed:
		want, err := replayTo(passed)
		if err != nil {
			return nil, err
		}
		return &Mismatch{Job: id, Kind: MismatchBehind, LiveVersion: lj.Version, ReplayedVersion: want.Version,
			Differences: DiffJobs(lj, want), Detail: fmt.Sprintf("the live projector passed sequence %d", applied)}, nil
	}
	want, err := replayTo(lj.Version)
	if err != nil {
		return nil, err
	}
	if d := DiffJobs(lj, want); len(d) > 0 {
		return &Mismatch{Job: id, Kind: MismatchDiffers, LiveVersion: lj.Version, ReplayedVersion: want.Version, Differences: d}, nil
	}
	return nil, nil
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// DiffJobs lists the fields in which live and replayed differ, as
// "path: live X, replayed Y" (JSON paths and values), at most
// maxDifferences of them.
func DiffJobs(live, replayed job.Job) []string {
	var a, b any
	if err := roundTrip(&live, &a); err != nil {
		return []string{"live: " + err.Error()}
	}
	if err := roundTrip(&replayed, &b); err != nil {
		return []string{"replayed: " + err.Error()}
	}
	var out []string
	n := 0
	diffValues("", a, b, func(path string, x, y any) {
		n++
		if len(out) < maxDifferences {
			out = append(out, fmt.Sprintf("%s: live %s, replayed %s", path, short(x), short(y)))
		}
	})
	if n > len(out) {
		out = append(out, fmt.Sprintf("… and %d more", n-len(out)))
	}
	return out
}

func roundTrip(v any, out *any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(out)
}

// absent marks a value missing on one side.
type absent struct{}

func diffValues(path string, a, b any, fn func(string, any, any)) {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok {
			break
		}
		keys := make([]string, 0, len(x)+len(y))
		for k := range x {
			keys = append(keys, k)
		}
		for k := range y {
			if _, ok := x[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			va, oka := x[k]
			vb, okb := y[k]
			switch {
			case !oka:
				fn(p, absent{}, vb)
			case !okb:
				fn(p, va, absent{})
			default:
				diffValues(p, va, vb, fn)
			}
		}
		return
	case []any:
		y, ok := b.([]any)
		if !ok {
			break
		}
		for i := range max(len(x), len(y)) {
			p := path + "[" + strconv.Itoa(i) + "]"
			switch {
			case i >= len(x):
				fn(p, absent{}, y[i])
			case i >= len(y):
				fn(p, x[i], absent{})
			default:
				diffValues(p, x[i], y[i], fn)
			}
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		if path == "" {
			path = "(document)"
		}
		fn(path, a, b)
	}
}

// short renders a value for a difference line.
func short(v any) string {
	if _, ok := v.(absent); ok {
		return "(absent)"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	s := string(b)
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}
