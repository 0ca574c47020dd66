package eventstest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"

	"github.com/ferry-dev/ferry/events"
)

// waitTimeout bounds every wait for an event; reaching it fails the test.
const waitTimeout = 15 * time.Second

// RunConformance runs the contract of events.Store against stores made by
// newStore. newStore may return a store shared with other tests: every
// subtest works on subjects of its own.
func RunConformance(t *testing.T, newStore func(t *testing.T) events.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, events.Store)
	}{
		{"AppendLoad", testAppendLoad},
		{"CreateExpectsEmptySubject", testCreateExpectsEmpty},
		{"StaleExpectationConflicts", testStaleConflict},
		{"BatchIsAtomic", testBatch},
		{"StaleBatchStoresNothing", testStaleBatch},
		{"DedupeSingle", testDedupeSingle},
		{"DedupeBatch", testDedupeBatch},
		{"IDReusedByAnotherAppend", testIDReused},
		{"LoadAfter", testLoadAfter},
		{"LastSeq", testLastSeq},
		{"SubjectsAreIndependent", testSubjectsIndependent},
		{"InvalidArguments", testInvalid},
		{"ReturnedEventsAreCopies", testCopies},
		{"SubscribeFromStart", testSubscribeFromStart},
		{"SubscribeFromMiddle", testSubscribeFromMiddle},
		{"SubscribeLive", testSubscribeLive},
		{"SubscribeWildcard", testSubscribeWildcard},
		{"SubscribeFnErrorStops", testSubscribeFnError},
		{"SubscribeCancelStops", testSubscribeCancel},
		{"ConcurrentWriters", testConcurrentWriters},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t)) })
	}
}

// ignorePayload compares events by what is stored: the decoded payload is
// a cache.
var ignorePayload = cmpopts.IgnoreUnexported(events.Event{})

var timeBase = time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)

var counter atomic.Int64

// newID returns an aggregate ID no other test uses.
func newID() string { return "t" + uuid.NewString()[:8] + strconv.FormatInt(counter.Add(1), 36) }

// mk builds one event of (kind, id) with an ID; n makes its data distinct.
func mk(t *testing.T, kind, id string, n int) events.Event {
	t.Helper()
	ev, err := events.New(kind, id, events.Meta{
		Time:          timeBase.Add(time.Duration(n) * time.Millisecond),
		Actor:         "spiffe://ferry.test/user/alice",
		CorrelationID: "corr-" + strconv.Itoa(n),
	}, &events.JobQueued{Reason: "r" + strconv.Itoa(n)})
	if err != nil {
		t.Fatal(err)
	}
	evs := []events.Event{ev}
	if err := events.AssignIDs(evs); err != nil {
		t.Fatal(err)
	}
	return evs[0]
}

// mkN builds n events of one job, numbered from first.
func mkN(t *testing.T, id string, first, n int) []events.Event {
	t.Helper()
	evs := make([]events.Event, n)
	for i := range evs {
		evs[i] = mk(t, events.KindJob, id, first+i)
	}
	return evs
}

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func mustAppend(t *testing.T, s events.Store, subject string, expected uint64, evs []events.Event) uint64 {
	t.Helper()
	last, err := s.Append(ctxOf(t), subject, expected, evs)
	if err != nil {
		t.Fatalf("Append(%s, %d, %d events): %v", subject, expected, len(evs), err)
	}
	if last != evs[len(evs)-1].Seq {
		t.Fatalf("Append returned %d, last event has Seq %d", last, evs[len(evs)-1].Seq)
	}
	return last
}

func mustLoad(t *testing.T, s events.Store, subject string, after uint64) []events.Event {
	t.Helper()
	evs, err := s.Load(ctxOf(t), subject, after)
	if err != nil {
		t.Fatalf("Load(%s, %d): %v", subject, after, err)
	}
	return evs
}

func mustLastSeq(t *testing.T, s events.Store, subject string) uint64 {
	t.Helper()
	seq, err := s.LastSeq(ctxOf(t), subject)
	if err != nil {
		t.Fatalf("LastSeq(%s): %v", subject, err)
	}
	return seq
}

// sameEvents fails unless got are want (with their sequences).
func sameEvents(t *testing.T, got, want []events.Event) {
	t.Helper()
	if diff := cmp.Diff(want, got, ignorePayload, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("events differ (-want +got):\n%s", diff)
	}
}

