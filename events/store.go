package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Store is an append-only event log with optimistic concurrency per subject.
// Two implementations exist (JetStream and in-memory); both pass the same
// conformance suite (eventstest).
//
// Sequences are stream sequences: one counter over the whole log, so the
// last sequence of a subject is also the version used for concurrency
// control.
type Store interface {
	// Append stores evs atomically (all or none) on one subject. expectedLast
	// is the stream sequence of the last event on that subject as the writer
	// saw it (0: the subject must have no events yet). Every event must carry
	// an ID (AssignIDs); re-appending the same IDs after an ambiguous failure
	// is safe. It returns the sequence of the last stored event; events in evs
	// get their Seq filled. A stale expectation returns a *ConflictError.
	Append(ctx context.Context, subject string, expectedLast uint64, evs []Event) (uint64, error)

	// Load returns the events of one subject with sequence > after, in order.
	Load(ctx context.Context, subject string, after uint64) ([]Event, error)

	// LastSeq returns the sequence of the last event on subject, 0 if none.
	LastSeq(ctx context.Context, subject string) (uint64, error)

	// Subscribe calls fn for every event whose subject matches filter (a NATS
	// subject filter, wildcards allowed) with sequence > after, in order,
	// then for every new event as it arrives, until ctx ends or fn returns an
	// error. It returns ctx's error or fn's.
	Subscribe(ctx context.Context, filter string, after uint64, fn func(Event) error) error
}

// ErrConflict is wrapped by *ConflictError.
var ErrConflict = errors.New("concurrent modification")

// ConflictError reports that a subject moved on since the writer read it
// (JetStream API errors 10071 and 10164). The writer reloads, decides again
// and retries.
type ConflictError struct {
	Subject  string
	Expected uint64
	// Actual is the subject's last sequence when known, else 0.
	Actual uint64
}

func (e *ConflictError) Error() string {
	if e.Actual != 0 {
		return fmt.Sprintf("events: %s: expected last sequence %d, found %d", e.Subject, e.Expected, e.Actual)
	}
	return fmt.Sprintf("events: %s: expected last sequence %d is stale", e.Subject, e.Expected)
}

func (e *ConflictError) Unwrap() error { return ErrConflict }

// IsConflict reports whether err is a concurrency conflict.
func IsConflict(err error) bool { return errors.Is(err, ErrConflict) }

// MaxAppend is the most events one Append may store. It is the server's
// default limit on the size of an atomic batch.
const MaxAppend = 1000

// ErrInvalidAppend is wrapped by every error about the arguments of Append,
// Load, LastSeq or Subscribe (as opposed to errors of the store itself).
var ErrInvalidAppend = errors.New("invalid store request")

// checkAppend validates the arguments of Append the same way for every store,
// so that no store accepts what another refuses and nothing unreadable is
// ever stored.
func checkAppend(subject string, evs []Event) error {
	switch {
	case len(evs) == 0:
		return fmt.Errorf("events: append %s: %w: no events", subject, ErrInvalidAppend)
	case len(evs) > MaxAppend:
		return fmt.Errorf("events: append %s: %w: %d events (max %d)", subject, ErrInvalidAppend, len(evs), MaxAppend)
	case !validSubject(subject, false):
		return fmt.Errorf("events: append %q: %w: bad subject", subject, ErrInvalidAppend)
	}
	for i := range evs {
		e := &evs[i]
		if err := e.validate(); err != nil {
			return fmt.Errorf("events: append %s: event %d: %w: %w", subject, i, ErrInvalidAppend, err)
		}
		if s := e.Subject(); s != subject {
			return fmt.Errorf("events: append %s: event %d (%s) belongs to %s: %w", subject, i, e.ID, s, ErrInvalidAppend)
		}
		for j := range i {
			if evs[j].ID == e.ID {
				return fmt.Errorf("events: append %s: events %d and %d share id %s: %w", subject, j, i, e.ID, ErrInvalidAppend)
			}
		}
	}
	return nil
}

// validSubject reports whether s is a NATS subject (wildcards false) or
// subject filter (wildcards true): non-empty tokens without whitespace, and
// with wildcards, '*' as a whole token anywhere and '>' as the last token.
func validSubject(s string, wildcards bool) bool {
	for {
		tok, rest, more := strings.Cut(s, ".")
		switch {
		case tok == "":
			return false
		case tok == "*" || (tok == ">" && !more):
			if !wildcards {
				return false
			}
		default:
			for i := 0; i < len(tok); i++ {
				if c := tok[i]; c <= ' ' || c == 0x7f || c == '*' || c == '>' {
					return false
				}
			}
		}
		if !more {
			return true
		}
		s = rest
	}
}

// subjectMatches reports whether subject (literal) matches filter (NATS
// wildcards: '*' one token, '>' one or more trailing tokens).
func subjectMatches(filter, subject string) bool {
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		if ft == ">" {
			return subject != ""
		}
		st, srest, smore := strings.Cut(subject, ".")
		if ft != "*" && ft != st {
			return false
		}
		if !fmore || !smore {
			return fmore == smore
		}
		filter, subject = frest, srest
	}
}
