package events

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// DecodeMsg decodes a message of the event stream as a JetStream consumer
// delivers it: the envelope, checked as Unmarshal checks it, with Seq set to
// the message's stream sequence. The payload is decoded (and upcast) lazily
// by Payload.
//
// A body that is not a well-formed envelope, or an envelope whose kind and
// aggregate do not name the subject it was stored on, is an error wrapping
// ErrMalformed: no later reader can decode it either.
func DecodeMsg(m jetstream.Msg) (Event, error) {
	md, err := m.Metadata()
	if err != nil {
		return Event{}, fmt.Errorf("events: %s: not a stream message: %w", m.Subject(), err)
	}
	seq := md.Sequence.Stream
	ev, err := Unmarshal(m.Data())
	if err != nil {
		if !errors.Is(err, ErrMalformed) {
			err = fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		return Event{}, fmt.Errorf("events: seq %d on %s: %w", seq, m.Subject(), err)
	}
	if s := ev.Subject(); s != m.Subject() {
		return Event{}, fmt.Errorf("events: seq %d on %s: %w: the envelope belongs to %s", seq, m.Subject(), ErrMalformed, s)
	}
	ev.Seq = seq
	return ev, nil
}
