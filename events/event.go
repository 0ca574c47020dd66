// Package events owns ferry's event log: the event envelope, the typed
// payloads of every event type and version, the versioned JSON codec with its
// upcasters, and the event stores (JetStream and in-memory) with optimistic
// concurrency per aggregate.
//
// Events are ferry's public, versioned API: type names and field names never
// change meaning; a new shape is a new version with an upcaster.
//
// This package imports nothing else of ferry's.
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Aggregate kinds. Each aggregate instance has one literal subject in the
// event stream (see Subject).
const (
	KindJob   = "job"
	KindAgent = "agent"
	KindVault = "vault"
)

// SubjectPrefix is the first part of every event subject.
const SubjectPrefix = "ferry.evt."

// Subject returns the stream subject of one aggregate instance, for example
// ferry.evt.job.<jobID>.
func Subject(kind, id string) string { return SubjectPrefix + kind + "." + id }

// JobSubject is Subject(KindJob, id).
func JobSubject(id string) string { return Subject(KindJob, id) }

// Event is one immutable fact. The envelope is what is stored: the body of the
// JetStream message is the JSON encoding of Event.
type Event struct {
	// ID is a UUIDv7 made once per decision and reused on every retry of the
	// same append; the store uses it for de-duplication (Nats-Msg-Id).
	ID uuid.UUID `json:"id"`
	// Type and Version name the payload schema, e.g. "JobCreated" v1.
	Type    string `json:"type"`
	Version int    `json:"v"`
	// Kind and AggregateID name the aggregate (job, agent, vault) the event
	// belongs to; the subject is derived from them.
	Kind        string    `json:"kind"`
	AggregateID string    `json:"aggregate_id"`
	Time        time.Time `json:"time"`
	// Actor is the principal that caused the event (a user, an agent, a
	// service).
	Actor string `json:"actor,omitempty"`
	// CausationID is the ID of the event or request that caused this one;
	// CorrelationID groups everything that followed from one user request.
	CausationID   string          `json:"causation_id,omitempty"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	Data          json.RawMessage `json:"data"`

	// Seq is the stream sequence the store assigned. It is not part of the
	// stored body; stores fill it when reading. Zero before append.
	Seq uint64 `json:"-"`

	payload Payload // decoded Data, cached
}

// Subject is the stream subject of the event's aggregate.
func (e *Event) Subject() string { return Subject(e.Kind, e.AggregateID) }

// Meta is what the caller knows about a decision: who, when, and why.
type Meta struct {
	Time          time.Time
	Actor         string
	CausationID   string
	CorrelationID string
}

// Payload is the typed data of one event type and version.
type Payload interface {
	EventType() string
	EventVersion() int
}

// New builds an event for aggregate (kind, id) carrying p. The ID is left zero:
// whoever appends assigns it once per decision (see AssignIDs).
func New(kind, id string, m Meta, p Payload) (Event, error) {
	data, err := json.Marshal(p)
	if err != nil {
		return Event{}, fmt.Errorf("events: encode %s: %w", p.EventType(), err)
	}
	return Event{
		Type: p.EventType(), Version: p.EventVersion(),
		Kind: kind, AggregateID: id,
		Time: m.Time.UTC(), Actor: m.Actor,
		CausationID: m.CausationID, CorrelationID: m.CorrelationID,
		Data: data, payload: p,
	}, nil
}

// AssignIDs gives every event without an ID a fresh UUIDv7. Call it once per
// decision, before the first append attempt, and keep the events for retries.
func AssignIDs(evs []Event) error {
	for i := range evs {
		if evs[i].ID != uuid.Nil {
			continue
		}
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("events: new id: %w", err)
		}
		evs[i].ID = id
	}
	return nil
}

// Payload decodes the event's data into its typed payload, upcasting older
// versions to the current one. The result is cached.
func (e *Event) Payload() (Payload, error) {
	if e.payload != nil {
		return e.payload, nil
	}
	p, err := decodePayload(e.Type, e.Version, e.Data)
	if err != nil {
		return nil, fmt.Errorf("events: decode %s v%d (%s): %w", e.Type, e.Version, e.ID, err)
	}
	e.payload = p
	return p, nil
}

// Marshal encodes the envelope as stored.
func Marshal(e *Event) ([]byte, error) { return json.Marshal(e) }

// Unmarshal decodes a stored envelope and checks that it is well formed. The
// payload is decoded lazily by Payload.
func Unmarshal(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("events: decode envelope: %w", err)
	}
	if err := e.validate(); err != nil {
		return Event{}, err
	}
	return e, nil
}

// ErrMalformed is wrapped by every error about an ill-formed envelope.
var ErrMalformed = errors.New("malformed event")

func (e *Event) validate() error {
	switch {
	case e.ID == uuid.Nil:
		return fmt.Errorf("events: %w: missing id", ErrMalformed)
	case e.Type == "":
		return fmt.Errorf("events: %w: missing type", ErrMalformed)
	case e.Version < 1:
		return fmt.Errorf("events: %w: version %d", ErrMalformed, e.Version)
	case !validToken(e.Kind):
		return fmt.Errorf("events: %w: bad kind %q", ErrMalformed, e.Kind)
	case !validToken(e.AggregateID):
		return fmt.Errorf("events: %w: bad aggregate id %q", ErrMalformed, e.AggregateID)
	case len(e.Data) == 0:
		return fmt.Errorf("events: %w: missing data", ErrMalformed)
	}
	return nil
}

// validToken reports whether s can be one NATS subject token: non-empty, no
// dots, wildcards or whitespace.
func validToken(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.' || c == '*' || c == '>' || c <= ' ' || c >= 0x7f:
			return false
		}
	}
	return true
}

// ValidID reports whether id can name an aggregate (one subject token).
func ValidID(id string) bool { return validToken(id) }
