package coordinator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/rs/zerolog"
)

// Several coordinators that see one agent's entry go at once write exactly
// one AgentLeft expired between them.
func TestExpireAgentOnceAmongCoordinators(t *testing.T) {
	_, _, js := eventstest.StartServer(t)
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
	ev, err := events.New(events.KindAgent, "host-x", events.Meta{Time: time.Now(), Actor: "agent/host-x"}, &events.AgentJoined{Agent: "host-x", Pool: "default", Slots: 1})
	if err != nil {
		t.Fatal(err)
	}
	evs := []events.Event{ev}
	if err := events.AssignIDs(evs); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, events.AgentSubject("host-x"), 0, evs); err != nil {
		t.Fatal(err)
	}
	var svcs []*Service
	for range 8 {
		s, err := New(ctx, Config{Auth: &identity.Authenticator{}}, zerolog.Nop(), js, store)
		if err != nil {
			t.Fatal(err)
		}
		svcs = append(svcs, s)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, s := range svcs {
		wg.Go(func() {
			<-start
			if err := s.expireAgent(ctx, kv, "host-x"); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	got, err := store.Load(ctx, events.AgentSubject("host-x"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Type != events.TypeAgentLeft {
		t.Fatalf("%d events: %v", len(got), got)
	}
	p, _ := got[1].Payload()
	if l := p.(*events.AgentLeft); l.Reason != events.AgentLeftExpired {
		t.Errorf("AgentLeft %+v", l)
	}
}