// checkSeqs fails unless evs have increasing, non-zero sequences.
func checkSeqs(t *testing.T, evs []events.Event) {
	t.Helper()
	var prev uint64
	for i, e := range evs {
		if e.Seq == 0 || e.Seq <= prev {
			t.Fatalf("event %d: Seq %d after %d", i, e.Seq, prev)
		}
		prev = e.Seq
	}
}

// conflict fails unless err is a *ConflictError for subject and expected.
// It returns the error's Actual.
func conflict(t *testing.T, err error, subject string, expected uint64) uint64 {
	t.Helper()
	if !events.IsConflict(err) {
		t.Fatalf("got %v, want a conflict", err)
	}
	var ce *events.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("conflict %v is not a *ConflictError", err)
	}
	if ce.Subject != subject || ce.Expected != expected {
		t.Fatalf("conflict names %s expected %d, want %s expected %d", ce.Subject, ce.Expected, subject, expected)
	}
	return ce.Actual
}

func testAppendLoad(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	var want []events.Event
	var last uint64
	for i := range 3 {
		evs := mkN(t, id, i, 1)
		last = mustAppend(t, s, subj, last, evs)
		want = append(want, evs...)
	}
	checkSeqs(t, want)
	got := mustLoad(t, s, subj, 0)
	sameEvents(t, got, want)
	for i := range got {
		p, err := got[i].Payload()
		if err != nil {
			t.Fatal(err)
		}
		if q, ok := p.(*events.JobQueued); !ok || q.Reason != "r"+strconv.Itoa(i) {
			t.Fatalf("event %d: payload %#v", i, p)
		}
	}
}

func testCreateExpectsEmpty(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	first := mustAppend(t, s, subj, 0, mkN(t, id, 0, 1))
	_, err := s.Append(ctxOf(t), subj, 0, mkN(t, id, 1, 1))
	if actual := conflict(t, err, subj, 0); actual != 0 && actual != first {
		t.Fatalf("conflict Actual = %d, want %d (or 0: unknown)", actual, first)
	}
	if got := mustLoad(t, s, subj, 0); len(got) != 1 {
		t.Fatalf("%d events stored, want 1", len(got))
	}
}

func testStaleConflict(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	a := mustAppend(t, s, subj, 0, mkN(t, id, 0, 1))
	b := mustAppend(t, s, subj, a, mkN(t, id, 1, 1))
	before := mustLoad(t, s, subj, 0)

	for _, stale := range []uint64{a, b + 1000} {
		_, err := s.Append(ctxOf(t), subj, stale, mkN(t, id, 2, 1))
		if actual := conflict(t, err, subj, stale); actual != 0 && actual != b {
			t.Fatalf("expected %d: conflict Actual = %d, want %d (or 0: unknown)", stale, actual, b)
		}
		if !errors.Is(err, events.ErrConflict) {
			t.Fatalf("%v does not wrap ErrConflict", err)
		}
	}
	sameEvents(t, mustLoad(t, s, subj, 0), before)
	if got := mustLastSeq(t, s, subj); got != b {
		t.Fatalf("LastSeq = %d, want %d", got, b)
	}
}

func testBatch(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	one := mkN(t, id, 0, 1)
	a := mustAppend(t, s, subj, 0, one)
	batch := mkN(t, id, 1, 4)
	last := mustAppend(t, s, subj, a, batch)
	checkSeqs(t, append(one, batch...))
	if batch[0].Seq <= a || last != batch[3].Seq {
		t.Fatalf("batch seqs %d..%d after %d, Append returned %d", batch[0].Seq, batch[3].Seq, a, last)
	}
	sameEvents(t, mustLoad(t, s, subj, 0), append(one, batch...))
	if got := mustLastSeq(t, s, subj); got != last {
		t.Fatalf("LastSeq = %d, want %d", got, last)
	}
	// A batch can create a subject.
	id2 := newID()
	created := mkN(t, id2, 0, 3)
	mustAppend(t, s, events.JobSubject(id2), 0, created)
	sameEvents(t, mustLoad(t, s, events.JobSubject(id2), 0), created)
}

