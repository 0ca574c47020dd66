package notify

import (
	"container/list"
	"context"
	"fmt"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// tracker knows the state of each job at any event the consumer delivers,
// at O(1) amortized cost per event: a bounded LRU cache of job states,
// advanced by the events themselves, and the event store for what the cache
// cannot vouch for.
//
// The cache may skip reading the store only when it has seen every event of
// the job since its entry was last complete. That holds for an entry that
// is "current": it includes every event of its job up to the highest first
// delivery seen so far, and nothing was delivered to anyone else since. A
// durable consumer first-delivers messages in stream order; redeliveries
// (NumDelivered > 1) are older messages coming back. Every delivery to the
// consumer has the next consumer sequence, so a jump in consumer sequences
// means some delivery did not reach this process (it went to another
// process sharing the consumer, or was lost in transit): then no entry is
// current any more (a new epoch), and each is brought up to date from the
// store the next time it is needed. An entry that is not current is still
// the exact state at its Version; the store supplies the events after it.
//
// A tracker is used by one goroutine.
type tracker struct {
	store events.Store
	max   int

	entries map[string]*list.Element // of *entry
	lru     *list.List               // front: most recently used

	epoch    uint64 // entries with this epoch are current; starts at 1
	lastCons uint64 // consumer sequence of the last delivery seen
	floor    uint64 // stream sequence of the last first delivery seen

	loads int // store reads, for tests
}

type entry struct {
	id    string
	j     job.Job
	epoch uint64 // 0: not current
}

func newTracker(store events.Store, max int) *tracker {
	return &tracker{store: store, max: max, entries: map[string]*list.Element{}, lru: list.New(), epoch: 1}
}

// delivered records a delivery's consumer sequence. Call it for every
// message, in the order received, before stateAt.
func (t *tracker) delivered(consumerSeq uint64) {
	if consumerSeq != t.lastCons+1 {
		t.epoch++
	}
	t.lastCons = consumerSeq
}

// replayError is an event the job model cannot apply: it will never apply,
// so retrying is pointless.
type replayError struct{ err error }

func (e *replayError) Error() string { return e.err.Error() }
func (e *replayError) Unwrap() error { return e.err }

// stateAt returns the state of ev's job right after ev (ev.Seq set). first
// says whether this is the message's first delivery. need says whether the
// caller needs the state: when it does not, the tracker only keeps current
// entries current and reads nothing. ok is false when the state was not
// needed and not computed.
//
// The returned job shares memory with the cache: use it before the next
// call.
func (t *tracker) stateAt(ctx context.Context, ev *events.Event, first, need bool) (j *job.Job, ok bool, err error) {
	id, seq := ev.AggregateID, ev.Seq
	if first {
		if seq <= t.floor {
			// First deliveries go forward; if not, the consumer was
			// rewound and nothing seen so far can be trusted.
			t.epoch++
		}
		t.floor = seq
	}
	e := t.get(id)
	switch {
	case first && e != nil && e.epoch == t.epoch && e.j.Version < seq:
		// The fast path: the entry has every earlier event of the job.
		if err := job.Evolve(&e.j, ev); err != nil {
			t.remove(id)
			return nil, false, &replayError{err}
		}
		return &e.j, true, nil
	case first && e == nil && ev.Type == events.TypeJobCreated:
		// A job's first event needs no history.
		var nj job.Job
		if err := job.Evolve(&nj, ev); err != nil {
			return nil, false, &replayError{err}
		}
		return &t.put(id, nj, t.epoch).j, true, nil
	case !need:
		return nil, false, nil
	case e != nil && e.j.Version == seq:
		return &e.j, true, nil
	}

	// Read what the cache lacks from the store: the events after the
	// entry (a valid prefix when it is not beyond seq), or all of them.
	var base job.Job
	if e != nil && e.j.Version < seq {
		base = e.j.Clone()
	}
	evs, err := t.store.Load(ctx, events.JobSubject(id), base.Version)
	t.loads++
	if err != nil {
		return nil, false, err
	}
	for i := range evs {
		if evs[i].Seq > seq {
			break
		}
		if err := job.Evolve(&base, &evs[i]); err != nil {
			if e != nil {
				t.remove(id)
			}
			return nil, false, &replayError{err}
		}
	}
	if base.Version != seq {
		// The store does not show the event yet (a lagging replica
		// answered): try again later.
		return nil, false, fmt.Errorf("notify: job %s: event %d not readable yet (store at %d)", id, seq, base.Version)
	}
	switch {
	case first:
		// Every event of the job up to seq, which is now the floor:
		// current.
		return &t.put(id, base, t.epoch).j, true, nil
	case e == nil || e.j.Version < seq:
		// A redelivery: the state at seq is a better base for later
		// reads than what the cache had, but events after seq may have
		// been first-delivered before, so it is not current.
		return &t.put(id, base, 0).j, true, nil
	}
	// The cache holds a later state of the job: keep it, answer with the
	// one computed for this older event.
	return &base, true, nil
}

func (t *tracker) get(id string) *entry {
	el, ok := t.entries[id]
	if !ok {
		return nil
	}
	t.lru.MoveToFront(el)
	return el.Value.(*entry)
}

func (t *tracker) put(id string, j job.Job, epoch uint64) *entry {
	if el, ok := t.entries[id]; ok {
		e := el.Value.(*entry)
		e.j, e.epoch = j, epoch
		t.lru.MoveToFront(el)
		return e
	}
	e := &entry{id: id, j: j, epoch: epoch}
	t.entries[id] = t.lru.PushFront(e)
	for t.lru.Len() > t.max {
		old := t.lru.Back()
		t.lru.Remove(old)
		delete(t.entries, old.Value.(*entry).id)
	}
	return e
}

func (t *tracker) remove(id string) {
	if el, ok := t.entries[id]; ok {
		t.lru.Remove(el)
		delete(t.entries, id)
	}
}
