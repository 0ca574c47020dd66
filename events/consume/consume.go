// Package consume is for programs that follow ferry's event log: a durable
// JetStream consumer on FERRY_EVENTS that hands each event, its payload
// decoded and upcast to the current version, to a handler; acknowledges it
// only once the handler succeeded; gives it back with a growing delay when
// the handler fails; and, because the consumer is durable, resumes after the
// last acknowledged event when the program starts again.
//
// Delivery is at least once: an event whose handler succeeded but whose
// acknowledgement was lost (the program died in between) comes again, so
// handlers de-duplicate by the event's ID or stream sequence (ev.Seq) when
// doing something twice matters.
//
// Messages that are not ferry events at all (a body that is not an
// envelope, an envelope stored on another aggregate's subject, data that does
// not fit its type and version) can never be decoded by anyone: they are
// logged with their sequence and subject, then terminated (JetStream's Term),
// so that this consumer never sees them again; the log keeps them. Events
// of a type or version newer than the program are not poison: see
// UnknownPolicy.
//
// It imports events (and nats.go's jetstream and zerolog), nothing else of
// ferry's.
package consume

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Handler handles one event. Returning nil acknowledges it. An error gives
// it back to the stream to be delivered again after a delay (see
// Options.RetryMin); with MaxAckPending 1, the default, nothing after it is
// delivered meanwhile, so events stay in order.
//
// ctx ends when Run's context does: a handler interrupted that way should
// return, and its event is delivered again at once to the next Run.
type Handler func(ctx context.Context, ev events.Event) error

// UnknownPolicy says what happens to an event of a type or version this
// program does not know (events.ErrUnknownType): one written by a newer
// ferry.
type UnknownPolicy int

const (
	// UnknownStop (the default) makes Run return an error wrapping
	// events.ErrUnknownType without acknowledging the event: after an
	// upgrade, the program carries on with it. History is never skipped
	// silently.
	UnknownStop UnknownPolicy = iota
	// UnknownDeliver hands the event to the handler like any other; its
	// Payload method returns the error wrapping events.ErrUnknownType. For
	// programs that need only the envelope (type, aggregate, time, actor),
	// such as a log printer.
	UnknownDeliver
)

// Options tune a Consumer. The zero value works.
type Options struct {
	// StartSeq or StartTime (at most one) say where a new durable consumer
	// starts: at that stream sequence, or at the first event stored at or
	// after that time. Zero: the beginning of the log. They are ignored when
	// the durable consumer exists already: it resumes where it stopped.
	StartSeq  uint64
	StartTime time.Time
	// AckWait is how long the server waits for an acknowledgement before it
	// delivers an event again (default 30 s). A handler that runs longer is
	// not cut short: the consumer tells the server it is still working on
	// the event every AckWait/3.
	AckWait time.Duration
	// MaxAckPending is how many events may be delivered and not yet
	// acknowledged (default 1). With 1, events are handled strictly in
	// stream order even when a handler fails and its event comes back. More
	// lets the server send events ahead while the handler works (faster on
	// a slow link), but an event that failed is then handled again after
	// the events that were already sent.
	MaxAckPending int
	// RetryMin and RetryMax bound the delay before a failed event is
	// delivered again: RetryMin after the first failure, doubling with every
	// delivery up to RetryMax (defaults 1 s and 1 min). A failing event is
	// retried until the handler accepts it.
	RetryMin, RetryMax time.Duration
	// Unknown is the policy for events newer than the program.
	Unknown UnknownPolicy
	// Log receives what the consumer does on its own: poison messages it
	// terminates, handler failures it retries. The zero Logger discards.
	Log zerolog.Logger
}

// DefaultFilter is every event: jobs, agents and the vault's audit.
const DefaultFilter = events.SubjectPrefix + ">"

// Consumer is a durable pull consumer on FERRY_EVENTS with a handler.
type Consumer struct {
	js   jetstream.JetStream
	name string
	cons jetstream.Consumer
	h    Handler
	o    Options
	log  zerolog.Logger
}