func testStaleBatch(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	a := mustAppend(t, s, subj, 0, mkN(t, id, 0, 1))
	before := mustLoad(t, s, subj, 0)

	for _, stale := range []uint64{0, a + 1} {
		batch := mkN(t, id, 1, 3)
		_, err := s.Append(ctxOf(t), subj, stale, batch)
		conflict(t, err, subj, stale)
		sameEvents(t, mustLoad(t, s, subj, 0), before)
		if got := mustLastSeq(t, s, subj); got != a {
			t.Fatalf("LastSeq = %d after a rejected batch, want %d", got, a)
		}
		// The rejected events were not stored: they can still be appended.
		mustAppend(t, s, subj, a, batch)
		before = append(before, batch...)
		a = batch[2].Seq
		sameEvents(t, mustLoad(t, s, subj, 0), before)
	}
}

func testDedupeSingle(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	ev := mkN(t, id, 0, 1)
	first := mustAppend(t, s, subj, 0, ev)

	// The writer lost the answer and appends the same event again.
	again := []events.Event{ev[0]}
	again[0].Seq = 0
	if got := mustAppend(t, s, subj, 0, again); got != first {
		t.Fatalf("re-append returned %d, want the original %d", got, first)
	}
	// Also when another event followed it meanwhile.
	second := mustAppend(t, s, subj, first, mkN(t, id, 1, 1))
	again[0].Seq = 0
	if got := mustAppend(t, s, subj, 0, again); got != first {
		t.Fatalf("re-append after another event returned %d, want %d", got, first)
	}
	if got := mustLoad(t, s, subj, 0); len(got) != 2 {
		t.Fatalf("%d events stored, want 2", len(got))
	}
	if got := mustLastSeq(t, s, subj); got != second {
		t.Fatalf("LastSeq = %d, want %d", got, second)
	}
}

func testDedupeBatch(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	batch := mkN(t, id, 0, 3)
	last := mustAppend(t, s, subj, 0, batch)
	want := mustLoad(t, s, subj, 0)

	again := append([]events.Event(nil), batch...)
	for i := range again {
		again[i].Seq = 0
	}
	if got := mustAppend(t, s, subj, 0, again); got != last {
		t.Fatalf("re-append returned %d, want %d", got, last)
	}
	for i := range again {
		if again[i].Seq != batch[i].Seq {
			t.Fatalf("re-append: event %d got Seq %d, want %d", i, again[i].Seq, batch[i].Seq)
		}
	}
	sameEvents(t, mustLoad(t, s, subj, 0), want)
}

func testIDReused(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	a := mkN(t, id, 0, 1)
	last := mustAppend(t, s, subj, 0, a)
	// A new decision that smuggles in an ID the log already holds is a
	// bug of the writer, not a retry: it is refused and stores nothing.
	mixed := append(mkN(t, id, 1, 1), a[0])
	mixed[1].Seq = 0
	_, err := s.Append(ctxOf(t), subj, last, mixed)
	if !errors.Is(err, events.ErrInvalidAppend) || events.IsConflict(err) {
		t.Fatalf("Append reusing a stored ID: %v, want ErrInvalidAppend", err)
	}
	if got := mustLastSeq(t, s, subj); got != last {
		t.Fatalf("LastSeq = %d, want %d", got, last)
	}
}

func testLoadAfter(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	evs := mkN(t, id, 0, 5)
	mustAppend(t, s, subj, 0, evs[:2])
	mustAppend(t, s, subj, evs[1].Seq, evs[2:])
	for i := range evs {
		sameEvents(t, mustLoad(t, s, subj, evs[i].Seq), evs[i+1:])
		sameEvents(t, mustLoad(t, s, subj, evs[i].Seq-1), evs[i:])
	}
	if got := mustLoad(t, s, subj, evs[4].Seq+100); len(got) != 0 {
		t.Fatalf("Load after the end: %d events", len(got))
	}
	if got := mustLoad(t, s, events.JobSubject(newID()), 0); len(got) != 0 {
		t.Fatalf("Load of an empty subject: %d events", len(got))
	}
}

func testLastSeq(t *testing.T, s events.Store) {
	id, other := newID(), newID()
	subj := events.JobSubject(id)
	if got := mustLastSeq(t, s, subj); got != 0 {
		t.Fatalf("LastSeq of an empty subject = %d", got)
	}
	a := mustAppend(t, s, subj, 0, mkN(t, id, 0, 1))
	if got := mustLastSeq(t, s, subj); got != a {
		t.Fatalf("LastSeq = %d, want %d", got, a)
	}
	mustAppend(t, s, events.JobSubject(other), 0, mkN(t, other, 0, 2))
	if got := mustLastSeq(t, s, subj); got != a {
		t.Fatalf("LastSeq = %d after another subject moved, want %d", got, a)
	}
	b := mustAppend(t, s, subj, a, mkN(t, id, 1, 2))
	if got := mustLastSeq(t, s, subj); got != b {
		t.Fatalf("LastSeq = %d, want %d", got, b)
	}
}

