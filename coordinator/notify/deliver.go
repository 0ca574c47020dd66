package notify

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// result is what became of one delivered message.
type result int

const (
	resultSkipped   result = iota // no flag wanted: acknowledged at once
	resultDelivered               // the webhook answered 2xx: acknowledged
	resultRetry                   // the attempt failed: redelivery after a delay
	resultGaveUp                  // MaxDeliver attempts failed: terminated
	resultRefused                 // the webhook may never be called: terminated
	resultDropped                 // the event cannot be processed: terminated
	resultStopped                 // the notifier stopped: handed back for redelivery
	resultQueued                  // received and queued for delivery (not final)
)

func (r result) String() string {
	return [...]string{"skipped", "delivered", "retry", "gave-up", "refused", "dropped", "stopped", "queued"}[r]
}

// outcome describes one message's handling (logs and tests).
type outcome struct {
	seq     uint64
	jobID   string
	flag    string
	attempt uint64
	status  int
	result  result
	delay   time.Duration
	err     error
}

// item is one delivery of a message with the notification it carries.
type item struct {
	m       jetstream.Msg
	d       *delivery
	attempt uint64 // the message's delivery count, from 1
}

// dispatcher runs deliveries: one lane per job, so that a job's
// notifications are attempted one at a time in the order they were
// delivered, and at most Concurrency requests at once over all lanes.
type dispatcher struct {
	n      *Notifier
	ctx    context.Context
	cancel context.CancelFunc
	memo   *memo
	sem    chan struct{}

	mu    sync.Mutex
	lanes map[string]*lane
	wg    sync.WaitGroup
}

type lane struct{ queue []*item }

func newDispatcher(ctx context.Context, n *Notifier) *dispatcher {
	ctx, cancel := context.WithCancel(ctx)
	d := &dispatcher{
		n: n, ctx: ctx, cancel: cancel,
		memo:  newMemo(4 * n.cfg.MaxAckPending),
		sem:   make(chan struct{}, n.cfg.Concurrency),
		lanes: map[string]*lane{},
	}
	d.wg.Go(d.keepAlive)
	return d
}

// wait stops the dispatcher: requests in flight are cancelled, and what is
// not finished is handed back for immediate redelivery.
func (d *dispatcher) wait() {
	d.cancel()
	d.wg.Wait()
}

func (d *dispatcher) enqueue(it *item) {
	d.n.report(outcome{seq: it.d.seq, jobID: it.d.jobID, flag: it.d.flag, attempt: it.attempt, result: resultQueued})
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.lanes[it.d.jobID]
	if l == nil {
		l = &lane{}
		d.lanes[it.d.jobID] = l
		d.wg.Go(func() { d.run(it.d.jobID, l) })
	}
	l.queue = append(l.queue, it)
}

// run delivers a lane's items in order until it is empty.
func (d *dispatcher) run(jobID string, l *lane) {
	for {
		select {
		case d.sem <- struct{}{}:
		case <-d.ctx.Done():
			d.handBack(jobID, l)
			return
		}
		d.mu.Lock()
		if len(l.queue) == 0 {
			delete(d.lanes, jobID)
			d.mu.Unlock()
			<-d.sem
			return
		}
		it := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		d.mu.Unlock()
		d.deliver(it)
		<-d.sem
	}
}

// handBack returns a stopped lane's items to the server for redelivery now.
func (d *dispatcher) handBack(jobID string, l *lane) {
	d.mu.Lock()
	q := l.queue
	l.queue = nil
	delete(d.lanes, jobID)
	d.mu.Unlock()
	for _, it := range q {
		_ = it.m.Nak()
		d.n.report(outcome{seq: it.d.seq, jobID: jobID, flag: it.d.flag, attempt: it.attempt, result: resultStopped})
	}
}