// New creates the durable consumer named durable on FERRY_EVENTS, or
// updates it (its filters, ack wait, max ack pending) when it exists, in
// which case it keeps its position. filters are NATS subject filters inside
// ferry.evt.> (none: DefaultFilter), for example ferry.evt.job.> for every
// job's events. Run then delivers the events to h.
func New(ctx context.Context, js jetstream.JetStream, durable string, filters []string, h Handler, o Options) (*Consumer, error) {
	if len(filters) == 0 {
		filters = []string{DefaultFilter}
	}
	if o.AckWait == 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = 1
	}
	if o.RetryMin == 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax == 0 {
		o.RetryMax = time.Minute
	}
	var problems []error
	if !validName(durable) {
		problems = append(problems, fmt.Errorf("durable name %q: want letters, digits, '-' or '_'", durable))
	}
	for _, f := range filters {
		if !strings.HasPrefix(f, events.SubjectPrefix) {
			problems = append(problems, fmt.Errorf("filter %q is outside %s>", f, events.SubjectPrefix))
		}
	}
	if h == nil {
		problems = append(problems, errors.New("no handler"))
	}
	if o.StartSeq != 0 && !o.StartTime.IsZero() {
		problems = append(problems, errors.New("StartSeq and StartTime both set"))
	}
	if o.AckWait < time.Second/10 {
		problems = append(problems, fmt.Errorf("ack wait %v is shorter than 100ms", o.AckWait))
	}
	if o.MaxAckPending < 1 {
		problems = append(problems, fmt.Errorf("max ack pending %d is not positive", o.MaxAckPending))
	}
	if o.RetryMin < 0 || o.RetryMax < o.RetryMin {
		problems = append(problems, fmt.Errorf("retry delays %v..%v are not a range", o.RetryMin, o.RetryMax))
	}
	if o.Unknown != UnknownStop && o.Unknown != UnknownDeliver {
		problems = append(problems, fmt.Errorf("unknown policy %d", o.Unknown))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}

	cfg := jetstream.ConsumerConfig{
		Durable:        durable,
		Description:    "ferry event consumer",
		FilterSubjects: filters,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        o.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  o.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	switch {
	case o.StartSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, o.StartSeq
	case !o.StartTime.IsZero():
		t := o.StartTime
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	// The server refuses to change where an existing consumer starts, and
	// it has moved on from there anyway: keep what it was created with.
	existing, err := js.Consumer(ctx, events.StreamName, durable)
	switch {
	case err == nil:
		old := existing.CachedInfo().Config
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return nil, fmt.Errorf("consume: look up consumer %s: %w", durable, err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamName, cfg)
	if err != nil {
		return nil, fmt.Errorf("consume: create consumer %s on %s: %w", durable, events.StreamName, err)
	}
	return &Consumer{
		js: js, name: durable, cons: cons, h: h, o: o,
		log: o.Log.With().Str("consumer", durable).Logger(),
	}, nil
}

// validName reports whether s can name a durable consumer: it becomes a
// subject token of the JetStream API.
func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// Run delivers events to the handler until ctx ends, then returns nil. It
// returns an error when the consumer cannot go on: it was deleted, the
// connection closed, or (with UnknownStop) an event is newer than the
// program. Events received but not handled when Run returns are given back
// at once, so the next Run starts with them.
func (c *Consumer) Run(ctx context.Context) error {
	pause := 100 * time.Millisecond
	for {
		err := c.fetch(ctx)
		var fe fetchError
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			pause = 100 * time.Millisecond
			continue
		case !errors.As(err, &fe):
			return err
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
			errors.Is(err, jetstream.ErrBadRequest), c.js.Conn().IsClosed():
			return fmt.Errorf("consume %s: %w", c.name, err)
		}
		// Anything else (no heartbeat, a reconnect, a leader election) may
		// pass: ask again after a pause.
		c.log.Warn().Err(err).Dur("retry_in", pause).Msg("fetching events failed")
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// fetchWait is how long one pull request waits for events.
const fetchWait = 30 * time.Second

// fetchError is a failure to fetch, as opposed to one of handling.
type fetchError struct{ error }

func (e fetchError) Unwrap() error { return e.error }

// fetch pulls up to MaxAckPending events with one request and handles them
// as they arrive. (One request at a time, rather than the Messages
// iterator: with a small MaxAckPending the iterator can lose track of its
// outstanding pulls and stall until its heartbeat check fires.)
//
// What arrives after ctx ended, or after the handling of an event decided
// that Run must stop, is given back at once: otherwise it would wait for
// AckWait before a restarted consumer sees it (with MaxAckPending 1,
// holding up everything).
func (c *Consumer) fetch(ctx context.Context) error {
	fctx, cancel := context.WithTimeout(ctx, fetchWait)
	defer cancel()
	batch, err := c.cons.Fetch(c.o.MaxAckPending, jetstream.FetchContext(fctx))
	if err != nil {
		return fetchError{err}
	}
	var stop error
	for m := range batch.Messages() {
		if stop != nil || ctx.Err() != nil {
			_ = m.Nak()
			continue
		}
		if stop = c.handle(ctx, m); stop != nil {
			cancel() // end the pull; the loop gives back what is buffered
		}
	}
	if stop != nil {
		return stop
	}
	if err := batch.Error(); err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
		return fetchError{err}
	}
	return nil
}

// Decode decodes a message delivered from FERRY_EVENTS: its envelope with
// Seq set to the stream sequence, and its payload decoded and upcast to the
// type's current version (ev.Payload then returns it without decoding
// again). Errors:
//
//   - wrapping events.ErrMalformed: not a ferry event; no reader can decode
//     it (the event returned is zero);
//   - wrapping events.ErrUnknownType: a type or version this program does
//     not know; the event returned has a good envelope;
//   - any other: data that does not fit its type and version (the event
//     returned has a good envelope).
func Decode(m jetstream.Msg) (events.Event, error) {
	ev, err := events.DecodeMsg(m)
	if err != nil {
		return events.Event{}, err
	}
	// Payload caches what it decoded in ev; the copy the caller gets
	// carries it along.
	_, err = ev.Payload()
	return ev, err
}

// handle runs the handler on one message and settles it: ack, nak with
// delay, or term. It returns an error only when Run must stop.
func (c *Consumer) handle(ctx context.Context, m jetstream.Msg) error {
	md, err := m.Metadata()
	if err != nil {
		c.log.Error().Err(err).Str("subject", m.Subject()).Msg("terminating a message without stream metadata")
		_ = m.TermWithReason("ferry: not a stream message")
		return nil
	}
	seq := md.Sequence.Stream
	ev, err := Decode(m)
	switch {
	case err == nil:
	case errors.Is(err, events.ErrUnknownType) && c.o.Unknown == UnknownDeliver:
		// The handler gets the envelope; ev.Payload() reports the error.
	case errors.Is(err, events.ErrUnknownType):
		c.log.Error().Err(err).Uint64("seq", seq).Str("subject", m.Subject()).
			Msg("event of a type or version this program does not know: stopping without acknowledging it; upgrade the program")
		_ = m.Nak()
		return fmt.Errorf("consume %s: seq %d: %w", c.name, seq, err)
	default:
		c.log.Error().Err(err).Uint64("seq", seq).Str("subject", m.Subject()).Uint64("delivered", md.NumDelivered).
			Msg("terminating a message that cannot be decoded as a ferry event: this consumer will not see it again (the log keeps it)")
		if terr := m.TermWithReason(termReason(err)); terr != nil {
			c.log.Warn().Err(terr).Uint64("seq", seq).Msg("terminate failed; the message will come back")
		}
		return nil
	}

	herr := c.runHandler(ctx, m, ev)
	if herr == nil {
		// The handler's work is done: record it even if ctx just ended,
		// or the next run does it again.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := m.DoubleAck(actx); err != nil {
			c.log.Warn().Err(err).Uint64("seq", seq).Str("id", ev.ID.String()).
				Msg("acknowledgement not confirmed; the event may be delivered again")
		}
		return nil
	}
	if ctx.Err() != nil {
		// Stopping: hand it back without delay, for the next run.
		_ = m.Nak()
		return nil
	}
	delay := c.retryDelay(md.NumDelivered)
	c.log.Warn().Err(herr).Uint64("seq", seq).Str("type", ev.Type).Str("id", ev.ID.String()).
		Uint64("delivered", md.NumDelivered).Dur("retry_in", delay).Msg("handler failed; the event will be delivered again")
	if err := m.NakWithDelay(delay); err != nil {
		c.log.Warn().Err(err).Uint64("seq", seq).Msg("nak failed; the event comes back after the ack wait")
	}
	return nil
}

// runHandler calls the handler, telling the server every AckWait/3 that
// the event is still being worked on, so that a slow handler does not get
// it delivered a second time meanwhile.
func (c *Consumer) runHandler(ctx context.Context, m jetstream.Msg, ev events.Event) error {
	every := c.o.AckWait / 3
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	mu.Lock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = m.InProgress()
		t.Reset(every)
	})
	mu.Unlock()
	defer func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}()
	return c.h(ctx, ev)
}

// retryDelay is RetryMin doubled for every delivery after the first, at
// most RetryMax.
func (c *Consumer) retryDelay(delivered uint64) time.Duration {
	d := c.o.RetryMin
	for i := uint64(1); i < delivered; i++ {
		if d >= c.o.RetryMax/2 {
			return c.o.RetryMax
		}
		d *= 2
	}
	return min(d, c.o.RetryMax)
}

// termReason fits an error into the reason a Term carries (the server
// puts it in an advisory).
func termReason(err error) string {
	r := "ferry: undecodable event: " + err.Error()
	if len(r) > 200 {
		r = r[:200]
	}
	return r
}
