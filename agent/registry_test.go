package agent

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// regRig is a NATS server with the event stream, seen by the test through
// its own connection.
type regRig struct {
	t     *testing.T
	ns    *server.Server
	js    jetstream.JetStream
	store events.Store
	kv    jetstream.KeyValue
}

func newRegRig(t *testing.T) *regRig {
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
	kv, err := events.EnsureAgentsBucket(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return &regRig{t: t, ns: ns, js: js, store: store, kv: kv}
}

// runningAgent is an agent on a connection of its own, so that a test can
// cut it off as a crash would.
type runningAgent struct {
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

func (r *regRig) start(id string) *runningAgent {
	r.t.Helper()
	nc, err := nats.Connect(r.ns.ClientURL())
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		r.t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(context.Background(), js)
	if err != nil {
		r.t.Fatal(err)
	}
	a, err := New(Config{ID: id, Pool: "edge", Root: r.t.TempDir(), Slots: 3, Heartbeat: 200 * time.Millisecond}, zerolog.Nop(), js, store)
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{nc: nc, cancel: cancel, done: make(chan error, 1)}
	var wg sync.WaitGroup
	wg.Go(func() { ra.done <- a.Run(ctx) })
	r.t.Cleanup(func() { cancel(); wg.Wait() })
	return ra
}

// stop cancels the agent and waits for Run to return.
func (ra *runningAgent) stop(t *testing.T) {
	t.Helper()
	ra.cancel()
	select {
	case err := <-ra.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not stop")
	}
}

// eventually polls cond (a condition on the server's state, not a timer)
// until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *regRig) entry(id string) (events.AgentEntry, uint64, bool) {
	e, err := r.kv.Get(context.Background(), id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return events.AgentEntry{}, 0, false
	}
	if err != nil {
		r.t.Fatal(err)
	}
	var ae events.AgentEntry
	if err := json.Unmarshal(e.Value(), &ae); err != nil {
		r.t.Fatal(err)
	}
	return ae, e.Revision(), true
}

// sessions is the agent's events as "AgentJoined" and "AgentLeft:<reason>".
func (r *regRig) sessions(id string) []string {
	evs, err := r.store.Load(context.Background(), events.AgentSubject(id), 0)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []string
	for i := range evs {
		p, err := evs[i].Payload()
		if err != nil {
			r.t.Fatal(err)
		}
		switch p := p.(type) {
		case *events.AgentJoined:
			out = append(out, "AgentJoined")
		case *events.AgentLeft:
			out = append(out, "AgentLeft:"+p.Reason)
		}
	}
	return out
}

func (r *regRig) sessionsAre(id string, want ...string) func() bool {
	return func() bool { return slices.Equal(r.sessions(id), want) }
}

func TestRegistryTTL(t *testing.T) {
	for every, want := range map[time.Duration]time.Duration{
		5 * time.Second: 15 * time.Second, 200 * time.Millisecond: time.Second, 700 * time.Millisecond: 3 * time.Second, 0: time.Second,
	} {
		if got := registryTTL(every); got != want {
			t.Errorf("registryTTL(%v) = %v, want %v", every, got, want)
		}
	}
}

// An agent registers with its identity, pool, build, capacity and disk,
// heartbeats, and on a clean stop writes AgentLeft graceful and removes its
// entry.
func TestRegistryJoinHeartbeatGracefulLeave(t *testing.T) {
	r := newRegRig(t)
	ra := r.start("host-1")
	eventually(t, "the entry and AgentJoined", func() bool {
		_, _, ok := r.entry("host-1")
		return ok && r.sessionsAre("host-1", "AgentJoined")()
	})
	e, rev, _ := r.entry("host-1")
	if e.ID != "host-1" || e.Pool != "edge" || e.Slots != 3 || e.Principal != "agent/host-1" || e.Version == "" ||
		e.TTLSec != 1 || e.FreeBytes == 0 || e.StartedAt.IsZero() || e.LastSeen.Before(e.StartedAt) {
		t.Errorf("entry %+v", e)
	}
	evs, err := r.store.Load(context.Background(), events.AgentSubject("host-1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := evs[0].Payload()
	if j := p.(*events.AgentJoined); *j != (events.AgentJoined{Agent: "host-1", Principal: "agent/host-1", Pool: "edge", Version: e.Version, Slots: 3}) ||
		evs[0].Actor != "agent/host-1" {
		t.Errorf("AgentJoined %+v by %s", j, evs[0].Actor)
	}
	eventually(t, "a heartbeat", func() bool {
		_, now, ok := r.entry("host-1")
		return ok && now > rev
	})
	ra.stop(t)
	if got := r.sessions("host-1"); !slices.Equal(got, []string{"AgentJoined", "AgentLeft:graceful"}) {
		t.Errorf("events %v", got)
	}
	if _, _, ok := r.entry("host-1"); ok {
		t.Error("the entry is still there after a graceful leave")
	}
}

// A crashed agent's entry expires; when it comes back before anyone ended
// its session, it ends it itself (AgentLeft expired) in one batch with its
// new AgentJoined.
func TestRegistryCrashExpiresAndRestart(t *testing.T) {
	r := newRegRig(t)
	w, err := r.kv.Watch(context.Background(), "host-2", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	ra := r.start("host-2")
	eventually(t, "AgentJoined", r.sessionsAre("host-2", "AgentJoined"))
	ra.nc.Close() // the host dies: no heartbeat, no goodbye
	ra.stop(t)
	// The server removes the entry after its TTL and says so.
	deadline := time.After(20 * time.Second)
	for expired := false; !expired; {
		select {
		case e := <-w.Updates():
			expired = e != nil && e.Operation() == jetstream.KeyValuePurge
		case <-deadline:
			t.Fatal("the entry did not expire")
		}
	}
	if got := r.sessions("host-2"); !slices.Equal(got, []string{"AgentJoined"}) {
		t.Fatalf("events after the crash %v", got)
	}
	ra = r.start("host-2")
	eventually(t, "the restart", r.sessionsAre("host-2", "AgentJoined", "AgentLeft:expired", "AgentJoined"))
	ra.stop(t)
	if got := r.sessions("host-2"); !slices.Equal(got, []string{"AgentJoined", "AgentLeft:expired", "AgentJoined", "AgentLeft:graceful"}) {
		t.Errorf("events %v", got)
	}
}

// An agent whose entry vanished while it ran (it was cut off past its TTL)
// joins again at its next heartbeat.
func TestRegistryRejoinsAfterItsEntryVanished(t *testing.T) {
	r := newRegRig(t)
	ra := r.start("host-3")
	eventually(t, "AgentJoined", r.sessionsAre("host-3", "AgentJoined"))
	if err := r.kv.Purge(context.Background(), "host-3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the rejoin", func() bool {
		_, _, ok := r.entry("host-3")
		return ok && r.sessionsAre("host-3", "AgentJoined", "AgentLeft:expired", "AgentJoined")()
	})
	ra.stop(t)
	if got := r.sessions("host-3"); got[len(got)-1] != "AgentLeft:graceful" {
		t.Errorf("events %v", got)
	}
}
