package agent

// The agent registry. While it runs, an agent keeps an entry in the KV
// bucket ferry_agents (events.AgentsBucket) under its ID: who it is, its
// pool, build, capacity, load and free disk, refreshed every heartbeat with
// a per-key TTL of three heartbeats. Its sessions are events on
// ferry.evt.agent.<id>: AgentJoined when it starts, AgentLeft "graceful"
// when it stops cleanly. When its heartbeats stop (a crash, a partition, a
// paused process) the server removes the entry, and a coordinator that sees
// it go writes AgentLeft "expired".
//
// Order matters, because a coordinator decides "expired" from "the last
// event is AgentJoined and there is no entry": the agent writes its entry
// before its AgentJoined, and its AgentLeft before it removes its entry.
// Every append chains on the subject's last sequence, so of the agent and
// any number of coordinators that see a session end at once, exactly one
// writes its AgentLeft.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultHeartbeat is how often an agent refreshes its registry entry when
// Config.Heartbeat is zero. The entry lives three heartbeats.
const DefaultHeartbeat = 5 * time.Second

// registration is one agent's presence in the registry.
type registration struct {
	a         *Agent
	kv        jetstream.KeyValue
	every     time.Duration
	ttl       time.Duration // whole seconds, at least one (the server's unit)
	startedAt time.Time
	rev       uint64 // the entry's revision this agent last wrote; 0: none
}

// registryTTL is the entry's time to live for heartbeat interval every:
// three heartbeats, rounded up to whole seconds, at least one second.
func registryTTL(every time.Duration) time.Duration {
	ttl := max(3*every, time.Second)
	return (ttl + time.Second - 1).Truncate(time.Second)
}

// runRegistry keeps the agent registered until ctx ends, then, once the
// agent's transfers have been handed back, leaves gracefully. A registry
// that NATS refuses does not stop the agent: it logs and tries again.
func (a *Agent) runRegistry(ctx context.Context) error {
	every := a.cfg.Heartbeat
	if every <= 0 {
		every = DefaultHeartbeat
	}
	r := &registration{a: a, every: every, ttl: registryTTL(every), startedAt: time.Now().UTC()}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := r.beat(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn().Err(err).Msg("agent registry: heartbeat failed")
		}
		select {
		case <-ctx.Done():
			a.waitDrained()
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := r.leave(lctx); err != nil {
				a.log.Warn().Err(err).Msg("agent registry: graceful leave failed; the entry will expire")
			}
			return nil
		case <-t.C:
		}
	}
}

// waitDrained waits until no transfer of this agent runs any more: each has
// handed its dispatch back or finished.
func (a *Agent) waitDrained() {
	for {
		a.mu.Lock()
		var r *run
		for _, r = range a.running {
			break
		}
		a.mu.Unlock()
		if r == nil {
			return
		}
		<-r.done
	}
}

// beat writes the entry: the first time (and whenever the entry vanished,
// the agent having been silent past its TTL) it joins, else it refreshes
// the entry it wrote last.
func (r *registration) beat(ctx context.Context) error {
	if r.kv == nil {
		kv, err := events.EnsureAgentsBucket(ctx, r.a.js)
		if err != nil {
			return err
		}
		r.kv = kv
	}
	if r.rev == 0 {
		return r.join(ctx)
	}
	err := r.put(ctx, true)
	if errors.Is(err, jetstream.ErrKeyExists) && r.adopt(ctx) {
		// An earlier put was stored but its acknowledgement was lost.
		err = r.put(ctx, true)
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		// Not the entry this agent wrote last: it expired (or was
		// removed) meanwhile, and a coordinator may have ended the
		// session. Join again.
		r.a.log.Warn().Msg("agent registry: the entry expired while this agent was silent; joining again")
		return r.join(ctx)
	}
	return err
}

// adopt reports whether the current entry is one this session wrote (an
// acknowledgement that was lost), and if so takes its revision.
func (r *registration) adopt(ctx context.Context) bool {
	e, err := r.kv.Get(ctx, r.a.cfg.ID)
	if err != nil {
		return false
	}
	var cur events.AgentEntry
	if json.Unmarshal(e.Value(), &cur) != nil || cur.ID != r.a.cfg.ID || !cur.StartedAt.Equal(r.startedAt) {
		return false
	}
	r.rev = e.Revision()
	return true
}

// entry is the agent's registry entry now.
func (r *registration) entry() events.AgentEntry {
	a := r.a
	a.mu.Lock()
	running := len(a.running)
	a.mu.Unlock()
	return events.AgentEntry{
		ID: a.cfg.ID, Principal: a.cfg.Principal, Pool: a.cfg.Pool, Version: buildVersion(), Slots: a.cfg.Slots,
		Running: running, FreeBytes: freeBytes(a.cfg.Root), StartedAt: r.startedAt,
		LastSeen: time.Now().UTC(), TTLSec: int64(r.ttl / time.Second),
	}
}

