// Package notify owns job notifications (BITS SetNotifyFlags): it follows
// the event log with a durable JetStream consumer and POSTs a signed JSON
// notification to a job's HTTPS webhook for every event that raises a flag
// the job asked for, at least once, across restarts.
//
// Which flag an event raises is FlagFor; whether the job wants it is
// job.NotifyWants on the job's state right after that event, so a settings
// change applies from the event that made it onwards, never to earlier
// events. Receivers check requests with VerifySignature. docs/notifications.md
// is the user's guide.
//
// It imports events and job, and nothing else of ferry's.
package notify

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Defaults of Config.
const (
	DefaultConsumer      = "ferry_notify"
	DefaultTimeout       = 10 * time.Second
	DefaultMaxDeliver    = 30
	DefaultMaxAckPending = 1024
	DefaultConcurrency   = 16
	DefaultCacheSize     = 10000
	// minSecret is the shortest HMAC key accepted (32 random bytes are
	// recommended).
	minSecret = 16
)

// DefaultBackoff is the delay before each retry: the n-th failed attempt
// waits DefaultBackoff[n-1], and the last step repeats. With
// DefaultMaxDeliver a notification is tried for about 4 hours.
var DefaultBackoff = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute}

// Secret is an HMAC key. It prints and encodes as "[redacted]", so logging
// a Config never shows it.
type Secret []byte

func (Secret) String() string               { return "[redacted]" }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// Format makes every fmt verb (%x and %d included) print "[redacted]".
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "[redacted]") }

func (s Secret) clone() Secret { return append(Secret(nil), s...) }

// Config tunes the notifier. Only Secret is required; every other zero
// value means the default.
type Config struct {
	// Secret is the HMAC-SHA256 key that signs every request
	// (Ferry-Signature); receivers verify with the same key. At least 16
	// bytes; 32 random bytes are recommended.
	Secret Secret
	// Consumer is the durable consumer's name on FERRY_EVENTS (default
	// "ferry_notify"). The consumer remembers what was delivered: keep the
	// name to resume after a restart.
	Consumer string
	// RootCAs verify the webhooks' certificates; nil means the system roots.
	RootCAs *x509.CertPool
	// Timeout bounds one delivery attempt: connect, TLS, request and
	// response (default 10 s).
	Timeout time.Duration
	// MaxDeliver is how many attempts a notification gets before it is
	// given up (default 30).
	MaxDeliver int
	// Backoff is the delay after each failed attempt (default
	// DefaultBackoff); the last value repeats.
	Backoff []time.Duration
	// AckWait is how long the server waits for an outcome before it
	// redelivers (default max(30 s, Timeout + 15 s)); it must be longer
	// than Timeout. Notifications waiting behind another of the same job
	// are kept alive meanwhile.
	AckWait time.Duration
	// MaxAckPending bounds the notifications in progress or awaiting a
	// retry, over all jobs (default 1024). When that many are pending, the
	// consumer delivers nothing more until some succeed or are given up.
	MaxAckPending int
	// Concurrency bounds the requests in flight at once (default 16).
	Concurrency int
	// CacheSize bounds the job states kept in memory (default 10000).
	CacheSize int
}

