package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
)

// eventRoutes registers the event-stream API (GET /v1/events).
func (s *Service) eventRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/events", s.handle(s.eventLog))
}

// --- server-sent events -------------------------------------------------------

// sseKeepAlive is how often an event stream carries a comment line, so
// that proxies and load balancers do not cut a stream that has been idle.
var sseKeepAlive = 15 * time.Second

// sseStream is one text/event-stream response. Events and keep-alive
// comments share it under a lock; a failed write ends the stream's context.
type sseStream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	cancel context.CancelFunc
	mu     sync.Mutex
}

// serveSSE answers with an event stream: it sends the headers, then runs fn
// with a context that ends when the client goes away or a write fails,
// sending a keep-alive comment every sseKeepAlive meanwhile. Once the
// headers are out nothing can become a problem document any more, so
// serveSSE returns fn's error for the log, and nil when the stream simply
// ended because the client left.
func serveSSE(w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, sse *sseStream) error) error {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: do not buffer
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sse := &sseStream{w: w, rc: rc, cancel: cancel}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		t := time.NewTicker(sseKeepAlive)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = sse.send(": keep-alive\n\n")
			}
		}
	})
	err := fn(ctx, sse)
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// send writes and flushes one piece of the stream.
func (s *sseStream) send(format string, args ...any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := fmt.Fprintf(s.w, format, args...); err != nil {
		s.cancel()
		return err
	}
	if err := s.rc.Flush(); err != nil {
		s.cancel()
		return err
	}
	return nil
}

// event sends one event: its stream sequence as the id (which a client
// sends back as Last-Event-ID to resume), its type as the event name, and
// its envelope as the data.
func (s *sseStream) event(ev *events.Event) error {
	body, err := events.Marshal(ev)
	if err != nil {
		return err
	}
	return s.send("id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, ev.Type, body)
}

// --- GET /v1/events -----------------------------------------------------------

// EventLogEnd is the data of the "end" event that closes a stream of
// GET /v1/events without follow: the log ended at EndSeq when the request
// came, and a stream without it was cut short (resume with Last-Event-ID).
type EventLogEnd struct {
	EndSeq uint64 `json:"end_seq"`
}

// eventLogQuery is what GET /v1/events was asked for, checked.
type eventLogQuery struct {
	job     string
	types   map[string]bool // nil: every type
	agent   string
	since   time.Time
	fromSeq uint64
	after   uint64 // Last-Event-ID: resume after this sequence
	follow  bool
}

var eventLogParams = []string{"agent", "follow", "from_seq", "job", "since", "type"}

// parseEventLogQuery checks every parameter and reports every problem in
// one E_INVALIDARG.
func parseEventLogQuery(r *http.Request) (eventLogQuery, error) {
	var q eventLogQuery
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return q, job.Errorf(job.E_INVALIDARG, "malformed query string: %v", err)
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range vals {
			if !yield(k) {
				return
			}
		}
	}) {
		switch {
		case !slices.Contains(eventLogParams, name):
			bad("unknown parameter %q (known: %s)", name, strings.Join(eventLogParams, ", "))
		case name != "type" && len(vals[name]) > 1:
			bad("parameter %q given %d times", name, len(vals[name]))
		}
	}
	if v := vals.Get("job"); v != "" {
		if !events.ValidID(v) {
			bad("job %q is not a job ID", v)
		}
		q.job = v
	}
	if v := vals.Get("agent"); v != "" {
		if !events.ValidID(v) {
			bad("agent %q is not an agent ID", v)
		}
		q.agent = v
	}
	known := events.Types()
	for _, v := range vals["type"] {
		for t := range strings.SplitSeq(v, ",") {
			t = strings.TrimSpace(t)
			if _, ok := known[t]; !ok {
				bad("unknown event type %q (known: %s)", t, strings.Join(events.TypeNames(), ", "))
				continue
			}
			if q.types == nil {
				q.types = map[string]bool{}
			}
			q.types[t] = true
		}
	}
	if v := vals.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			bad("since %q is not an RFC 3339 time such as 2026-11-22T08:00:00Z", v)
		}
		q.since = t
	}
	if v := vals.Get("from_seq"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			bad("from_seq %q is not a stream sequence number", v)
		}
		q.fromSeq = n
	}
	if vals.Has("since") && vals.Has("from_seq") {
		bad("since and from_seq exclude each other: start at a time or at a sequence")
	}
	if vals.Has("follow") {
		// A bare ?follow means true.
		if v := vals.Get("follow"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				bad("follow %q is not true or false", v)
			}
			q.follow = b
		} else {
			q.follow = true
		}
	}
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			bad("Last-Event-ID %q is not a stream sequence number", v)
		}
		q.after = n
	}
	if len(problems) > 0 {
		return q, job.Errorf(job.E_INVALIDARG, "GET /v1/events: %s", strings.Join(problems, "; "))
	}
	return q, nil
}