func testSubjectsIndependent(t *testing.T, s events.Store) {
	ids := []string{newID(), newID()}
	last := map[string]uint64{}
	want := map[string][]events.Event{}
	var all []events.Event
	for i := range 6 {
		id := ids[i%2]
		subj := events.JobSubject(id)
		evs := mkN(t, id, i, 1)
		last[subj] = mustAppend(t, s, subj, last[subj], evs)
		want[subj] = append(want[subj], evs...)
		all = append(all, evs...)
	}
	checkSeqs(t, all) // one sequence over all subjects
	for subj, w := range want {
		sameEvents(t, mustLoad(t, s, subj, 0), w)
	}
	// Kinds are separate aggregates even with the same ID.
	agent := mk(t, events.KindAgent, ids[0], 9)
	mustAppend(t, s, agent.Subject(), 0, []events.Event{agent})
	sameEvents(t, mustLoad(t, s, events.JobSubject(ids[0]), 0), want[events.JobSubject(ids[0])])
}

func testInvalid(t *testing.T, s events.Store) {
	ctx := ctxOf(t)
	id := newID()
	subj := events.JobSubject(id)
	noID := mkN(t, id, 0, 1)
	noID[0].ID = uuid.Nil
	badVersion := mkN(t, id, 0, 1)
	badVersion[0].Version = 0
	dup := mkN(t, id, 0, 2)
	dup[1].ID = dup[0].ID
	cases := map[string]struct {
		subject string
		evs     []events.Event
	}{
		"no events":       {subj, nil},
		"wrong subject":   {events.JobSubject(newID()), mkN(t, id, 0, 1)},
		"mixed subjects":  {subj, append(mkN(t, id, 0, 1), mkN(t, newID(), 1, 1)...)},
		"missing id":      {subj, noID},
		"malformed":       {subj, badVersion},
		"repeated id":     {subj, dup},
		"wildcard":        {events.SubjectPrefix + "job.*", mkN(t, id, 0, 1)},
		"too many events": {subj, mkN(t, id, 0, events.MaxAppend+1)},
	}
	for name, c := range cases {
		_, err := s.Append(ctx, c.subject, 0, c.evs)
		if !errors.Is(err, events.ErrInvalidAppend) || events.IsConflict(err) {
			t.Errorf("%s: Append: %v, want ErrInvalidAppend", name, err)
		}
	}
	if got := mustLastSeq(t, s, subj); got != 0 {
		t.Fatalf("invalid appends stored events: LastSeq = %d", got)
	}
	if _, err := s.Load(ctx, events.SubjectPrefix+"job.>", 0); !errors.Is(err, events.ErrInvalidAppend) {
		t.Errorf("Load with a wildcard: %v", err)
	}
	if _, err := s.LastSeq(ctx, ""); !errors.Is(err, events.ErrInvalidAppend) {
		t.Errorf("LastSeq of an empty subject name: %v", err)
	}
	for _, f := range []string{"", "a..b", "a.>.b", "a.b*"} {
		err := s.Subscribe(ctx, f, 0, func(events.Event) error { return nil })
		if !errors.Is(err, events.ErrInvalidAppend) {
			t.Errorf("Subscribe(%q): %v", f, err)
		}
	}
}

