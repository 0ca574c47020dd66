// Package history owns what ops people read when they replay a job: the
// job's state as it was at a point of its history (after a stream sequence,
// or at a time) and its timeline, one entry per event saying who did what,
// on which agent and attempt, how the state moved, and for failures and
// retries their cause. It also owns the line format of event exports
// (NDJSON: one stored envelope per line with its sequence and subject),
// and the words for sizes and durations its timeline uses (SizeText,
// SecondsText), which the CLI shares.
//
// It is pure like the job model: it folds events with job.Evolve, does no
// I/O beyond reading the io.Reader it is handed, and reads no clock. It
// imports job and events only.
package history

import (
	"fmt"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// Point selects how much of a job's history to apply. The zero Point is the
// whole history. At most one of Seq and Time may be set.
type Point struct {
	// Seq, if not 0, applies the events with a stream sequence up to and
	// including Seq (it need not be one of the job's own sequences: the
	// stream's sequences are shared by every job).
	Seq uint64
	// Time, if not zero, applies the events up to the last one whose time
	// is at or before Time. Times are the writers' decision times; should a
	// writer's clock have been behind another's, an event that came earlier
	// in the log with a later time is still applied, because a state is
	// always a prefix of the history.
	Time time.Time
}

// IsZero reports whether p is the whole history.
func (p Point) IsZero() bool { return p.Seq == 0 && p.Time.IsZero() }

// Validate refuses a point that names both a sequence and a time.
func (p Point) Validate() error {
	if p.Seq != 0 && !p.Time.IsZero() {
		return job.Errorf(job.E_INVALIDARG, "give a sequence or a time, not both")
	}
	return nil
}

func (p Point) String() string {
	switch {
	case p.Seq != 0:
		return fmt.Sprintf("sequence %d", p.Seq)
	case !p.Time.IsZero():
		return p.Time.UTC().Format(time.RFC3339Nano)
	}
	return "the end of its history"
}

// AsOf says which part of the history a Result covers.
type AsOf struct {
	// Seq and Time are the stream sequence and time of the last event
	// applied.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Events is how many of the job's events were applied, Total how many
	// it has in all (Events == Total: the state is the latest).
	Events int `json:"events"`
	Total  int `json:"total"`
	// RequestedSeq and RequestedTime repeat the point asked for, if any.
	RequestedSeq  uint64     `json:"requested_seq,omitempty"`
	RequestedTime *time.Time `json:"requested_time,omitempty"`
}

// Latest reports whether every event of the job was applied.
func (a AsOf) Latest() bool { return a.Events == a.Total }

// Result is a job as of a point of its history: its state then, and the
// timeline of the events that led there.
type Result struct {
	Job      job.Job `json:"job"`
	AsOf     AsOf    `json:"as_of"`
	Timeline []Entry `json:"timeline"`
}

// Build folds a job's events (its whole history, in order, with their
// stream sequences) up to p with job.Evolve and returns the state at p and
// the timeline up to p. A point before the job's first event is a
// BG_E_NOT_FOUND error: the job did not exist yet.
func Build(evs []events.Event, p Point) (Result, error) {
	if err := p.Validate(); err != nil {
		return Result{}, err
	}
	if err := check(evs); err != nil {
		return Result{}, err
	}
	n := Cut(evs, p)
	if n == 0 {
		return Result{}, job.Errorf(job.BG_E_NOT_FOUND, "job %s did not exist yet at %s: its first event is sequence %d at %s",
			evs[0].AggregateID, p, evs[0].Seq, evs[0].Time.UTC().Format(time.RFC3339Nano))
	}
	res := Result{Timeline: make([]Entry, 0, n)}
	var tl timeline
	for i := range evs[:n] {
		e, err := tl.step(&res.Job, &evs[i])
		if err != nil {
			return Result{}, err
		}
		res.Timeline = append(res.Timeline, e)
	}
	last := &evs[n-1]
	res.AsOf = AsOf{Seq: last.Seq, Time: last.Time, Events: n, Total: len(evs), RequestedSeq: p.Seq}
	if !p.Time.IsZero() {
		t := p.Time
		res.AsOf.RequestedTime = &t
	}
	return res, nil
}

// StateAt is the job's state at p: Build without the timeline's words.
func StateAt(evs []events.Event, p Point) (job.Job, AsOf, error) {
	r, err := Build(evs, p)
	return r.Job, r.AsOf, err
}

// Cut returns how many of evs (one job's events in order) lie at or before
// p: the events with a sequence up to p.Seq, or the events up to the last
// one whose time is at or before p.Time; all of them for the zero Point.
func Cut(evs []events.Event, p Point) int {
	switch {
	case p.Seq != 0:
		n := 0
		for n < len(evs) && evs[n].Seq <= p.Seq {
			n++
		}
		return n
	case !p.Time.IsZero():
		for i := len(evs) - 1; i >= 0; i-- {
			if !evs[i].Time.After(p.Time) {
				return i + 1
			}
		}
		return 0
	}
	return len(evs)
}

// check refuses what is not one job's history in stream order.
func check(evs []events.Event) error {
	if len(evs) == 0 {
		return job.Errorf(job.BG_E_NOT_FOUND, "the job has no events")
	}
	id := evs[0].AggregateID
	var prev uint64
	for i := range evs {
		e := &evs[i]
		switch {
		case e.Kind != events.KindJob || e.AggregateID != id:
			return fmt.Errorf("history: event %d (%s) is of %s %s, not of job %s", i, e.ID, e.Kind, e.AggregateID, id)
		case e.Seq == 0:
			return fmt.Errorf("history: event %d (%s) of job %s has no stream sequence", i, e.ID, id)
		case e.Seq <= prev:
			return fmt.Errorf("history: job %s: sequence %d (%s) follows %d: not in stream order", id, e.Seq, e.ID, prev)
		}
		prev = e.Seq
	}
	return nil
}