// sinceSlack is how far before since the read starts in the stream: since
// selects by the events' own time, the stream finds positions by the time
// it stored them, which is later (a writer decides, then appends) unless
// the writer's clock runs ahead of the server's.
const sinceSlack = 5 * time.Minute

// eventLog is GET /v1/events: the whole log as server-sent events, filtered
// (job, type, agent), from a time (since) or a sequence (from_seq), or after
// Last-Event-ID, which a reconnecting client sends and which wins over both.
// With follow it goes on with new events; without, it stops at the end the
// log had when the request came and sends an "end" event.
//
// Administrators see every event. Users see the events of the jobs they
// own — the job's current owner (read model) sees its whole history; after
// an administrator takes ownership, the previous owner sees none of it any
// more, as GET /v1/jobs/{id} refuses them — and no agent or vault events.
func (s *Service) eventLog(w http.ResponseWriter, r *http.Request, c caller) error {
	q, err := parseEventLogQuery(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if q.job != "" {
		// The same answer as GET /v1/jobs/{id}: not found, or not yours.
		if _, err := s.load(ctx, q.job, c); err != nil {
			return err
		}
	}
	var end uint64
	if !q.follow {
		st, err := s.js.Stream(ctx, events.StreamName)
		if err != nil {
			return fmt.Errorf("coordinator: events: %w", err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			return fmt.Errorf("coordinator: events: %w", err)
		}
		end = info.State.LastSeq
	}

	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: q.subjects(c), DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case q.after > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, q.after+1
	case q.fromSeq > 1:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, q.fromSeq
	case !q.since.IsZero():
		start := q.since.Add(-sinceSlack)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	cons, err := s.js.OrderedConsumer(ctx, events.StreamName, cfg)
	if err != nil {
		return fmt.Errorf("coordinator: events: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("coordinator: events: %w", err)
	}
	defer func() {
		it.Stop()
		// Ordered consumers are ephemeral; delete it now rather than let
		// the server do it after its inactivity threshold.
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = s.js.DeleteConsumer(dctx, events.StreamName, info.Name)
			cancel()
		}
	}()
	pending := uint64(1)
	if info := cons.CachedInfo(); info != nil {
		pending = info.NumPending
	}

	vis := &visibility{s: s, c: c, owners: map[string]jobOwner{}}
	err = serveSSE(w, r, func(ctx context.Context, sse *sseStream) error {
		if !q.follow && (pending == 0 || end == 0 || cfg.OptStartSeq > end) {
			return sse.send("event: end\ndata: %s\n\n", endData(end))
		}
		for {
			m, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				return err
			}
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			seq := md.Sequence.Stream
			if !q.follow && seq > end {
				return sse.send("event: end\ndata: %s\n\n", endData(end))
			}
			if ev, err := events.DecodeMsg(m); err != nil {
				// The projector stops on such a message; a reader of the
				// log shows what it can and says what it skipped.
				s.log.Warn().Err(err).Uint64("seq", seq).Msg("event stream: skipping a malformed message")
				if err := sse.send(": skipped sequence %d: not a ferry event\n\n", seq); err != nil {
					return err
				}
			} else if ok, err := vis.allowed(ctx, &ev); err != nil {
				return err
			} else if ok && q.match(&ev) {
				if err := sse.event(&ev); err != nil {
					return err
				}
			}
			if !q.follow && (seq >= end || md.NumPending == 0) {
				return sse.send("event: end\ndata: %s\n\n", endData(end))
			}
		}
	})
	if err != nil {
		s.log.Debug().Err(err).Msg("event log stream ended")
	}
	return nil
}

func endData(end uint64) []byte {
	b, _ := json.Marshal(EventLogEnd{EndSeq: end})
	return b
}

// subjects are the stream's subject filters for q: the server leaves out
// what is not on them.
func (q *eventLogQuery) subjects(c caller) []string {
	switch {
	case q.job != "":
		return []string{events.JobSubject(q.job)}
	case !c.admin():
		return []string{events.SubjectPrefix + events.KindJob + ".>"}
	}
	// Agent events are on the agent's subject, but job and vault events
	// name agents too.
	return []string{events.SubjectPrefix + ">"}
}

// match applies the filters the stream's subjects cannot.
func (q *eventLogQuery) match(ev *events.Event) bool {
	switch {
	case q.types != nil && !q.types[ev.Type]:
		return false
	case !q.since.IsZero() && ev.Time.Before(q.since):
		return false
	case q.agent != "" && !namesAgent(ev, q.agent):
		return false
	}
	return true
}

// namesAgent reports whether ev concerns agent id: it is on the agent's
// own subject, the agent wrote it (actor), or its data names the agent
// (agent: the lease holder, the host connecting, transferring, holding
// files to complete or delete, the agent a key or headers went to;
// previous_agent: the holder a takeover replaced).
func namesAgent(ev *events.Event, id string) bool {
	if ev.Kind == events.KindAgent {
		return ev.AggregateID == id
	}
	if isAgent(ev.Actor, id) {
		return true
	}
	var d struct {
		Agent         string `json:"agent"`
		PreviousAgent string `json:"previous_agent"`
	}
	if json.Unmarshal(ev.Data, &d) != nil {
		return false
	}
	return isAgent(d.Agent, id) || isAgent(d.PreviousAgent, id)
}

// isAgent reports whether s names agent id: the ID itself, or the agent's
// principal (spiffe://<trust-domain>/agent/<id>, agent/<id>).
func isAgent(s, id string) bool {
	return s != "" && (s == id || s == "agent/"+id || strings.HasSuffix(s, "/agent/"+id))
}

// visibility decides which events a caller may see. Administrators see
// all. A user sees a job's events while they are its owner: the read
// model's owner when the stream first meets the job, then as the stream's
// own JobOwnerChanged events say.
type visibility struct {
	s      *Service
	c      caller
	owners map[string]jobOwner
}

type jobOwner struct {
	owner string
	asOf  uint64 // the sequence the owner is known at
}

func (v *visibility) allowed(ctx context.Context, ev *events.Event) (bool, error) {
	if v.c.admin() {
		return true, nil
	}
	if ev.Kind != events.KindJob {
		return false, nil
	}
	id := ev.AggregateID
	o, ok := v.owners[id]
	if !ok {
		j, found, err := v.s.readModel.Get(ctx, id)
		if err != nil {
			return false, err
		}
		if !found || j.Version < ev.Seq {
			// The projector has not reached this event yet.
			if j, err = v.s.repo.LoadAtLeast(ctx, id, ev.Seq); err != nil {
				return false, err
			}
		}
		o = jobOwner{owner: j.Owner, asOf: j.Version}
		if len(v.owners) >= 10000 {
			clear(v.owners) // a long stream over many jobs: look them up again
		}
	}
	if ev.Seq > o.asOf && ev.Type == events.TypeJobOwnerChanged {
		// Taken over while the stream follows: from here on the new owner
		// (an administrator) sees the job, the previous owner no more.
		p, err := ev.Payload()
		if err != nil {
			return false, err
		}
		if oc, ok := p.(*events.JobOwnerChanged); ok {
			o = jobOwner{owner: oc.To, asOf: ev.Seq}
		}
	}
	v.owners[id] = o
	return o.owner == v.c.Principal, nil
}
