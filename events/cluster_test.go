package events_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
)

// clusterJSTimeout is the JetStream request timeout of the cluster tests'
// clients, and so of each publish and read of the store: shorter than the
// 5 s default, so that a request the dying leader swallowed costs less.
const clusterJSTimeout = 2 * time.Second

// clusterStep is how many events each append of a job stores, in order:
// creation alone (expected last 0), then single events and atomic batches,
// each chained on the sequence the previous append returned.
var clusterSteps = []int{1, 2, 1, 3}

// TestClusterLeaderLossKeepsAcknowledgedAppends: on a 3-node JetStream
// cluster with FERRY_EVENTS at R3, writers append bursts of job events with
// optimistic concurrency while the stream leader is shut down. A writer
// retries a failed append with the same events (same IDs, same
// expectation) until it succeeds or its deadline passes, as the store's
// contract allows. Afterwards, with a new leader on the two survivors, every
// append that returned success is in the log exactly once, each job's events
// are what its writer believes (IDs and sequences, in order, no gaps), and
// nothing else is there but the events of appends a writer gave up on.
//
// Server.Shutdown steps its Raft leaders down before it stops, so this is a
// leader handover under load, not a crash: requests the dying leader had
// taken are lost (the store sees timeouts and no responders) while the
// survivors take over.
func TestClusterLeaderLossKeepsAcknowledgedAppends(t *testing.T) {
	const (
		writers       = 8
		jobsPerWriter = 30
		giveUpAfter   = 20 * time.Second
	)
	start := time.Now()
	servers, conns := eventstest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()

	stores := make([]*events.JetStreamStore, len(conns))
	jss := make([]jetstream.JetStream, len(conns))
	for i, nc := range conns {
		js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(clusterJSTimeout))
		if err != nil {
			t.Fatal(err)
		}
		jss[i] = js
	}
	if err := events.EnsureStream(ctx, jss[0], events.StreamOptions{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	eventstest.WaitStreamCurrent(t, servers, events.StreamName)
	for i, js := range jss {
		s, err := events.NewJetStreamStore(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = s
	}
	if n := len(streamInfo(ctx, t, jss[0]).Cluster.Replicas); n != 2 {
		t.Fatalf("stream has %d followers, want 2", n)
	}
	t.Logf("cluster up, stream R3 created: %v", time.Since(start).Round(time.Millisecond))

	// The leader dies once a third of all appends succeeded.
	totalAppends := int64(writers * jobsPerWriter * len(clusterSteps))
	var (
		succeeded  atomic.Int64
		killNow    = make(chan struct{})
		killOnce   sync.Once
		killedAt   atomic.Pointer[time.Time]
		firstAfter atomic.Pointer[time.Time] // first success started after the kill
		okAfter    atomic.Int64              // appends started after the kill that succeeded
		slowest    atomic.Int64              // longest successful append (with its retries), ns
		recovered  atomic.Int64              // successful appends that outlasted a request timeout
	)
	succeededOne := func(began time.Time) {
		if time.Since(began) >= clusterJSTimeout {
			recovered.Add(1)
		}
		for d := int64(time.Since(began)); ; {
			if m := slowest.Load(); d <= m || slowest.CompareAndSwap(m, d) {
				break
			}
		}
		if succeeded.Add(1) >= totalAppends/3 {
			killOnce.Do(func() { close(killNow) })
		}
		if k := killedAt.Load(); k != nil && began.After(*k) {
			okAfter.Add(1)
			now := time.Now()
			firstAfter.CompareAndSwap(nil, &now)
		}
	}

	var killed string
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		select {
		case <-killNow:
		case <-ctx.Done():
			return
		}
		leader := eventstest.StreamLeader(servers, events.StreamName)
		if leader == nil {
			t.Error("no stream leader to shut down")
			return
		}
		killed = leader.Name()
		now := time.Now()
		killedAt.Store(&now)
		leader.Shutdown()
	}()

	stats := newRetryStats()
	results := make([][]jobRun, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			st := stores[w%len(stores)]
			for j := range jobsPerWriter {
				run := writeJob(ctx, st, fmt.Sprintf("cl%d-%03d", w, j), giveUpAfter, stats, succeededOne)
				results[w] = append(results[w], run)
				if run.err != nil && ctx.Err() != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	<-killerDone
	burst := time.Since(start)
	if t.Failed() {
		return
	}
	if killed == "" {
		t.Fatal("the stream leader was never shut down")
	}

	leader := eventstest.WaitStreamCurrent(t, servers, events.StreamName)
	if leader.Name() == killed {
		t.Fatalf("stream leader is still %s, which was shut down", killed)
	}
	firstOK := "none"
	if f := firstAfter.Load(); f != nil {
		firstOK = f.Sub(*killedAt.Load()).Round(time.Millisecond).String()
	}
	t.Logf("killed stream leader %s after %d of %d appends; new leader %s; first success begun after the kill came %s after it; %d appends begun after the kill succeeded; burst done after %v",
		killed, totalAppends/3, totalAppends, leader.Name(), firstOK, okAfter.Load(), burst.Round(time.Millisecond))
	t.Logf("slowest successful append %v; %d appends outlasted a request timeout (the store's lost-ack recovery); failed attempts and writer retries: %s",
		time.Duration(slowest.Load()).Round(time.Millisecond), recovered.Load(), stats)
	if n := stats.get("conflict on own stored events"); n > 0 {
		// Store.Append: re-appending the same events after an ambiguous
		// failure is safe, i.e. succeeds. A conflict instead makes
		// jobstore.Repo decide again on a state that already has them.
		t.Errorf("%d retries of stored events reported a conflict instead of success", n)
	}
	if okAfter.Load() == 0 {
		t.Fatal("no append begun after the leader's shutdown succeeded")
	}

	// Read back through a client of a survivor.
	var (
		st *events.JetStreamStore
		js jetstream.JetStream
	)
	for i, s := range servers {
		if s.Running() {
			st, js = stores[i], jss[i]
			break
		}
	}
	var runs []jobRun
	for _, rs := range results {
		runs = append(runs, rs...)
	}
	verifyClusterLog(ctx, t, st, streamInfo(ctx, t, js), runs)
	t.Logf("verified %d jobs; whole test %v", len(runs), time.Since(start).Round(time.Millisecond))
}

// jobRun is what one writer believes about one job.
type jobRun struct {
	id       string
	believed []events.Event // appended successfully, with their sequences
	// pending are the events of an append the writer gave up on: they may
	// or may not be stored.
	pending []events.Event
	err     error
}

// writeJob appends the steps of one job, each chained on the last sequence
// the writer knows, and stops at the first append it gives up on.
func writeJob(ctx context.Context, st *events.JetStreamStore, id string, giveUpAfter time.Duration, stats *retryStats, ok func(began time.Time)) jobRun {
	run := jobRun{id: id}
	subj := events.JobSubject(id)
	var last uint64
	n := 0
	for _, size := range clusterSteps {
		evs := make([]events.Event, size)
		for i := range evs {
			var p events.Payload = &events.JobQueued{Reason: fmt.Sprintf("%s/%d", id, n)}
			if n == 0 {
				p = &events.JobCreated{JobID: id, DisplayName: id, JobType: "DOWNLOAD", Owner: "spiffe://ferry.test/user/alice", Priority: "NORMAL", Pool: "default"}
			}
			ev, err := events.New(events.KindJob, id, events.Meta{Time: time.Unix(1_750_000_000, int64(n))}, p)
			if err != nil {
				run.err = err
				return run
			}
			evs[i] = ev
			n++
		}
		if err := events.AssignIDs(evs); err != nil {
			run.err = err
			return run
		}
		began := time.Now()
		seq, err := appendUntil(ctx, st, subj, last, evs, began.Add(giveUpAfter), stats)
		if err != nil {
			run.pending, run.err = evs, fmt.Errorf("job %s: append after %d: %w", id, last, err)
			return run
		}
		ok(began)
		run.believed = append(run.believed, evs...)
		last = seq
	}
	return run
}

// appendUntil appends evs, and after a failure appends the same events with
// the same expectation again, until one attempt succeeds or deadline
// passes. A conflict can only be the writer's own earlier attempt (no one
// else writes the job): the store is meant to report that as success, so
// it is counted, and the writer reloads the job to see what is there.
func appendUntil(ctx context.Context, st *events.JetStreamStore, subj string, expected uint64, evs []events.Event, deadline time.Time, stats *retryStats) (uint64, error) {
	for attempt := 1; ; attempt++ {
		last, err := st.Append(ctx, subj, expected, evs)
		if err == nil {
			if attempt > 1 {
				stats.add("succeeded on a retry")
			}
			return last, nil
		}
		stats.add(classify(err))
		switch {
		case errors.Is(err, events.ErrInvalidAppend):
			return 0, err
		case events.IsConflict(err):
			got, lerr := st.Load(ctx, subj, expected)
			if lerr == nil && len(got) >= len(evs) && sameIDs(got[:len(evs)], evs) {
				stats.add("conflict on own stored events")
				for i := range evs {
					evs[i].Seq = got[i].Seq
				}
				return evs[len(evs)-1].Seq, nil
			}
			if lerr == nil && len(got) > 0 {
				return 0, fmt.Errorf("conflict with events the writer did not append (first %s): %w", got[0].ID, err)
			}
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return 0, fmt.Errorf("gave up after %d attempts: %w", attempt, err)
		}
		// A short pause so that retries during the election do not spin;
		// the outcome does not depend on it.
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func sameIDs(a, b []events.Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID {
			return false
		}
	}
	return true
}

// classify names the kind of a failed append for the log of the test.
func classify(err error) string {
	var apiErr *jetstream.APIError
	switch {
	case events.IsConflict(err):
		return "conflict"
	case errors.As(err, &apiErr):
		return fmt.Sprintf("api error %d", apiErr.ErrorCode)
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		return "no stream response"
	case errors.Is(err, nats.ErrNoResponders):
		return "no responders"
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
		return "reconnecting"
	case errors.Is(err, nats.ErrConnectionClosed):
		return "connection closed"
	}
	return "other: " + err.Error()
}

type retryStats struct {
	mu sync.Mutex
	n  map[string]int
}

func newRetryStats() *retryStats { return &retryStats{n: map[string]int{}} }

func (s *retryStats) add(kind string) {
	s.mu.Lock()
	s.n[kind]++
	s.mu.Unlock()
}

func (s *retryStats) get(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[kind]
}

func (s *retryStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.n) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range s.n {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// errStopScan ends the scan of the whole log.
var errStopScan = errors.New("scan done")

// verifyClusterLog checks the log against what the writers believe.
func verifyClusterLog(ctx context.Context, t *testing.T, st *events.JetStreamStore, info *jetstream.StreamInfo, runs []jobRun) {
	t.Helper()
	if info.State.FirstSeq != 1 || info.State.Msgs != info.State.LastSeq {
		t.Fatalf("stream state %+v: messages missing", info.State)
	}

	// Every stored event, in stream order, through a consumer (served by
	// the leader).
	seen := map[uuid.UUID]uint64{}
	var dups []string
	err := st.Subscribe(ctx, events.SubjectPrefix+">", 0, func(ev events.Event) error {
		if s, ok := seen[ev.ID]; ok {
			dups = append(dups, fmt.Sprintf("%s at %d and %d", ev.ID, s, ev.Seq))
		}
		seen[ev.ID] = ev.Seq
		if ev.Seq >= info.State.LastSeq {
			return errStopScan
		}
		return nil
	})
	if !errors.Is(err, errStopScan) {
		t.Fatalf("scan of the log: %v", err)
	}
	if len(dups) > 0 {
		t.Errorf("%d events stored twice: %s", len(dups), strings.Join(dups, "; "))
	}

	accounted := 0
	gaveUp := 0
	for _, run := range runs {
		if run.err != nil {
			gaveUp++
			t.Logf("writer gave up: %v", run.err)
		}
		// Every acknowledged event, exactly once, at the sequence its
		// writer was told.
		for _, ev := range run.believed {
			if s, ok := seen[ev.ID]; !ok {
				t.Errorf("job %s: acknowledged event %s (seq %d) is not in the log", run.id, ev.ID, ev.Seq)
			} else if s != ev.Seq {
				t.Errorf("job %s: event %s at seq %d, its writer was told %d", run.id, ev.ID, s, ev.Seq)
			}
		}
		// A replay of the job is what its writer believes, plus at most
		// the whole of the append it gave up on.
		got, err := st.Load(ctx, events.JobSubject(run.id), 0)
		if err != nil {
			t.Fatalf("load %s: %v", run.id, err)
		}
		want := run.believed
		if len(got) > len(want) && len(run.pending) > 0 {
			want = append(append([]events.Event{}, want...), run.pending...)
		}
		if !sameIDs(got, want) {
			t.Errorf("job %s: replay %s, writer believes %s (pending %s)", run.id, ids(got), ids(run.believed), ids(run.pending))
			continue
		}
		for i := range run.believed {
			if got[i].Seq != run.believed[i].Seq {
				t.Errorf("job %s: event %d at seq %d, writer believes %d", run.id, i, got[i].Seq, run.believed[i].Seq)
			}
			if i > 0 && got[i].Seq <= got[i-1].Seq {
				t.Errorf("job %s: sequences out of order: %d after %d", run.id, got[i].Seq, got[i-1].Seq)
			}
		}
		accounted += len(got)
	}
	if accounted != len(seen) {
		t.Errorf("the log holds %d events, the jobs' replays %d: foreign events", len(seen), accounted)
	}
	if gaveUp > 0 {
		t.Errorf("%d of %d jobs had an append that never succeeded within its deadline", gaveUp, len(runs))
	}
}

func streamInfo(ctx context.Context, t *testing.T, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil {
		t.Fatal("stream info has no cluster")
	}
	return info
}

func ids(evs []events.Event) string {
	s := make([]string, len(evs))
	for i, ev := range evs {
		s[i] = ev.ID.String()[24:]
	}
	return "[" + strings.Join(s, " ") + "]"
}