// put writes the entry with its TTL; chained, only over the revision this
// agent wrote last (jetstream.ErrKeyExists when that is not the last one).
func (r *registration) put(ctx context.Context, chained bool) error {
	data, err := json.Marshal(r.entry())
	if err != nil {
		return err
	}
	opts := []jetstream.PublishOpt{jetstream.WithMsgTTL(r.ttl), jetstream.WithExpectStream("KV_" + events.AgentsBucket)}
	if chained {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(r.rev))
	}
	ack, err := r.a.js.PublishMsg(ctx, &nats.Msg{Subject: "$KV." + events.AgentsBucket + "." + r.a.cfg.ID, Data: data}, opts...)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return fmt.Errorf("agent registry: %w: %w", err, jetstream.ErrKeyExists)
		}
		return fmt.Errorf("agent registry: put: %w", err)
	}
	r.rev = ack.Sequence
	return nil
}

// join writes the entry, then AgentJoined. A previous session of this ID
// that no AgentLeft ended (the agent crashed and came back before a
// coordinator saw its entry expire) is ended first, in the same batch, with
// AgentLeft "expired".
func (r *registration) join(ctx context.Context) error {
	if err := r.put(ctx, false); err != nil {
		return err
	}
	a := r.a
	joined := &events.AgentJoined{Agent: a.cfg.ID, Principal: a.cfg.Principal, Pool: a.cfg.Pool, Version: buildVersion(), Slots: a.cfg.Slots}
	for {
		last, open, err := lastSession(ctx, a.repo.Store, a.cfg.ID)
		if err != nil {
			return err
		}
		var ps []events.Payload
		if open {
			ps = append(ps, &events.AgentLeft{Agent: a.cfg.ID, Reason: events.AgentLeftExpired})
		}
		ps = append(ps, joined)
		err = appendAgent(ctx, a.repo.Store, a.cfg.ID, a.meta(), last, ps...)
		if events.IsConflict(err) {
			continue // a coordinator ended the old session meanwhile: decide again
		}
		if err != nil {
			return err
		}
		a.log.Info().Str("pool", a.cfg.Pool).Dur("ttl", r.ttl).Msg("agent joined")
		return nil
	}
}

// leave ends the session with AgentLeft "graceful", then removes the entry
// (its marker expires with the bucket's marker TTL).
func (r *registration) leave(ctx context.Context) error {
	if r.kv == nil || r.rev == 0 {
		return nil // never joined
	}
	a := r.a
	for {
		last, open, err := lastSession(ctx, a.repo.Store, a.cfg.ID)
		if err != nil {
			return err
		}
		if !open {
			break // a coordinator saw the entry expire first
		}
		err = appendAgent(ctx, a.repo.Store, a.cfg.ID, a.meta(), last, &events.AgentLeft{Agent: a.cfg.ID, Reason: events.AgentLeftGraceful})
		if events.IsConflict(err) {
			continue
		}
		if err != nil {
			return err
		}
		a.log.Info().Msg("agent left")
		break
	}
	return r.kv.Purge(ctx, a.cfg.ID, jetstream.PurgeTTL(events.AgentMarkerTTL))
}

// lastSession reports the last sequence of the agent's subject and whether
// its last event is an AgentJoined no AgentLeft has ended.
func lastSession(ctx context.Context, s events.Store, id string) (uint64, bool, error) {
	subject := events.AgentSubject(id)
	last, err := s.LastSeq(ctx, subject)
	if err != nil || last == 0 {
		return last, false, err
	}
	evs, err := s.Load(ctx, subject, last-1)
	if err != nil {
		return 0, false, err
	}
	if len(evs) == 0 {
		return last, false, fmt.Errorf("agent registry: %s: no event at its last sequence %d", subject, last)
	}
	return last, evs[len(evs)-1].Type == events.TypeAgentJoined, nil
}

// appendAgent appends ps as one decision on the agent's subject, chained on
// last.
func appendAgent(ctx context.Context, s events.Store, id string, m events.Meta, last uint64, ps ...events.Payload) error {
	m.Time = time.Now()
	evs := make([]events.Event, 0, len(ps))
	for _, p := range ps {
		ev, err := events.New(events.KindAgent, id, m, p)
		if err != nil {
			return err
		}
		evs = append(evs, ev)
	}
	if err := events.AssignIDs(evs); err != nil {
		return err
	}
	_, err := s.Append(ctx, events.AgentSubject(id), last, evs)
	return err
}

// buildVersion names the running build: the main module's version and,
// when the binary was built from a repository, its revision.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && v == "(devel)" {
		return rev + dirty
	}
	if rev != "" {
		return v + " " + rev + dirty
	}
	return v
}