// withDefaults returns c with defaults filled in, and every problem at once.
func (c Config) withDefaults() (Config, error) {
	var problems []error
	if len(c.Secret) == 0 {
		problems = append(problems, errors.New("a secret is required"))
	} else if len(c.Secret) < minSecret {
		problems = append(problems, fmt.Errorf("the secret has %d bytes; at least %d are required", len(c.Secret), minSecret))
	}
	c.Secret = c.Secret.clone()
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	} else if !events.ValidID(c.Consumer) {
		problems = append(problems, fmt.Errorf("consumer name %q is not one subject token", c.Consumer))
	}
	switch {
	case c.Timeout == 0:
		c.Timeout = DefaultTimeout
	case c.Timeout < 0:
		problems = append(problems, fmt.Errorf("timeout %v is negative", c.Timeout))
	}
	switch {
	case c.MaxDeliver == 0:
		c.MaxDeliver = DefaultMaxDeliver
	case c.MaxDeliver < 0:
		problems = append(problems, fmt.Errorf("max deliver %d is negative", c.MaxDeliver))
	}
	if len(c.Backoff) == 0 {
		c.Backoff = DefaultBackoff
	}
	for i, d := range c.Backoff {
		if d <= 0 {
			problems = append(problems, fmt.Errorf("backoff step %d (%v) is not positive", i, d))
		}
	}
	c.Backoff = append([]time.Duration(nil), c.Backoff...)
	switch {
	case c.AckWait == 0:
		c.AckWait = max(30*time.Second, c.Timeout+15*time.Second)
	case c.AckWait <= c.Timeout:
		problems = append(problems, fmt.Errorf("ack wait %v must be longer than the timeout %v", c.AckWait, c.Timeout))
	}
	switch {
	case c.MaxAckPending == 0:
		c.MaxAckPending = DefaultMaxAckPending
	case c.MaxAckPending < 0:
		problems = append(problems, fmt.Errorf("max ack pending %d is negative", c.MaxAckPending))
	}
	switch {
	case c.Concurrency == 0:
		c.Concurrency = DefaultConcurrency
	case c.Concurrency < 0:
		problems = append(problems, fmt.Errorf("concurrency %d is negative", c.Concurrency))
	}
	switch {
	case c.CacheSize == 0:
		c.CacheSize = DefaultCacheSize
	case c.CacheSize < 0:
		problems = append(problems, fmt.Errorf("cache size %d is negative", c.CacheSize))
	}
	if err := errors.Join(problems...); err != nil {
		return c, fmt.Errorf("notify: config: %w", err)
	}
	return c, nil
}

// ConsumerConfig is the durable pull consumer the notifier creates (or
// updates) on FERRY_EVENTS for cfg (defaults applied).
func ConsumerConfig(cfg Config) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       cfg.Consumer,
		Description:   "ferry job notifications (coordinator/notify)",
		FilterSubject: events.SubjectPrefix + events.KindJob + ".>",
		// On first creation: the whole log, so nothing is missed. A
		// durable consumer keeps its position, so a restart resumes.
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    cfg.MaxDeliver,
		MaxAckPending: cfg.MaxAckPending,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
}

// Notifier delivers job notifications. Build it with New and run it with
// Run.
type Notifier struct {
	cfg       Config
	log       zerolog.Logger
	js        jetstream.JetStream
	store     events.Store
	client    *http.Client
	transport *http.Transport

	// now is the clock of signature timestamps.
	now func() time.Time
	// observe, if set, sees every outcome (tests).
	observe func(outcome)

	running sync.Mutex // one Run at a time
}

// New builds a notifier that reads the event log through js (consumer) and
// store (job histories). It does no I/O: Run creates the consumer.
func New(cfg Config, log zerolog.Logger, js jetstream.JetStream, store events.Store) (*Notifier, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if js == nil || store == nil {
		return nil, errors.New("notify: a JetStream context and an event store are required")
	}
	client, tr := newClient(&cfg)
	return &Notifier{
		cfg: cfg, log: log.With().Str("component", "notify").Logger(),
		js: js, store: store, client: client, transport: tr, now: time.Now,
	}, nil
}

// Run creates or updates the consumer (ConsumerConfig) and delivers
// notifications until ctx ends; then it stops, hands back what it has not
// finished for immediate redelivery, and returns nil. Other errors (the
// stream is missing, the consumer was deleted) are returned.
func (n *Notifier) Run(ctx context.Context) error {
	n.running.Lock()
	defer n.running.Unlock()
	defer n.transport.CloseIdleConnections()

	cons, err := n.ensureConsumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("notify: consumer %s on %s: %w", n.cfg.Consumer, events.StreamName, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(min(n.cfg.MaxAckPending, 256)))
	if err != nil {
		return fmt.Errorf("notify: consume %s: %w", n.cfg.Consumer, err)
	}
	d := newDispatcher(ctx, n)
	defer d.wait()
	defer handBackBuffered(it)

	n.log.Info().Str("consumer", n.cfg.Consumer).Msg("delivering notifications")
	state := newTracker(n.store, n.cfg.CacheSize)
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return fmt.Errorf("notify: consume %s: %w", n.cfg.Consumer, err)
			}
			// A missed heartbeat or a leader change: the iterator
			// recovers by itself. Do not spin meanwhile.
			n.log.Warn().Err(err).Msg("consumer hiccup")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		n.handle(ctx, state, d, m)
	}
}

