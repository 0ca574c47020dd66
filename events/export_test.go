package events

import (
	"context"
	"encoding/json"
)

// Hooks for the external tests of this package (package events_test).

// RecoverAppend is the check JetStreamStore.Append makes after a lost
// acknowledgement.
func (s *JetStreamStore) RecoverAppend(ctx context.Context, subject string, evs []Event) (uint64, bool, error) {
	return s.recoverAppend(ctx, subject, evs)
}

// LoseAcks makes the next n publishes of s send their messages but drop the
// acknowledgement, as a lost reply or a timeout would.
func (s *JetStreamStore) LoseAcks(n int32) { s.loseAcks.Store(n) }

// NewPayload returns a new, empty payload of the current version of typ.
func NewPayload(typ string) Payload {
	t, ok := registry[typ]
	if !ok || t.newFn == nil {
		return nil
	}
	return t.newFn()
}

// RegisterForTest registers a payload type with upcasters from older
// versions, as an init function of this package would, and returns a
// function that removes it again. The registry has no lock: call it only
// from tests that do not run in parallel with others.
func RegisterForTest(newFn func() Payload, upcasters map[int]func(json.RawMessage) (json.RawMessage, error)) (remove func()) {
	typ := newFn().EventType()
	register(newFn)
	for from, u := range upcasters {
		registerUpcaster(typ, from, u)
	}
	return func() { delete(registry, typ) }
}

// SubjectMatches is subjectMatches.
func SubjectMatches(filter, subject string) bool { return subjectMatches(filter, subject) }
