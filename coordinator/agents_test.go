package coordinator_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// agentsEventually polls cond (the state of the log or the registry) until
// it holds; 20 s without it fails the test.
func agentsEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// fakeAgent registers as an agent does (agent/registry.go): its entry with
// a TTL of ttl, then AgentJoined.
func (e *env) fakeAgent(id, pool string, ttl time.Duration, running int) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := events.EnsureAgentsBucket(ctx, e.js); err != nil {
		e.t.Fatal(err)
	}
	now := time.Now().UTC()
	data, _ := json.Marshal(events.AgentEntry{ID: id, Principal: "agent/" + id, Pool: pool, Version: "test", Slots: 4,
		Running: running, FreeBytes: 1 << 30, StartedAt: now, LastSeen: now, TTLSec: int64(ttl / time.Second)})
	if _, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: "$KV." + events.AgentsBucket + "." + id, Data: data}, jetstream.WithMsgTTL(ttl)); err != nil {
		e.t.Fatal(err)
	}
	e.appendAgent(id, &events.AgentJoined{Agent: id, Principal: "agent/" + id, Pool: pool, Version: "test", Slots: 4})
}

func (e *env) appendAgent(id string, p events.Payload) {
	e.t.Helper()
	ctx := context.Background()
	last, err := e.store.LastSeq(ctx, events.AgentSubject(id))
	if err != nil {
		e.t.Fatal(err)
	}
	ev, err := events.New(events.KindAgent, id, events.Meta{Time: time.Now(), Actor: "agent/" + id}, p)
	if err != nil {
		e.t.Fatal(err)
	}
	evs := []events.Event{ev}
	if err := events.AssignIDs(evs); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.store.Append(ctx, events.AgentSubject(id), last, evs); err != nil {
		e.t.Fatal(err)
	}
}

// agentEvents is the agent's events as "AgentJoined" and
// "AgentLeft:<reason>:<actor>".
func (e *env) agentEvents(id string) []string {
	evs, err := e.store.Load(context.Background(), events.AgentSubject(id), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for i := range evs {
		p, err := evs[i].Payload()
		if err != nil {
			e.t.Fatal(err)
		}
		switch p := p.(type) {
		case *events.AgentJoined:
			out = append(out, "AgentJoined")
		case *events.AgentLeft:
			out = append(out, "AgentLeft:"+p.Reason+":"+evs[i].Actor)
		}
	}
	return out
}

// startCoordinator runs another coordinator on e's JetStream.
func (e *env) startCoordinator() {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := coordinator.New(ctx, coordinator.Config{Auth: &identity.Authenticator{}, ReconcileInterval: time.Hour}, zerolog.Nop(), e.js, e.store)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = svc.Run(ctx) })
	e.t.Cleanup(func() { cancel(); wg.Wait() })
}

// An agent whose heartbeats stop expires: with two coordinators watching,
// its session ends with exactly one AgentLeft expired; an agent that keeps
// its entry stays.
func TestAgentExpires(t *testing.T) {
	e := newEnv(t)
	e.startCoordinator()
	e.fakeAgent("host-dead", "default", time.Second, 0)
	e.fakeAgent("host-alive", "default", time.Hour, 0)
	want := []string{"AgentJoined", "AgentLeft:expired:service/coordinator"}
	agentsEventually(t, "AgentLeft expired", func() bool { return slices.Equal(e.agentEvents("host-dead"), want) })
	// The agent comes back, then leaves gracefully: its session chains on
	// the one AgentLeft, and no coordinator adds another.
	e.fakeAgent("host-dead", "default", time.Hour, 0)
	e.appendAgent("host-dead", &events.AgentLeft{Agent: "host-dead", Reason: events.AgentLeftGraceful})
	kv, err := e.js.KeyValue(context.Background(), events.AgentsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(context.Background(), "host-dead"); err != nil {
		t.Fatal(err)
	}
	// A third coordinator's start-up sweep sees the log as it is now.
	e.startCoordinator()
	e.fakeAgent("host-barrier", "default", time.Second, 0)
	agentsEventually(t, "the barrier's expiry", func() bool { return len(e.agentEvents("host-barrier")) == 2 })
	if got := e.agentEvents("host-dead"); !slices.Equal(got, []string{"AgentJoined", "AgentLeft:expired:service/coordinator", "AgentJoined", "AgentLeft:graceful:agent/host-dead"}) {
		t.Errorf("host-dead: %v", got)
	}
	if got := e.agentEvents("host-alive"); !slices.Equal(got, []string{"AgentJoined"}) {
		t.Errorf("host-alive: %v", got)
	}
}

// An agent that expired while no coordinator watched (no entry, its last
// event AgentJoined) is ended by the next coordinator's sweep.
func TestAgentExpiredWhileNoCoordinatorRan(t *testing.T) {
	e := newEnv(t)
	e.appendAgent("host-gone", &events.AgentJoined{Agent: "host-gone", Pool: "default", Slots: 4})
	e.startCoordinator()
	agentsEventually(t, "AgentLeft expired", func() bool {
		return slices.Equal(e.agentEvents("host-gone"), []string{"AgentJoined", "AgentLeft:expired:service/coordinator"})
	})
}

// GET /v1/agents: administrators see every agent, users each pool's totals,
// agents nothing.
func TestListAgents(t *testing.T) {
	e := newEnv(t)
	if status, m, _ := e.do("GET", "/v1/agents", ""); status != http.StatusOK || len(m["pools"].([]any)) != 0 || m["agents"] != nil {
		t.Fatalf("before any agent: %d %v", status, m)
	}
	e.fakeAgent("host-1", "default", time.Hour, 2)
	e.fakeAgent("host-2", "default", time.Hour, 1)
	e.fakeAgent("host-3", "edge", time.Hour, 0)

	status, m, _ := e.doAs(e.as(identity.RoleAdmin, "root"), "GET", "/v1/agents", "")
	if status != http.StatusOK {
		t.Fatalf("admin: %d %v", status, m)
	}
	var ids []string
	for _, a := range m["agents"].([]any) {
		a := a.(map[string]any)
		if a["state"] != coordinator.AgentAlive || a["free_bytes"] != float64(1<<30) || a["principal"] != "agent/"+a["id"].(string) {
			t.Errorf("agent %v", a)
		}
		ids = append(ids, a["pool"].(string)+"/"+a["id"].(string))
	}
	if !slices.Equal(ids, []string{"default/host-1", "default/host-2", "edge/host-3"}) {
		t.Errorf("agents %v", ids)
	}

	status, m, _ = e.do("GET", "/v1/agents", "")
	b, _ := json.Marshal(m)
	if want := `{"pools":[{"agents":2,"pool":"default","running":3,"slots":8},{"agents":1,"pool":"edge","running":0,"slots":4}]}`; status != http.StatusOK || string(b) != want {
		t.Errorf("user: %d %s, want %s", status, b, want)
	}

	status, m, _ = e.doAs(e.as(identity.RoleAgent, "host-1"), "GET", "/v1/agents", "")
	if status != http.StatusForbidden || m["code"] != "E_ACCESSDENIED" {
		t.Errorf("agent: %d %v", status, m)
	}
}
