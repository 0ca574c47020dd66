package consume_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/consume"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// logBuffer is a zerolog destination tests can read while consumers write.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type env struct {
	t     *testing.T
	ns    *server.Server
	js    jetstream.JetStream
	store *events.JetStreamStore
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ns, _, js := eventstest.StartServer(t)
	ctx := context.Background()
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ns: ns, js: js, store: store}
}

// process is a separate connection to the server: what another run of a
// consumer program has.
func (e *env) process() jetstream.JetStream {
	e.t.Helper()
	nc, err := nats.Connect(e.ns.ClientURL())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	return js
}

// appendQueued appends n JobQueued events to job id and returns their
// sequences.
func (e *env) appendQueued(id string, n int) []uint64 {
	e.t.Helper()
	ctx := context.Background()
	var seqs []uint64
	for range n {
		ev, err := events.New(events.KindJob, id, events.Meta{Time: time.Now(), Actor: "test"}, &events.JobQueued{Reason: "resume"})
		if err != nil {
			e.t.Fatal(err)
		}
		evs := []events.Event{ev}
		if err := events.AssignIDs(evs); err != nil {
			e.t.Fatal(err)
		}
		last, err := e.store.LastSeq(ctx, events.JobSubject(id))
		if err != nil {
			e.t.Fatal(err)
		}
		seq, err := e.store.Append(ctx, events.JobSubject(id), last, evs)
		if err != nil {
			e.t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

// publishRaw stores body on subject as it is, the way a recorded or foreign
// message would be.
func (e *env) publishRaw(subject string, body []byte) uint64 {
	e.t.Helper()
	ack, err := e.js.Publish(context.Background(), subject, body)
	if err != nil {
		e.t.Fatal(err)
	}
	return ack.Sequence
}

// run runs c until the returned stop is called; stop returns Run's error.
func run(t *testing.T, c *consume.Consumer) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// recv waits for the next value on ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func consumerInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(context.Background(), events.StreamName, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestResumeAfterRestart: a consumer program stops (once between events,
// once in the middle of a handler) and starts again with a new connection;
// it carries on after the last acknowledged event, loses nothing, and gets
// no acknowledged event again. The event it was handling when it stopped
// comes first, at once (not after the ack wait).
func TestResumeAfterRestart(t *testing.T) {
	e := newEnv(t)
	first := e.appendQueued("job-a", 3)

	type got struct {
		run int
		seq uint64
	}
	seen := make(chan got, 100)
	block := make(chan struct{}) // closed: the handler of run 2 stops blocking
	handler := func(runNo int) consume.Handler {
		return func(ctx context.Context, ev events.Event) error {
			if _, err := ev.Payload(); err != nil {
				return err
			}
			if runNo == 2 && ev.Seq == first[2]+2 {
				// Hold the second new event until the program stops.
				seen <- got{runNo, ev.Seq}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-block:
				}
			}
			seen <- got{runNo, ev.Seq}
			return nil
		}
	}
	open := func(runNo int) *consume.Consumer {
		c, err := consume.New(context.Background(), e.process(), "printer", []string{"ferry.evt.job.>"}, handler(runNo),
			consume.Options{StartSeq: 1, AckWait: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	stop := run(t, open(1))
	for _, want := range first {
		if g := recv(t, seen, "run 1"); g.seq != want {
			t.Fatalf("run 1 got seq %d, want %d", g.seq, want)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// Between runs: new events. The second run ends in the middle of the
	// second one.
	second := e.appendQueued("job-a", 3)
	stop = run(t, open(2))
	if g := recv(t, seen, "run 2, first new event"); g.seq != second[0] {
		t.Fatalf("run 2 started at seq %d, want %d (after the last acknowledged)", g.seq, second[0])
	}
	if g := recv(t, seen, "run 2, blocked handler"); g.seq != second[1] {
		t.Fatalf("run 2 then got seq %d, want %d", g.seq, second[1])
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// The third run starts with the interrupted event, well before the
	// 30 s ack wait, and sees each remaining event once.
	close(block)
	stop = run(t, open(3))
	for _, want := range second[1:] {
		if g := recv(t, seen, "run 3"); g.seq != want {
			t.Fatalf("run 3 got seq %d, want %d", g.seq, want)
		}
	}
	waitAcked(t, e.js, "printer", second[2])
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	select {
	case g := <-seen:
		t.Fatalf("an acknowledged event came again: %+v", g)
	default:
	}
	info := consumerInfo(t, e.js, "printer")
	if info.NumRedelivered != 0 || info.NumAckPending != 0 || info.NumPending != 0 {
		t.Fatalf("consumer after the runs: redelivered %d, ack pending %d, pending %d", info.NumRedelivered, info.NumAckPending, info.NumPending)
	}
}

// waitAcked waits until the durable's acknowledged floor reaches seq: from
// then on the server never delivers an event up to seq again.
func waitAcked(t *testing.T, js jetstream.JetStream, name string, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info := consumerInfo(t, js, name)
		if info.AckFloor.Stream >= seq && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ack floor %d, %d pending; want %d", info.AckFloor.Stream, info.NumAckPending, seq)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not timing
	}
}

// TestHandlerErrorRedelivers: an event whose handler fails comes back after
// the retry delay, events after it wait for it (order is kept), and it is
// acknowledged once the handler accepts it.
func TestHandlerErrorRedelivers(t *testing.T) {
	e := newEnv(t)
	seqs := e.appendQueued("job-b", 3)
	var logs logBuffer
	calls := make(chan uint64, 100)
	failures := 2
	h := func(ctx context.Context, ev events.Event) error {
		calls <- ev.Seq
		if ev.Seq == seqs[1] && failures > 0 {
			failures--
			return errors.New("downstream unavailable")
		}
		return nil
	}
	c, err := consume.New(context.Background(), e.js, "flaky", nil, h,
		consume.Options{RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond, Log: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	want := []uint64{seqs[0], seqs[1], seqs[1], seqs[1], seqs[2]}
	var gotCalls []uint64
	for range want {
		gotCalls = append(gotCalls, recv(t, calls, "handler call"))
	}
	if !slices.Equal(gotCalls, want) {
		t.Fatalf("handler calls %v, want %v", gotCalls, want)
	}
	waitAcked(t, e.js, "flaky", seqs[2])
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "handler failed"); n != 2 {
		t.Fatalf("%d handler failures logged, want 2:\n%s", n, logs.String())
	}
}

// TestDecodesEveryRecordedVersion: every golden envelope (every type and
// version ever written) arrives typed and upcast to its current version;
// JobTransientError v1 reads as v2 with attempt and retry_after_s 0 ("not
// recorded").
func TestDecodesEveryRecordedVersion(t *testing.T) {
	e := newEnv(t)
	files, err := filepath.Glob("../testdata/golden/events/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden events: %v", err)
	}
	want := map[uint64]string{} // seq -> file
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := events.Unmarshal(body)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		want[e.publishRaw(ev.Subject(), bytes.TrimSpace(body))] = filepath.Base(f)
	}
	got := make(chan events.Event, len(want))
	c, err := consume.New(context.Background(), e.js, "typed", nil, func(ctx context.Context, ev events.Event) error {
		got <- ev
		return nil
	}, consume.Options{Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	current := events.Types()
	v1Seen := false
	for i := range len(want) {
		ev := recv(t, got, fmt.Sprintf("golden event %d of %d", i, len(want)))
		file := want[ev.Seq]
		if file != fmt.Sprintf("%s.v%d.json", ev.Type, ev.Version) {
			t.Fatalf("seq %d: event %s v%d, published from %s", ev.Seq, ev.Type, ev.Version, file)
		}
		p, err := ev.Payload()
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if p.EventType() != ev.Type || p.EventVersion() != current[ev.Type] {
			t.Fatalf("%s decoded as %s v%d, want %s v%d", file, p.EventType(), p.EventVersion(), ev.Type, current[ev.Type])
		}
		if ev.Type == events.TypeJobTransientError && ev.Version == 1 {
			v1Seen = true
			te := p.(*events.JobTransientError)
			if te.Attempt != 0 || te.RetryAfterSec != 0 || te.Error.Code != "ERROR_WINHTTP_CANNOT_CONNECT" ||
				te.RetryAt.IsZero() || te.Error.FileIndex != 0 {
				t.Fatalf("JobTransientError v1 upcast to %+v", te)
			}
		}
	}
	if !v1Seen {
		t.Fatal("no JobTransientError v1 among the golden events")
	}
}

// TestPoisonIsTerminated: messages that are not ferry events are logged
// and terminated; the events around them are handled, and nothing is left
// pending.
func TestPoisonIsTerminated(t *testing.T) {
	e := newEnv(t)
	good1 := e.appendQueued("job-c", 1)[0]
	garbage := e.publishRaw(events.JobSubject("job-c"), []byte("not an event"))
	ev, err := events.New(events.KindJob, "job-d", events.Meta{Time: time.Now()}, &events.JobQueued{Reason: "resume"})
	if err != nil {
		t.Fatal(err)
	}
	evs := []events.Event{ev}
	if err := events.AssignIDs(evs); err != nil {
		t.Fatal(err)
	}
	body, err := events.Marshal(&evs[0])
	if err != nil {
		t.Fatal(err)
	}
	misplaced := e.publishRaw(events.JobSubject("job-c"), body) // job-d's envelope on job-c's subject
	badData := e.publishRaw(events.JobSubject("job-c"),
		[]byte(`{"id":"01a19b98-7482-7000-8000-020100000099","type":"JobQueued","v":1,"kind":"job","aggregate_id":"job-c","time":"2026-11-02T09:30:22Z","data":{"reason":42}}`))
	good2 := e.appendQueued("job-c", 1)[0]

	var logs logBuffer
	got := make(chan uint64, 10)
	c, err := consume.New(context.Background(), e.js, "strict", nil, func(ctx context.Context, ev events.Event) error {
		got <- ev.Seq
		return nil
	}, consume.Options{Log: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	if a, b := recv(t, got, "first event"), recv(t, got, "second event"); a != good1 || b != good2 {
		t.Fatalf("handled %d and %d, want %d and %d", a, b, good1, good2)
	}
	waitAcked(t, e.js, "strict", good2)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{garbage, misplaced, badData} {
		if !strings.Contains(logs.String(), fmt.Sprintf(`"seq":%d`, seq)) {
			t.Fatalf("poison message %d not logged:\n%s", seq, logs.String())
		}
	}
	if n := strings.Count(logs.String(), "terminating a message"); n != 3 {
		t.Fatalf("%d terminations logged, want 3:\n%s", n, logs.String())
	}
}

// TestUnknownType: an event newer than the program stops Run (UnknownStop)
// without being acknowledged; with UnknownDeliver the handler gets it, and
// its Payload says why it cannot be decoded.
func TestUnknownType(t *testing.T) {
	e := newEnv(t)
	known := e.appendQueued("job-e", 1)[0]
	future := e.publishRaw(events.JobSubject("job-e"),
		[]byte(`{"id":"01a19b98-7482-7000-8000-0201000000aa","type":"JobQueued","v":7,"kind":"job","aggregate_id":"job-e","time":"2029-01-01T00:00:00Z","data":{"reason":"teleport"}}`))

	got := make(chan events.Event, 10)
	h := func(ctx context.Context, ev events.Event) error { got <- ev; return nil }
	c, err := consume.New(context.Background(), e.js, "cautious", nil, h, consume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.Run(ctx)
	if !errors.Is(err, events.ErrUnknownType) || ctx.Err() != nil {
		t.Fatalf("Run returned %v, want an error wrapping ErrUnknownType", err)
	}
	if ev := recv(t, got, "the known event"); ev.Seq != known {
		t.Fatalf("handled %d, want %d", ev.Seq, known)
	}

	c, err = consume.New(context.Background(), e.js, "cautious", nil, h, consume.Options{Unknown: consume.UnknownDeliver})
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	ev := recv(t, got, "the unknown event")
	if ev.Seq != future || ev.Version != 7 {
		t.Fatalf("got seq %d v%d, want %d v7", ev.Seq, ev.Version, future)
	}
	if _, err := ev.Payload(); !errors.Is(err, events.ErrUnknownType) {
		t.Fatalf("Payload: %v", err)
	}
	waitAcked(t, e.js, "cautious", future)
}

// TestNewRefusesBadArguments: every problem is reported at once.
func TestNewRefusesBadArguments(t *testing.T) {
	e := newEnv(t)
	_, err := consume.New(context.Background(), e.js, "bad.name", []string{"orders.>"}, nil,
		consume.Options{StartSeq: 3, StartTime: time.Now(), MaxAckPending: -1})
	if err == nil {
		t.Fatal("New accepted bad arguments")
	}
	for _, want := range []string{"durable name", "orders.>", "no handler", "StartSeq and StartTime", "max ack pending"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestRunReportsClosedConnection: Run does not spin on a connection that is
// gone; it says so.
func TestRunReportsClosedConnection(t *testing.T) {
	e := newEnv(t)
	js := e.process()
	c, err := consume.New(context.Background(), js, "orphan", nil, func(context.Context, events.Event) error { return nil }, consume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	js.Conn().Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Run(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("Run on a closed connection: %v (ctx %v)", err, ctx.Err())
	}
}
