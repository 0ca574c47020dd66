package coordinator

// Agents. Each agent keeps an entry in the registry bucket ferry_agents
// with a per-key TTL and writes AgentJoined / AgentLeft "graceful" on its
// own subject (agent/registry.go). When an agent stops heartbeating, the
// server removes its entry and leaves a marker; coordinators watch the
// bucket and end the agent's session with AgentLeft "expired". That append
// chains on the subject's last sequence, so when several coordinators (or
// the agent itself, coming back) see it at once, exactly one AgentLeft is
// written. A sweep at start and every minute catches what no watcher saw
// (an agent that expired while no coordinator ran).
//
// GET /v1/agents lists the registry: administrators see every agent;
// users see each pool's totals only (agents, slots, running jobs), never
// host identities, builds or disks.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/nats-io/nats.go/jetstream"
)

// Agent states in GET /v1/agents.
const (
	AgentAlive = "alive"
	// AgentExpired: the entry outlived its TTL and the server has not
	// removed it yet.
	AgentExpired = "expired"
)

// AgentStatus is one agent in GET /v1/agents.
type AgentStatus struct {
	events.AgentEntry
	State string `json:"state"`
}

// PoolSummary is one pool's live agents in GET /v1/agents.
type PoolSummary struct {
	Pool    string `json:"pool"`
	Agents  int    `json:"agents"`
	Slots   int    `json:"slots"`
	Running int    `json:"running"`
}

// AgentsResponse answers GET /v1/agents. Agents is there for
// administrators only.
type AgentsResponse struct {
	Agents []AgentStatus `json:"agents,omitempty"`
	Pools  []PoolSummary `json:"pools"`
}

// agentSweepInterval is how often the coordinator looks for agents whose
// expiry no watcher saw.
const agentSweepInterval = time.Minute

// listAgents answers GET /v1/agents.
func (s *Service) listAgents(w http.ResponseWriter, r *http.Request, c caller) error {
	entries, err := s.agentEntries(r.Context())
	if err != nil {
		return err
	}
	now := time.Now()
	resp := AgentsResponse{Pools: []PoolSummary{}}
	pools := map[string]*PoolSummary{}
	for _, e := range entries {
		st := AgentStatus{AgentEntry: e, State: AgentAlive}
		if now.After(e.LastSeen.Add(time.Duration(e.TTLSec) * time.Second)) {
			st.State = AgentExpired
		}
		if c.admin() {
			resp.Agents = append(resp.Agents, st)
		}
		if st.State != AgentAlive {
			continue
		}
		p := pools[e.Pool]
		if p == nil {
			p = &PoolSummary{Pool: e.Pool}
			pools[e.Pool] = p
		}
		p.Agents++
		p.Slots += e.Slots
		p.Running += e.Running
	}
	for _, p := range pools {
		resp.Pools = append(resp.Pools, *p)
	}
	slices.SortFunc(resp.Pools, func(a, b PoolSummary) int { return strings.Compare(a.Pool, b.Pool) })
	slices.SortFunc(resp.Agents, func(a, b AgentStatus) int {
		return cmpOr(strings.Compare(a.Pool, b.Pool), strings.Compare(a.ID, b.ID))
	})
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// agentEntries reads every entry of the registry (none when no agent ever
// registered).
func (s *Service) agentEntries(ctx context.Context) ([]events.AgentEntry, error) {
	kv, err := s.js.KeyValue(ctx, events.AgentsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("coordinator: agent registry: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("coordinator: agent registry: %w", err)
	}
	defer w.Stop()
	var out []events.AgentEntry
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("coordinator: agent registry: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return out, nil
			}
			if e == nil {
				return out, nil // the initial values are all there
			}
			var ae events.AgentEntry
			if err := json.Unmarshal(e.Value(), &ae); err != nil {
				s.log.Warn().Err(err).Str("key", e.Key()).Msg("malformed agent registry entry")
				continue
			}
			out = append(out, ae)
		}
	}
}

// agentLoop ends the sessions of agents whose registry entries expired,
// until ctx ends. A failure of NATS is logged and retried.
func (s *Service) agentLoop(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for {
		err := s.watchAgents(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn().Err(err).Msg("watching the agent registry failed; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (s *Service) watchAgents(ctx context.Context) error {
	kv, err := events.EnsureAgentsBucket(ctx, s.js)
	if err != nil {
		return err
	}
	// Watch first, then sweep: nothing that expires in between is missed.
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("watch agent registry: %w", err)
	}
	defer w.Stop()
	if err := s.sweepAgents(ctx, kv); err != nil {
		return err
	}
	t := time.NewTicker(agentSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.sweepAgents(ctx, kv); err != nil {
				return err
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("agent registry watch ended")
			}
			if e == nil || e.Operation() == jetstream.KeyValuePut {
				continue
			}
			if err := s.expireAgent(ctx, kv, e.Key()); err != nil {
				return err
			}
		}
	}
}

// sweepAgents ends every session whose agent has no registry entry.
func (s *Service) sweepAgents(ctx context.Context, kv jetstream.KeyValue) error {
	st, err := s.js.Stream(ctx, events.StreamName)
	if err != nil {
		return fmt.Errorf("agent sweep: %w", err)
	}
	prefix := events.AgentSubject("")
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return fmt.Errorf("agent sweep: %w", err)
	}
	for subject := range info.State.Subjects {
		id := strings.TrimPrefix(subject, prefix)
		if !events.ValidID(id) {
			continue
		}
		if err := s.expireAgent(ctx, kv, id); err != nil {
			return err
		}
	}
	return nil
}

// expireAgent writes AgentLeft "expired" for agent id if its last event is
// an AgentJoined and it has no registry entry.
func (s *Service) expireAgent(ctx context.Context, kv jetstream.KeyValue, id string) error {
	if !events.ValidID(id) {
		return nil
	}
	for {
		last, open, err := agentSession(ctx, s.store, id)
		if err != nil {
			return err
		}
		if !open {
			return nil
		}
		// The agent writes its entry before AgentJoined: an entry means
		// it is alive (or came back).
		_, err = kv.Get(ctx, id)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted):
			return fmt.Errorf("agent %s: registry: %w", id, err)
		}
		ev, err := events.New(events.KindAgent, id, events.Meta{Time: time.Now(), Actor: "service/coordinator"},
			&events.AgentLeft{Agent: id, Reason: events.AgentLeftExpired})
		if err != nil {
			return err
		}
		evs := []events.Event{ev}
		if err := events.AssignIDs(evs); err != nil {
			return err
		}
		_, err = s.store.Append(ctx, events.AgentSubject(id), last, evs)
		if events.IsConflict(err) {
			continue // another coordinator, or the agent, wrote first: look again
		}
		if err != nil {
			return fmt.Errorf("agent %s: %w", id, err)
		}
		s.log.Info().Str("agent", id).Msg("agent expired: its registry entry is gone")
		return nil
	}
}

// agentSession reports the last sequence of the agent's subject and whether
// its last event is an AgentJoined that no AgentLeft has ended.
func agentSession(ctx context.Context, st events.Store, id string) (uint64, bool, error) {
	subject := events.AgentSubject(id)
	last, err := st.LastSeq(ctx, subject)
	if err != nil || last == 0 {
		return last, false, err
	}
	evs, err := st.Load(ctx, subject, last-1)
	if err != nil {
		return 0, false, err
	}
	if len(evs) == 0 {
		return last, false, fmt.Errorf("%s: no event at its last sequence %d", subject, last)
	}
	return last, evs[len(evs)-1].Type == events.TypeAgentJoined, nil
}