// keepAlive tells the server that the notifications waiting in a lane are
// being worked on, so that a long queue behind a slow webhook is not
// redelivered while it waits.
func (d *dispatcher) keepAlive() {
	t := time.NewTicker(max(d.n.cfg.AckWait/3, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		for _, l := range d.lanes {
			for _, it := range l.queue {
				_ = it.m.InProgress()
			}
		}
		d.mu.Unlock()
	}
}

// maxResponse is how much of a webhook's answer is read (and discarded) so
// that the connection can be reused.
const maxResponse = 64 << 10

// deliver makes one attempt and settles the message: ack, retry later,
// terminate, or hand back when stopping.
func (d *dispatcher) deliver(it *item) {
	n, dl := d.n, it.d
	o := outcome{seq: dl.seq, jobID: dl.jobID, flag: dl.flag, attempt: it.attempt}
	log := n.log.With().Str("job", dl.jobID).Uint64("seq", dl.seq).Str("flag", dl.flag).
		Uint64("attempt", it.attempt).Str("webhook", redactURL(dl.url)).Logger()

	u, err := url.Parse(dl.url)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		// The job model only stores absolute https URLs without
		// credentials; anything else never is called.
		o.result, o.err = resultRefused, errors.New("the webhook URL is not an absolute https URL")
		log.Error().Err(o.err).Msg("notification refused")
		_ = it.m.TermWithReason("webhook url refused")
		d.memo.del(dl.seq)
		n.report(o)
		return
	}
	req, err := http.NewRequestWithContext(d.ctx, http.MethodPost, dl.url, bytes.NewReader(dl.body))
	if err != nil {
		o.result, o.err = resultRefused, err
		log.Error().Err(err).Msg("notification refused")
		_ = it.m.TermWithReason("webhook request invalid")
		d.memo.del(dl.seq)
		n.report(o)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ferry-notify/1")
	req.Header.Set(HeaderEventID, dl.id)
	req.Header.Set(HeaderAttempt, strconv.FormatUint(it.attempt, 10))
	req.Header.Set(HeaderSignature, Sign(n.cfg.Secret, n.now(), dl.body))

	var wait time.Duration
	resp, err := n.client.Do(req)
	if err == nil {
		o.status = resp.StatusCode
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			wait = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponse))
		_ = resp.Body.Close()
	} else {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message repeats the URL, query included
		}
	}
	o.err = err

	switch {
	case err == nil && resp.StatusCode >= 200 && resp.StatusCode < 300:
		_ = it.m.Ack()
		d.memo.del(dl.seq)
		o.result = resultDelivered
		log.Debug().Int("status", o.status).Msg("notification delivered")
	case err != nil && d.ctx.Err() != nil:
		_ = it.m.Nak()
		o.result = resultStopped
	case isBlocked(err):
		_ = it.m.TermWithReason("webhook address refused")
		d.memo.del(dl.seq)
		o.result = resultRefused
		log.Error().Err(err).Msg("notification refused: the webhook resolves to a link-local or metadata address")
	case it.attempt >= uint64(n.cfg.MaxDeliver):
		_ = it.m.TermWithReason("notification given up")
		d.memo.del(dl.seq)
		o.result = resultGaveUp
		log.Error().Err(err).Int("status", o.status).Msg("notification given up after the last attempt")
	default:
		o.delay = n.backoff(it.attempt)
		if wait > o.delay {
			o.delay = min(wait, n.cfg.Backoff[len(n.cfg.Backoff)-1])
		}
		_ = it.m.NakWithDelay(o.delay)
		o.result = resultRetry
		log.Warn().Err(err).Int("status", o.status).Dur("retry_in", o.delay).Msg("notification failed; will retry")
	}
	n.report(o)
}

// retryAfter parses a Retry-After header (seconds or an HTTP date).
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.ParseInt(h, 10, 32); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		return t.Sub(now)
	}
	return 0
}

// memo keeps the notifications of messages that are not settled yet, by
// stream sequence, so that a retry sends the same bytes without reading the
// job's history again. It is bounded: a notification it forgot is computed
// again from the event log, with the same result.
type memo struct {
	mu  sync.Mutex
	m   map[uint64]*delivery
	max int
}

func newMemo(max int) *memo { return &memo{m: map[uint64]*delivery{}, max: max} }

func (c *memo) get(seq uint64) *delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[seq]
}

func (c *memo) put(d *delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.m {
		if len(c.m) < c.max {
			break
		}
		delete(c.m, k)
	}
	c.m[d.seq] = d
}

func (c *memo) del(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, seq)
}
