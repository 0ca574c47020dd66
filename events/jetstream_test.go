package events_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
)

// newJetStreamStore starts a server of its own and opens the event stream
// on it.
func newJetStreamStore(t testing.TB) (*events.JetStreamStore, jetstream.JetStream) {
	t.Helper()
	_, _, js := eventstest.StartServer(t)
	if err := events.EnsureStream(t.Context(), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := events.NewJetStreamStore(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	return s, js
}

func TestJetStreamStore(t *testing.T) {
	eventstest.RunConformance(t, func(t *testing.T) events.Store {
		s, _ := newJetStreamStore(t)
		return s
	})
}

func TestEnsureStream(t *testing.T) {
	_, _, js := eventstest.StartServer(t)
	ctx := t.Context()
	if _, err := events.NewJetStreamStore(ctx, js); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("NewJetStreamStore without a stream: %v", err)
	}
	for range 2 { // idempotent
		if err := events.EnsureStream(ctx, js, events.StreamOptions{MaxBytes: 1 << 30}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if cfg.Subjects[0] != "ferry.evt.>" || cfg.Retention != jetstream.LimitsPolicy ||
		cfg.Storage != jetstream.FileStorage || cfg.Discard != jetstream.DiscardNew ||
		cfg.MaxAge != 0 || cfg.MaxMsgsPerSubject != -1 || cfg.MaxBytes != 1<<30 ||
		!cfg.DenyDelete || !cfg.AllowDirect || !cfg.AllowAtomicPublish ||
		cfg.Duplicates < 2*time.Minute || cfg.MaxMsgSize != 1<<20 || cfg.Replicas != 1 {
		t.Fatalf("stream config %+v", cfg)
	}

	_, err = events.StreamConfig(events.StreamOptions{Replicas: 7, MaxBytes: -1, Duplicates: time.Minute})
	if err == nil {
		t.Fatal("bad options accepted")
	}
	for _, want := range []string{"replicas 7", "max bytes -1", "duplicates window 1m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %q", err, want)
		}
	}
}

func newEvents(t testing.TB, id string, first, n int) []events.Event {
	t.Helper()
	evs := make([]events.Event, n)
	for i := range evs {
		ev, err := events.New(events.KindJob, id, events.Meta{Time: time.Unix(1_750_000_000, 0)},
			&events.JobQueued{Reason: "r" + strconv.Itoa(first+i)})
		if err != nil {
			t.Fatal(err)
		}
		evs[i] = ev
	}
	if err := events.AssignIDs(evs); err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestJetStreamHeaders checks what a stored message carries.
func TestJetStreamHeaders(t *testing.T) {
	s, js := newJetStreamStore(t)
	ctx := t.Context()
	subj := events.JobSubject("hdr")
	evs := newEvents(t, "hdr", 0, 3)
	if _, err := s.Append(ctx, subj, 0, evs[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, subj, evs[0].Seq, evs[1:]); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range evs {
		m, err := st.GetMsg(ctx, ev.Seq)
		if err != nil {
			t.Fatal(err)
		}
		h := m.Header
		if h.Get("Nats-Msg-Id") != ev.ID.String() || h.Get("Ferry-Event-Type") != ev.Type {
			t.Errorf("event %d: headers %v", i, h)
		}
		wantExp := map[int]string{0: "0", 1: strconv.FormatUint(evs[0].Seq, 10)}[i]
		if got := h.Get("Nats-Expected-Last-Subject-Sequence"); got != wantExp {
			t.Errorf("event %d: expected-last header %q, want %q", i, got, wantExp)
		}
		if i > 0 && h.Get("Nats-Batch-Sequence") != strconv.Itoa(i) {
			t.Errorf("event %d: batch headers %v", i, h)
		}
	}
}

// TestJetStreamConflictActual checks that conflicts report the subject's
// real last sequence, for single events and batches.
func TestJetStreamConflictActual(t *testing.T) {
	s, _ := newJetStreamStore(t)
	ctx := t.Context()
	subj := events.JobSubject("c")
	last, err := s.Append(ctx, subj, 0, newEvents(t, "c", 0, 2))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 3} {
		_, err := s.Append(ctx, subj, last-1, newEvents(t, "c", 10, n))
		var ce *events.ConflictError
		if !errors.As(err, &ce) || ce.Actual != last || ce.Expected != last-1 {
			t.Fatalf("%d events: got %v, want a conflict with Actual %d", n, err, last)
		}
	}
}

// TestJetStreamRecoverAppend checks the decision Append makes after a lost
// acknowledgement: stored events are recognised, and a resend never
// duplicates.
func TestJetStreamRecoverAppend(t *testing.T) {
	s, _ := newJetStreamStore(t)
	ctx := t.Context()
	subj := events.JobSubject("r")

	for _, n := range []int{1, 3} {
		before, err := s.LastSeq(ctx, subj)
		if err != nil {
			t.Fatal(err)
		}
		evs := newEvents(t, "r", int(before), n)
		// Not stored: recovery says so, and the resend stores them once.
		if _, ok, err := s.RecoverAppend(ctx, subj, evs); err != nil || ok {
			t.Fatalf("RecoverAppend before the append: %v, %v", ok, err)
		}
		last, err := s.Append(ctx, subj, before, evs)
		if err != nil {
			t.Fatal(err)
		}
		// Stored, ack "lost": recovery finds them and gives their seqs.
		again := append([]events.Event(nil), evs...)
		for i := range again {
			again[i].Seq = 0
		}
		got, ok, err := s.RecoverAppend(ctx, subj, again)
		if err != nil || !ok || got != last {
			t.Fatalf("RecoverAppend after the append: %d, %v, %v; want %d, true", got, ok, err, last)
		}
		for i := range again {
			if again[i].Seq != evs[i].Seq {
				t.Fatalf("event %d: recovered Seq %d, want %d", i, again[i].Seq, evs[i].Seq)
			}
		}
	}

	// Stored, then another writer chained on them: the last message is not
	// ours, so Append resends; the resend must resolve to the original
	// sequences and store nothing.
	evs := newEvents(t, "r", 100, 2)
	before, _ := s.LastSeq(ctx, subj)
	last, err := s.Append(ctx, subj, before, evs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, subj, last, newEvents(t, "r", 200, 1)); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.RecoverAppend(ctx, subj, evs); ok {
		t.Fatal("RecoverAppend claimed events that are not last")
	}
	n0 := mustCount(t, s, subj)
	s.LoseAcks(1)
	got, err := s.Append(ctx, subj, before, evs)
	if err != nil || got != last {
		t.Fatalf("resend: %d, %v; want %d", got, err, last)
	}
	if n := mustCount(t, s, subj); n != n0 {
		t.Fatalf("resend stored %d events", n-n0)
	}
}

// TestJetStreamLostAcks appends while acknowledgements get lost: the
// messages reach the server but the store sees timeouts, reads, and
// resends. Every append must succeed exactly once.
func TestJetStreamLostAcks(t *testing.T) {
	s, _ := newJetStreamStore(t)
	ctx := t.Context()
	subj := events.JobSubject("lost")
	var last uint64
	var want int
	for i := range 12 {
		n := 1 + i%3
		evs := newEvents(t, "lost", want, n)
		s.LoseAcks(int32(1 + i%3))
		got, err := s.Append(ctx, subj, last, evs)
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		if got != evs[n-1].Seq || evs[0].Seq <= last {
			t.Fatalf("append %d: returned %d, seqs %d..%d after %d", i, got, evs[0].Seq, evs[n-1].Seq, last)
		}
		last, want = got, want+n
		if c := mustCount(t, s, subj); c != want {
			t.Fatalf("append %d: %d events stored, want %d", i, c, want)
		}
	}
}

func mustCount(t *testing.T, s events.Store, subj string) int {
	t.Helper()
	evs, err := s.Load(t.Context(), subj, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.ID.String()] {
			t.Fatalf("event %s stored twice", e.ID)
		}
		seen[e.ID.String()] = true
	}
	return len(evs)
}

// TestJetStreamLoadLarge loads more events than one direct get batch holds.
func TestJetStreamLoadLarge(t *testing.T) {
	s, _ := newJetStreamStore(t)
	ctx := t.Context()
	subj := events.JobSubject("big")
	const n = 2500
	var last uint64
	for first := 0; first < n; first += events.MaxAppend {
		var err error
		if last, err = s.Append(ctx, subj, last, newEvents(t, "big", first, min(events.MaxAppend, n-first))); err != nil {
			t.Fatal(err)
		}
		// Interleave another subject.
		if _, err := s.Append(ctx, events.JobSubject("other"+strconv.Itoa(first)), 0, newEvents(t, "other"+strconv.Itoa(first), 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := s.Load(ctx, subj, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != n {
		t.Fatalf("loaded %d events, want %d", len(evs), n)
	}
	for i := range evs {
		p, err := evs[i].Payload()
		if err != nil {
			t.Fatal(err)
		}
		if r := p.(*events.JobQueued).Reason; r != "r"+strconv.Itoa(i) {
			t.Fatalf("event %d is %s", i, r)
		}
	}
	tail, err := s.Load(ctx, subj, evs[n-11].Seq)
	if err != nil || len(tail) != 10 {
		t.Fatalf("Load of the tail: %d events, %v", len(tail), err)
	}
}