func testCopies(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	evs := mkN(t, id, 0, 2)
	mustAppend(t, s, subj, 0, evs)
	want := mustLoad(t, s, subj, 0)
	want = append([]events.Event(nil), want...)
	for i := range want {
		want[i].Data = append([]byte(nil), want[i].Data...)
	}

	scribble := func(evs []events.Event) {
		for i := range evs {
			for j := range evs[i].Data {
				evs[i].Data[j] = 'X'
			}
			evs[i].Actor = "mallory"
		}
	}
	scribble(evs)
	got := mustLoad(t, s, subj, 0)
	sameEvents(t, got, want)
	scribble(got)
	sameEvents(t, mustLoad(t, s, subj, 0), want)

	ctx, cancel := context.WithCancel(ctxOf(t))
	defer cancel()
	n := 0
	err := s.Subscribe(ctx, subj, 0, func(e events.Event) error {
		scribble([]events.Event{e})
		if n++; n == len(want) {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe: %v", err)
	}
	sameEvents(t, mustLoad(t, s, subj, 0), want)
}

// subscription runs Subscribe in a goroutine the test owns and hands the
// events over a channel.
type subscription struct {
	events chan events.Event
	done   chan error
	cancel context.CancelFunc
}

func subscribe(t *testing.T, s events.Store, filter string, after uint64) *subscription {
	ctx, cancel := context.WithCancel(ctxOf(t))
	sub := &subscription{events: make(chan events.Event), done: make(chan error, 1), cancel: cancel}
	go func() {
		sub.done <- s.Subscribe(ctx, filter, after, func(e events.Event) error {
			select {
			case sub.events <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	t.Cleanup(func() { sub.stop(t) })
	return sub
}

func (sub *subscription) next(t *testing.T) events.Event {
	t.Helper()
	select {
	case e := <-sub.events:
		return e
	case err := <-sub.done:
		sub.done <- err
		t.Fatalf("Subscribe ended: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("no event within", waitTimeout)
	}
	panic("unreachable")
}

// expect fails unless the next events are want, in order.
func (sub *subscription) expect(t *testing.T, want ...events.Event) {
	t.Helper()
	got := make([]events.Event, len(want))
	for i := range got {
		got[i] = sub.next(t)
	}
	sameEvents(t, got, want)
}

// stop cancels Subscribe and waits for it to return; it returns ctx's error.
func (sub *subscription) stop(t *testing.T) error {
	sub.cancel()
	select {
	case err := <-sub.done:
		sub.done <- err
		return err
	case <-time.After(waitTimeout):
		t.Fatal("Subscribe did not return after cancel")
		return nil
	}
}

func testSubscribeFromStart(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	evs := mkN(t, id, 0, 4)
	mustAppend(t, s, subj, 0, evs[:1])
	mustAppend(t, s, subj, evs[0].Seq, evs[1:])
	sub := subscribe(t, s, subj, 0)
	sub.expect(t, evs...)
}

func testSubscribeFromMiddle(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	evs := mkN(t, id, 0, 4)
	mustAppend(t, s, subj, 0, evs)
	sub := subscribe(t, s, subj, evs[1].Seq)
	sub.expect(t, evs[2:]...)
	// Nothing else was delivered in between: the next event is a new one.
	more := mkN(t, id, 4, 1)
	mustAppend(t, s, subj, evs[3].Seq, more)
	sub.expect(t, more...)
}

func testSubscribeLive(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	sub := subscribe(t, s, subj, 0)
	var last uint64
	for i := range 3 {
		evs := mkN(t, id, i*2, 1+i%2)
		last = mustAppend(t, s, subj, last, evs)
		sub.expect(t, evs...)
	}
	if err := sub.stop(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v after cancel, want context.Canceled", err)
	}
}

func testSubscribeWildcard(t *testing.T, s events.Store) {
	// A kind of its own gives the test a namespace for '>' filters.
	kind := newID()
	a, b := newID(), newID()
	subjA, subjB := events.Subject(kind, a), events.Subject(kind, b)
	ea := []events.Event{mk(t, kind, a, 0), mk(t, kind, a, 2)}
	eb := []events.Event{mk(t, kind, b, 1), mk(t, kind, b, 3)}
	mustAppend(t, s, subjA, 0, ea[:1])
	mustAppend(t, s, subjB, 0, eb[:1])

	all := subscribe(t, s, events.SubjectPrefix+kind+".>", 0)
	star := subscribe(t, s, events.SubjectPrefix+"*."+b, 0)
	all.expect(t, ea[0], eb[0])
	star.expect(t, eb[0])

	mustAppend(t, s, subjA, ea[0].Seq, ea[1:])
	mustAppend(t, s, subjB, eb[0].Seq, eb[1:])
	all.expect(t, ea[1], eb[1])
	star.expect(t, eb[1])

	// A subscription from the middle of the log across subjects.
	mid := subscribe(t, s, events.SubjectPrefix+kind+".*", eb[0].Seq)
	mid.expect(t, ea[1], eb[1])
}

func testSubscribeFnError(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	mustAppend(t, s, subj, 0, mkN(t, id, 0, 4))
	errStop := errors.New("stop here")
	calls := 0
	err := s.Subscribe(ctxOf(t), subj, 0, func(events.Event) error {
		if calls++; calls == 2 {
			return fmt.Errorf("handler: %w", errStop)
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("Subscribe returned %v, want the handler's error", err)
	}
	if calls != 2 {
		t.Fatalf("handler called %d times, want 2", calls)
	}
}

func testSubscribeCancel(t *testing.T, s events.Store) {
	id := newID()
	subj := events.JobSubject(id)
	mustAppend(t, s, subj, 0, mkN(t, id, 0, 1))

	ctx, cancel := context.WithCancel(ctxOf(t))
	cancel()
	if err := s.Subscribe(ctx, subj, 0, func(events.Event) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe with a cancelled ctx: %v", err)
	}

	// Cancelled while waiting for new events.
	sub := subscribe(t, s, subj, 0)
	sub.next(t)
	if err := sub.stop(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v after cancel, want context.Canceled", err)
	}

	// Deadline while waiting.
	dctx, dcancel := context.WithTimeout(ctxOf(t), 50*time.Millisecond)
	defer dcancel()
	err := s.Subscribe(dctx, subj, 0, func(events.Event) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe returned %v at its deadline, want context.DeadlineExceeded", err)
	}
}

// testConcurrentWriters races writers that each load the subject, decide
// on what they saw and append with that expectation, retrying on conflict,
// like every ferry writer does. Each decision records the position it was
// made at; the log is right when every event sits at the position its
// writer saw, every logical write appears exactly once, and batches stay
// whole.
func testConcurrentWriters(t *testing.T, s events.Store) {
	const writers, writes = 6, 8
	id := newID()
	subj := events.JobSubject(id)
	ctx := ctxOf(t)
	var conflicts atomic.Int64

	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			var seen []events.Event // this writer's view of the subject
			for op := range writes {
				parts := 1 + op%2 // every other write is a two-event batch
				for attempt := 0; ; attempt++ {
					if attempt == 10_000 {
						t.Errorf("writer %d op %d: no success after %d attempts", w, op, attempt)
						return
					}
					var last uint64
					if len(seen) > 0 {
						last = seen[len(seen)-1].Seq
					}
					more, err := s.Load(ctx, subj, last)
					if err != nil {
						t.Errorf("writer %d: Load: %v", w, err)
						return
					}
					seen = append(seen, more...)
					if len(seen) > 0 {
						last = seen[len(seen)-1].Seq
					}
					// Decide: the events carry who, which write, and the position.
					evs := make([]events.Event, parts)
					for p := range evs {
						ev, err := events.New(events.KindJob, id, events.Meta{Time: timeBase}, &events.FileProgressed{
							FileIndex:        w,
							BytesTransferred: int64(op*2 + p),
							BytesTotal:       int64(len(seen) + p),
						})
						if err != nil {
							t.Error(err)
							return
						}
						evs[p] = ev
					}
					if err := events.AssignIDs(evs); err != nil {
						t.Error(err)
						return
					}
					_, err = s.Append(ctx, subj, last, evs)
					if events.IsConflict(err) {
						conflicts.Add(1)
						continue
					}
					if err != nil {
						t.Errorf("writer %d op %d: Append: %v", w, op, err)
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	log := mustLoad(t, s, subj, 0)
	checkSeqs(t, log)
	wantN := 0
	for op := range writes {
		wantN += writers * (1 + op%2)
	}
	if len(log) != wantN {
		t.Fatalf("%d events stored, want %d", len(log), wantN)
	}
	type write struct{ w, part int }
	seen := map[write]int{}
	for i := range log {
		p, err := log[i].Payload()
		if err != nil {
			t.Fatal(err)
		}
		fp := p.(*events.FileProgressed)
		if fp.BytesTotal != int64(i) {
			t.Fatalf("event %d was decided at position %d: a write was lost or doubled", i, fp.BytesTotal)
		}
		seen[write{fp.FileIndex, int(fp.BytesTransferred)}]++
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("writer %d part %d stored %d times", k.w, k.part, n)
		}
	}
	t.Logf("%d events by %d writers with %d conflicts", len(log), writers, conflicts.Load())
}
