package events

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Agent event types, on ferry.evt.agent.<agentID> (AgentSubject): one
// subject per agent holds its sessions, each an AgentJoined and, once the
// session is over, an AgentLeft. Writers chain every append on the
// subject's last sequence, so at most one AgentLeft ends a session even
// when the agent and several coordinators see its end at once.
//
// The names and their fields are a public API (docs/events.md); never
// change their meaning, add a version instead.
const (
	TypeAgentJoined = "AgentJoined"
	TypeAgentLeft   = "AgentLeft"
)

// Reasons of AgentLeft.
const (
	// AgentLeftGraceful: the agent stopped cleanly, after its drain; it
	// wrote the event itself.
	AgentLeftGraceful = "graceful"
	// AgentLeftExpired: the session ended without a graceful leave — its
	// registry entry expired (a coordinator wrote the event), or the agent
	// restarted before that was noticed (the agent wrote it, in one batch
	// with its new AgentJoined).
	AgentLeftExpired = "expired"
)

// AgentSubject is Subject(KindAgent, id).
func AgentSubject(id string) string { return Subject(KindAgent, id) }

// AgentJoined: an agent started a session (at start, or again after its
// registry entry had expired while it was cut off). Version is the agent's
// build (module version and VCS revision); Slots how many background jobs
// it transfers at once.
type AgentJoined struct {
	Agent     string `json:"agent"`
	Principal string `json:"principal"`
	Pool      string `json:"pool"`
	Version   string `json:"version"`
	Slots     int    `json:"slots"`
}

// AgentLeft: an agent's session ended. Reason is "graceful" or "expired".
type AgentLeft struct {
	Agent  string `json:"agent"`
	Reason string `json:"reason"`
}

func (*AgentJoined) EventType() string { return TypeAgentJoined }
func (*AgentLeft) EventType() string   { return TypeAgentLeft }
func (*AgentJoined) EventVersion() int { return 1 }
func (*AgentLeft) EventVersion() int   { return 1 }

func init() {
	register(func() Payload { return new(AgentJoined) })
	register(func() Payload { return new(AgentLeft) })
}

// The agent registry: KV bucket ferry_agents, one key per agent ID, holding
// its AgentEntry. Each agent writes its own entry at every heartbeat with a
// per-key TTL (a few heartbeats); when the agent stops heartbeating the
// server removes the entry and leaves a marker that watchers see, which is
// how coordinators learn that an agent expired. It lives here, next to the
// agent events, because agents write it and coordinators read it, and
// neither may import the other.
const AgentsBucket = "ferry_agents"

// AgentMarkerTTL is how long the registry keeps the marker of an expired
// entry: coordinators that watch the bucket see it; one that starts later
// finds the expired agent by its events (AgentJoined without AgentLeft and
// no entry).
const AgentMarkerTTL = 15 * time.Minute

// AgentEntry is an agent's registry entry, as JSON.
type AgentEntry struct {
	ID        string `json:"id"`
	Principal string `json:"principal"`
	Pool      string `json:"pool"`
	Version   string `json:"version"`
	Slots     int    `json:"slots"`
	// Running counts the jobs the agent holds (transferring or waiting for
	// a slot).
	Running int `json:"running"`
	// FreeBytes is the space left on the file system of the agent's root
	// (-1: unknown).
	FreeBytes int64     `json:"free_bytes"`
	StartedAt time.Time `json:"started_at"`
	LastSeen  time.Time `json:"last_seen"`
	// TTLSec is the entry's time to live: the server removes it that long
	// after LastSeen unless the agent heartbeats again.
	TTLSec int64 `json:"ttl_s"`
}

// EnsureAgentsBucket creates the agent registry bucket, or updates it to
// ferry's configuration: per-key TTLs, expiry markers, one revision per key.
func EnsureAgentsBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: AgentsBucket, History: 1, LimitMarkerTTL: AgentMarkerTTL,
		Description: "ferry agent registry: one entry per live agent, removed when its heartbeats stop",
	})
	if err != nil {
		return nil, fmt.Errorf("events: agent registry bucket: %w", err)
	}
	return kv, nil
}
