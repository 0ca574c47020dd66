package events

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/google/uuid"
)

// MemoryStore is a Store in memory with the semantics of JetStreamStore: one
// sequence over all subjects starting at 1, optimistic concurrency per
// subject, atomic multi-event appends, and de-duplication by event ID
// (for the store's lifetime, returning the original sequences as a
// replicated stream does). It is safe for concurrent use. Tests and the
// replay tools use it.
type MemoryStore struct {
	mu      sync.Mutex
	log     []memEntry          // log[i] has Seq i+1
	subject map[string][]uint64 // sequences of each subject, ascending
	ids     map[uuid.UUID]uint64
	// appended is closed and replaced on every append, waking subscribers.
	appended chan struct{}
}

// memEntry is one stored event: Data owned by the store, payload nil.
type memEntry struct {
	subject string
	ev      Event
}

// NewMemoryStore returns an empty store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		subject:  map[string][]uint64{},
		ids:      map[uuid.UUID]uint64{},
		appended: make(chan struct{}),
	}
}

// Append implements Store.
func (s *MemoryStore) Append(ctx context.Context, subject string, expectedLast uint64, evs []Event) (uint64, error) {
	if err := checkAppend(subject, evs); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("events: append %s: %w", subject, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	if _, ok := s.ids[evs[0].ID]; ok {
		return s.dedupe(subject, evs)
	}
	for i := range evs {
		if seq, ok := s.ids[evs[i].ID]; ok {
			return 0, fmt.Errorf("events: append %s: %w: event %d (%s) already stored at %d by another append", subject, ErrInvalidAppend, i, evs[i].ID, seq)
		}
	}
	seqs := s.subject[subject]
	var last uint64
	if len(seqs) > 0 {
		last = seqs[len(seqs)-1]
	}
	if last != expectedLast {
		return 0, &ConflictError{Subject: subject, Expected: expectedLast, Actual: last}
	}
	for i := range evs {
		seq := uint64(len(s.log)) + 1
		s.log = append(s.log, memEntry{subject: subject, ev: storedCopy(&evs[i])})
		s.log[seq-1].ev.Seq = seq
		seqs = append(seqs, seq)
		s.ids[evs[i].ID] = seq
		evs[i].Seq = seq
	}
	s.subject[subject] = seqs
	close(s.appended)
	s.appended = make(chan struct{})
	return evs[len(evs)-1].Seq, nil
}

// dedupe answers an append of events already stored with their sequences.
func (s *MemoryStore) dedupe(subject string, evs []Event) (uint64, error) {
	for i := range evs {
		seq, ok := s.ids[evs[i].ID]
		if !ok {
			return 0, fmt.Errorf("events: append %s: %w: event 0 is stored but event %d (%s) is not", subject, ErrInvalidAppend, i, evs[i].ID)
		}
		evs[i].Seq = seq
	}
	return evs[len(evs)-1].Seq, nil
}

// storedCopy is e as the store keeps or hands it out: its own Data and no
// cached payload, so no caller shares memory with the log.
func storedCopy(e *Event) Event {
	c := *e
	c.Data = bytes.Clone(e.Data)
	c.payload = nil
	return c
}

// Load implements Store.
func (s *MemoryStore) Load(ctx context.Context, subject string, after uint64) ([]Event, error) {
	if !validSubject(subject, false) {
		return nil, fmt.Errorf("events: load %q: %w: bad subject", subject, ErrInvalidAppend)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("events: load %s: %w", subject, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seqs := s.subject[subject]
	seqs = seqs[sort.Search(len(seqs), func(i int) bool { return seqs[i] > after }):]
	if len(seqs) == 0 {
		return nil, nil
	}
	out := make([]Event, len(seqs))
	for i, seq := range seqs {
		out[i] = storedCopy(&s.log[seq-1].ev)
	}
	return out, nil
}

// LastSeq implements Store.
func (s *MemoryStore) LastSeq(ctx context.Context, subject string) (uint64, error) {
	if !validSubject(subject, false) {
		return 0, fmt.Errorf("events: last seq %q: %w: bad subject", subject, ErrInvalidAppend)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("events: last seq %s: %w", subject, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if seqs := s.subject[subject]; len(seqs) > 0 {
		return seqs[len(seqs)-1], nil
	}
	return 0, nil
}

// subscribeBatch bounds how many events Subscribe copies per lock.
const subscribeBatch = 256

// Subscribe implements Store. It copies matching events under the lock in
// batches and calls fn without it, then waits for the next append.
func (s *MemoryStore) Subscribe(ctx context.Context, filter string, after uint64, fn func(Event) error) error {
	if !validSubject(filter, true) {
		return fmt.Errorf("events: subscribe %q: %w: bad filter", filter, ErrInvalidAppend)
	}
	batch := make([]Event, 0, subscribeBatch)
	for next := after; ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch = batch[:0]
		s.mu.Lock()
		for ; next < uint64(len(s.log)) && len(batch) < cap(batch); next++ {
			if e := &s.log[next]; subjectMatches(filter, e.subject) {
				batch = append(batch, storedCopy(&e.ev))
			}
		}
		appended := s.appended
		s.mu.Unlock()
		for _, e := range batch {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-appended:
			}
		}
	}
}