// ensureConsumer creates the consumer, or updates an existing one to the
// configured settings while keeping where it started (a start policy cannot
// change, and an operator may have created it to start from now).
func (n *Notifier) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cc := ConsumerConfig(n.cfg)
	existing, err := n.js.Consumer(ctx, events.StreamName, n.cfg.Consumer)
	switch {
	case err == nil:
		old := existing.CachedInfo().Config
		cc.DeliverPolicy, cc.OptStartSeq, cc.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return nil, err
	}
	return n.js.CreateOrUpdateConsumer(ctx, events.StreamName, cc)
}

// handle decides what one message needs: nothing (ack), a delivery (queued
// behind the job's earlier ones), or a retry later.
func (n *Notifier) handle(ctx context.Context, state *tracker, d *dispatcher, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		n.log.Error().Err(err).Msg("dropping a message without JetStream metadata")
		_ = m.Term()
		return
	}
	state.delivered(md.Sequence.Consumer)
	seq, attempt := md.Sequence.Stream, md.NumDelivered
	if attempt > 1 {
		if dl := d.memo.get(seq); dl != nil {
			d.enqueue(&item{m: m, d: dl, attempt: attempt})
			return
		}
	}
	ev, err := events.Unmarshal(m.Data())
	if err != nil {
		n.log.Error().Err(err).Uint64("seq", seq).Msg("dropping an undecodable event")
		_ = m.TermWithReason("undecodable event")
		n.report(outcome{seq: seq, result: resultDropped, err: err})
		return
	}
	ev.Seq = seq
	flag := FlagFor(ev.Type)
	j, ok, err := state.stateAt(ctx, &ev, attempt == 1, flag != "")
	var re *replayError
	switch {
	case errors.As(err, &re):
		// A newer writer's event this version cannot apply: the job's
		// notifications cannot be computed.
		n.log.Error().Err(err).Str("job", ev.AggregateID).Uint64("seq", seq).Msg("dropping an event the job model cannot apply")
		_ = m.TermWithReason("event cannot be applied")
		n.report(outcome{seq: seq, jobID: ev.AggregateID, result: resultDropped, err: err})
		return
	case err != nil:
		if ctx.Err() != nil {
			_ = m.Nak()
			return
		}
		if attempt >= uint64(n.cfg.MaxDeliver) {
			n.log.Error().Err(err).Str("job", ev.AggregateID).Uint64("seq", seq).Msg("cannot read the job's history; notification given up")
			_ = m.TermWithReason("job history unreadable")
			n.report(outcome{seq: seq, jobID: ev.AggregateID, flag: flag, attempt: attempt, result: resultGaveUp, err: err})
			return
		}
		n.log.Warn().Err(err).Str("job", ev.AggregateID).Uint64("seq", seq).Msg("cannot read the job's history; retrying")
		_ = m.NakWithDelay(n.backoff(attempt))
		return
	}
	if !ok || flag == "" || !job.NotifyWants(j.Options, flag) {
		_ = m.Ack()
		n.report(outcome{seq: seq, jobID: ev.AggregateID, flag: flag, result: resultSkipped})
		return
	}
	dl, err := newDelivery(&ev, flag, j)
	if err != nil {
		n.log.Error().Err(err).Str("job", ev.AggregateID).Uint64("seq", seq).Msg("cannot encode the notification")
		_ = m.TermWithReason("cannot encode")
		n.report(outcome{seq: seq, jobID: ev.AggregateID, flag: flag, result: resultDropped, err: err})
		return
	}
	d.memo.put(dl)
	d.enqueue(&item{m: m, d: dl, attempt: attempt})
}

// handBackBuffered stops the iterator and hands the messages it had
// already pulled back to the server, so that the next notifier gets them at
// once instead of after AckWait.
func handBackBuffered(it jetstream.MessagesContext) {
	it.Drain()
	for {
		m, err := it.Next(jetstream.NextMaxWait(time.Second))
		if err != nil {
			return
		}
		_ = m.Nak()
	}
}

// backoff is the delay after the attempt-th failed attempt.
func (n *Notifier) backoff(attempt uint64) time.Duration {
	b := n.cfg.Backoff
	if attempt < 1 {
		attempt = 1
	}
	return b[min(attempt-1, uint64(len(b)-1))]
}

func (n *Notifier) report(o outcome) {
	if n.observe != nil {
		n.observe(o)
	}
}
