package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the JetStream stream that holds ferry's event log.
const StreamName = "FERRY_EVENTS"

// HeaderEventType carries the event type on every stored message, so that
// tools can filter without decoding bodies.
const HeaderEventType = "Ferry-Event-Type"

// Headers of JetStream's atomic batch publish (ADR-50) and batched direct
// get (ADR-31), which nats.go has no API for.
const (
	hdrNumPending  = "Nats-Num-Pending"
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"
)

// JetStream API error codes the store interprets.
const (
	errCodeWrongLastSeq      = 10071 // stale expectation; description holds the actual last sequence
	errCodeWrongLastSeqConst = 10164 // stale expectation, replicated stream, no number
	errCodeDuplicateInFlight = 10158 // a message with this ID is still being proposed
	errCodeBatchIncomplete   = 10176 // the server did not see every message of a batch
	errCodeBatchDuplicate    = 10201 // a batch repeats an ID the stream already holds
)

// Header values shared by every message. nats.go only reads header maps when
// it encodes a message, so one slice can safely serve every message.
var (
	hdrValStream = []string{StreamName}
	hdrValCommit = []string{"1"}
)

// minDuplicates is the shortest de-duplication window the stream may have:
// it must cover a publish timeout plus the read and the resend after it.
const minDuplicates = 2 * time.Minute

// StreamOptions are the deployment-dependent settings of the event stream.
// The zero value is an embedded single-node log without a size limit.
type StreamOptions struct {
	// Replicas is 1 (the default) embedded and 3 on a cluster.
	Replicas int
	// MaxBytes is the disk budget; 0 means unlimited. With Discard New a full
	// log refuses appends instead of dropping history.
	MaxBytes int64
	// Duplicates is the de-duplication window; 0 means 2 minutes, the
	// minimum.
	Duplicates time.Duration
}

// StreamConfig returns the configuration of the event stream for o.
func StreamConfig(o StreamOptions) (jetstream.StreamConfig, error) {
	var problems []error
	if o.Replicas < 0 || o.Replicas > 5 {
		problems = append(problems, fmt.Errorf("replicas %d not in 1..5", o.Replicas))
	}
	if o.MaxBytes < 0 {
		problems = append(problems, fmt.Errorf("max bytes %d is negative", o.MaxBytes))
	}
	if o.Duplicates != 0 && o.Duplicates < minDuplicates {
		problems = append(problems, fmt.Errorf("duplicates window %v is shorter than %v", o.Duplicates, minDuplicates))
	}
	if err := errors.Join(problems...); err != nil {
		return jetstream.StreamConfig{}, fmt.Errorf("events: stream options: %w", err)
	}
	cfg := jetstream.StreamConfig{
		Name:               StreamName,
		Description:        "ferry event log: one subject per aggregate",
		Subjects:           []string{SubjectPrefix + ">"},
		Retention:          jetstream.LimitsPolicy,
		Storage:            jetstream.FileStorage,
		Discard:            jetstream.DiscardNew,
		MaxAge:             0,
		MaxMsgs:            -1,
		MaxBytes:           -1,
		MaxMsgsPerSubject:  -1,
		MaxMsgSize:         1 << 20,
		Replicas:           max(o.Replicas, 1),
		Duplicates:         max(o.Duplicates, minDuplicates),
		DenyDelete:         true,
		AllowDirect:        true,
		AllowAtomicPublish: true,
	}
	if o.MaxBytes > 0 {
		cfg.MaxBytes = o.MaxBytes
	}
	return cfg, nil
}

// EnsureStream creates the event stream, or updates it to the configuration
// for o.
func EnsureStream(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	cfg, err := StreamConfig(o)
	if err != nil {
		return err
	}
	if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("events: ensure stream %s: %w", StreamName, err)
	}
	return nil
}

// JetStreamStore is the Store on the JetStream stream FERRY_EVENTS. It is
// safe for concurrent use.
//
// Appends carry Nats-Msg-Id (the event ID) and the expected last sequence
// of the subject; several events go in one atomic batch. After a lost
// acknowledgement the store reads the subject before it resends, and a
// conflict whose cause is the writer's own earlier attempt counts as
// success, so re-appending the same events is always safe.
//
// Reads use direct get, which on a replicated stream may be answered by a
// follower that lags the leader: a writer then sees a conflict and reloads.
type JetStreamStore struct {
	js        jetstream.JetStream
	nc        *nats.Conn
	stream    jetstream.Stream
	directGet string        // batched direct get subject
	leaderGet string        // message get answered by the stream leader
	timeout   time.Duration // per request, when ctx has no earlier deadline
	resends   int           // resends after a lost acknowledgement

	// loseAcks makes the next n publishes drop their acknowledgement (the
	// messages are sent, the store sees a timeout). Tests only.
	loseAcks atomic.Int32
}

// NewJetStreamStore opens the event stream (see EnsureStream) through js.
func NewJetStreamStore(ctx context.Context, js jetstream.JetStream) (*JetStreamStore, error) {
	st, err := js.Stream(ctx, StreamName)
	if err != nil {
		return nil, fmt.Errorf("events: open stream %s: %w", StreamName, err)
	}
	if cfg := st.CachedInfo().Config; !cfg.AllowDirect || !cfg.AllowAtomicPublish {
		return nil, fmt.Errorf("events: open stream %s: direct get and atomic publish must be allowed (run EnsureStream)", StreamName)
	}
	o := js.Options()
	prefix := "$JS.API."
	switch {
	case o.Domain != "":
		prefix = "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		prefix = strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	timeout := o.DefaultTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &JetStreamStore{
		js:        js,
		nc:        js.Conn(),
		stream:    st,
		directGet: prefix + "DIRECT.GET." + StreamName,
		leaderGet: prefix + "STREAM.MSG.GET." + StreamName,
		timeout:   timeout,
		resends:   5,
	}, nil
}

// Append implements Store.
//
// One event is a plain JetStream publish. Several events are one atomic
// batch: the first message is a request the server answers with an empty ack
// once it has staged it (or with an error such as "too many batches in
// flight"), the middle ones are plain publishes, and the last one carries
// Nats-Batch-Commit and returns the PubAck of the whole batch. The
// expectation rides on the first message only and is checked at commit: a
// stale one rejects the batch and stores nothing.
//
// An error that is neither a conflict nor ErrInvalidAppend may leave the
// outcome unknown (for example when ctx ends mid-append); appending the same
// events again resolves it.
func (s *JetStreamStore) Append(ctx context.Context, subject string, expectedLast uint64, evs []Event) (uint64, error) {
	if err := checkAppend(subject, evs); err != nil {
		return 0, err
	}
	msgs, err := buildMsgs(subject, expectedLast, evs)
	if err != nil {
		return 0, err
	}
	for attempt := 0; ; attempt++ {
		last, err := s.publish(ctx, msgs, attempt)
		switch {
		case err == nil:
			fillSeqs(evs, last)
			return last, nil
		case ctx.Err() != nil:
			return 0, fmt.Errorf("events: append %s: outcome unknown: %w", subject, context.Cause(ctx))
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			switch apiErr.ErrorCode {
			case errCodeWrongLastSeq, errCodeWrongLastSeqConst, errCodeBatchDuplicate:
				return s.resolveConflict(ctx, subject, expectedLast, evs, apiErr)
			}
		}
		if !ambiguous(err) || attempt >= s.resends {
			return 0, fmt.Errorf("events: append %s: %w", subject, err)
		}
		// No acknowledgement: the events may be stored. Look before
		// resending. Should the read fail, resending is still safe: the
		// same IDs are de-duplicated or end in resolveConflict.
		if last, ok, rerr := s.recoverAppend(ctx, subject, evs); rerr == nil && ok {
			return last, nil
		}
		if err := pauseBeforeResend(ctx, attempt, err); err != nil {
			return 0, fmt.Errorf("events: append %s: outcome unknown: %w", subject, err)
		}
	}
}

// pauseBeforeResend waits before resending after an answer that came back
// at once because nobody could take the append — "no responders" while the
// stream elects a leader, or a server-side 503 —, so that the resends ride
// out the election instead of being spent back to back in a millisecond.
// After a timeout the time has already passed, and it does not wait.
func pauseBeforeResend(ctx context.Context, attempt int, cause error) error {
	if !errors.Is(cause, nats.ErrNoResponders) && !errors.Is(cause, jetstream.ErrNoStreamResponse) {
		return nil
	}
	d := min(250*time.Millisecond<<attempt, 2*time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// buildMsgs makes the messages of one append once; retries reuse them.
func buildMsgs(subject string, expectedLast uint64, evs []Event) ([]*nats.Msg, error) {
	msgs := make([]*nats.Msg, len(evs))
	for i := range evs {
		data, err := Marshal(&evs[i])
		if err != nil {
			return nil, fmt.Errorf("events: append %s: encode %s: %w", subject, evs[i].ID, err)
		}
		h := make(nats.Header, 7)
		h[jetstream.MsgIDHeader] = []string{evs[i].ID.String()}
		h[HeaderEventType] = []string{evs[i].Type}
		h[jetstream.ExpectedStreamHeader] = hdrValStream
		if i == 0 {
			h[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(expectedLast, 10)}
		}
		if len(evs) > 1 {
			h[hdrBatchSeq] = []string{strconv.Itoa(i + 1)}
			if i == len(evs)-1 {
				h[hdrBatchCommit] = hdrValCommit
			}
		}
		msgs[i] = &nats.Msg{Subject: subject, Header: h, Data: data}
	}
	return msgs, nil
}

// fillSeqs sets the sequences of evs, stored contiguously and ending at last.
// A batch is contiguous in the stream: a standalone server commits it under
// the stream's isolation lock, a cluster as one multi-entry proposal.
func fillSeqs(evs []Event, last uint64) {
	first := last + 1 - uint64(len(evs))
	for i := range evs {
		evs[i].Seq = first + uint64(i)
	}
}

// publish sends msgs once and returns the sequence of the last one.
func (s *JetStreamStore) publish(ctx context.Context, msgs []*nats.Msg, attempt int) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if s.loseAcks.Load() > 0 && s.loseAcks.Add(-1) >= 0 {
		for _, m := range msgs {
			if len(msgs) > 1 {
				m.Header[hdrBatchID] = []string{batchID(msgs, attempt)}
			}
			if err := s.nc.PublishMsg(m); err != nil {
				return 0, err
			}
		}
		return 0, nats.ErrTimeout
	}
	if len(msgs) == 1 {
		ack, err := s.js.PublishMsg(ctx, msgs[0])
		if err != nil {
			return 0, err
		}
		return ack.Sequence, nil
	}
	return s.publishBatch(ctx, msgs, attempt)
}

// batchID names one attempt of a batch. A fresh name per attempt keeps a
// resend apart from an earlier attempt the server may still hold staged.
func batchID(msgs []*nats.Msg, attempt int) string {
	return msgs[0].Header[jetstream.MsgIDHeader][0] + "-" + strconv.Itoa(attempt)
}

// pubAckResponse is the server's reply to a publish or a batch commit.
type pubAckResponse struct {
	Error    *jetstream.APIError `json:"error,omitempty"`
	Stream   string              `json:"stream"`
	Sequence uint64              `json:"seq"`
	Batch    string              `json:"batch,omitempty"`
	Count    int                 `json:"count,omitempty"`
}

func (s *JetStreamStore) publishBatch(ctx context.Context, msgs []*nats.Msg, attempt int) (uint64, error) {
	id := []string{batchID(msgs, attempt)}
	for _, m := range msgs {
		m.Header[hdrBatchID] = id
	}
	resp, err := s.nc.RequestMsgWithContext(ctx, msgs[0])
	if err != nil {
		return 0, err
	}
	if len(resp.Data) != 0 { // an error; an empty reply means "staged"
		_, err := parseAck(resp)
		if err == nil {
			err = fmt.Errorf("batch %s: unexpected reply to its first message", id[0])
		}
		return 0, err
	}
	for _, m := range msgs[1 : len(msgs)-1] {
		if err := s.nc.PublishMsg(m); err != nil {
			return 0, err
		}
	}
	if resp, err = s.nc.RequestMsgWithContext(ctx, msgs[len(msgs)-1]); err != nil {
		return 0, err
	}
	ack, err := parseAck(resp)
	if err != nil {
		return 0, err
	}
	if ack.Batch != id[0] || ack.Count != len(msgs) {
		return 0, fmt.Errorf("batch %s of %d: commit acknowledged batch %q of %d", id[0], len(msgs), ack.Batch, ack.Count)
	}
	return ack.Sequence, nil
}

func parseAck(m *nats.Msg) (*pubAckResponse, error) {
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return nil, jetstream.ErrNoStreamResponse
	}
	var ack pubAckResponse
	if err := json.Unmarshal(m.Data, &ack); err != nil {
		return nil, fmt.Errorf("%w: %w", jetstream.ErrInvalidJSAck, err)
	}
	if ack.Error != nil {
		return nil, ack.Error
	}
	if ack.Stream == "" {
		return nil, jetstream.ErrInvalidJSAck
	}
	return &ack, nil
}

// ambiguous reports whether err leaves open whether a publish was stored, or
// says it certainly was not in a way a resend can cure.
func ambiguous(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == errCodeDuplicateInFlight || apiErr.ErrorCode == errCodeBatchIncomplete
	}
	return errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected)
}

// recoverAppend decides after a lost acknowledgement whether evs are stored:
// they are if the subject's last message is the last of evs. Then it fills
// the sequences and returns the last one.
func (s *JetStreamStore) recoverAppend(ctx context.Context, subject string, evs []Event) (uint64, bool, error) {
	seq, id, err := s.leaderMsg(ctx, leaderGetRequest{LastFor: subject})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("events: append %s: read last after lost ack: %w", subject, err)
	}
	if id != evs[len(evs)-1].ID.String() {
		return 0, false, nil
	}
	fillSeqs(evs, seq)
	return seq, true, nil
}

// resolveConflict tells a real conflict from the writer's own earlier
// attempt. A standalone server checks the expectation before it
// de-duplicates, so resending stored events reports a conflict, and a batch
// that repeats stored IDs is refused (10201). Events stored under
// expectedLast are the first ones on the subject after it, so one read
// decides.
func (s *JetStreamStore) resolveConflict(ctx context.Context, subject string, expectedLast uint64, evs []Event, cause *jetstream.APIError) (uint64, error) {
	seq, id, err := s.leaderMsg(ctx, leaderGetRequest{Seq: expectedLast + 1, NextFor: subject})
	switch {
	case err == nil && id == evs[0].ID.String():
		last := seq + uint64(len(evs)) - 1
		fillSeqs(evs, last)
		return last, nil
	case err != nil && !errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, fmt.Errorf("events: append %s: read after %w: %w", subject, cause, err)
	case cause.ErrorCode == errCodeBatchDuplicate:
		return 0, fmt.Errorf("events: append %s: %w: ids already stored by another append: %w", subject, ErrInvalidAppend, cause)
	}
	ce := &ConflictError{Subject: subject, Expected: expectedLast}
	if n, ok := strings.CutPrefix(cause.Description, "wrong last sequence: "); ok {
		ce.Actual, _ = strconv.ParseUint(n, 10, 64)
	} else if last, err := s.LastSeq(ctx, subject); err == nil {
		ce.Actual = last
	}
	return 0, ce
}

// loadBatch is how many messages one direct get request asks for, and
// loadMaxBytes bounds the bytes of one reply.
const (
	loadBatch    = 1000
	loadMaxBytes = 4 << 20
)

// Load implements Store. It uses batched direct get (ADR-31): one request
// per loadBatch events, answered by the messages followed by an end-of-batch
// status that says how many remain; an empty subject costs one round trip.
func (s *JetStreamStore) Load(ctx context.Context, subject string, after uint64) ([]Event, error) {
	if !validSubject(subject, false) {
		return nil, fmt.Errorf("events: load %q: %w: bad subject", subject, ErrInvalidAppend)
	}
	// One reply is at most loadBatch messages and the end-of-batch
	// status, and the next request goes out only after that status, so
	// the channel never fills (a full one would drop messages).
	replies := make(chan *nats.Msg, loadBatch+1)
	sub, err := s.nc.ChanSubscribe(s.nc.NewInbox(), replies)
	if err != nil {
		return nil, fmt.Errorf("events: load %s: %w", subject, err)
	}
	defer sub.Unsubscribe()
	var (
		out []Event
		req []byte
	)
	for next := after + 1; ; {
		req = fmt.Appendf(req[:0], `{"seq":%d,"next_by_subj":%q,"batch":%d,"max_bytes":%d}`, next, subject, loadBatch, loadMaxBytes)
		more, err := s.loadBatch(ctx, sub.Subject, replies, req, &out)
		if err != nil {
			return nil, fmt.Errorf("events: load %s after %d: %w", subject, next-1, err)
		}
		if !more {
			return out, nil
		}
		next = out[len(out)-1].Seq + 1
	}
}

// loadBatch sends one batched direct get and appends the events of the reply
// to out. more reports whether events remain after the last one.
func (s *JetStreamStore) loadBatch(ctx context.Context, inbox string, replies <-chan *nats.Msg, req []byte, out *[]Event) (more bool, err error) {
	if err := s.nc.PublishRequest(s.directGet, inbox, req); err != nil {
		return false, err
	}
	timer := time.NewTimer(s.timeout)
	defer timer.Stop()
	got := 0
	for {
		var m *nats.Msg
		select {
		case m = <-replies:
		case <-ctx.Done():
			return false, ctx.Err()
		case <-timer.C:
			return false, nats.ErrTimeout
		}
		if len(m.Data) == 0 {
			switch status := m.Header.Get("Status"); status {
			case "":
			case "404": // nothing (more) on the subject
				return false, nil
			case "204": // end of batch
				if got == 0 {
					return false, nil
				}
				np, _ := strconv.ParseUint(m.Header.Get(hdrNumPending), 10, 64)
				return np > 0, nil
			case "503":
				return false, jetstream.ErrNoStreamResponse
			default:
				return false, fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
			}
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return false, fmt.Errorf("direct get: bad sequence header: %w", err)
		}
		if *out == nil {
			// The first message says how many follow it.
			np, _ := strconv.ParseUint(m.Header.Get(hdrNumPending), 10, 64)
			*out = make([]Event, 0, min(np, loadBatch-1)+1)
		}
		ev, err := Unmarshal(m.Data)
		if err != nil {
			return false, fmt.Errorf("seq %d: %w", seq, err)
		}
		ev.Seq = seq
		*out = append(*out, ev)
		got++
	}
}

// LastSeq implements Store.
func (s *JetStreamStore) LastSeq(ctx context.Context, subject string) (uint64, error) {
	if !validSubject(subject, false) {
		return 0, fmt.Errorf("events: last seq %q: %w: bad subject", subject, ErrInvalidAppend)
	}
	seq, _, err := s.leaderMsg(ctx, leaderGetRequest{LastFor: subject})
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("events: last seq %s: %w", subject, err)
	}
	return seq, nil
}

// leaderGetRequest is the body of a $JS.API.STREAM.MSG.GET request.
type leaderGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
}

// leaderMsg reads one message's sequence and Nats-Msg-Id through the stream
// leader. Load uses direct gets, which any replica may answer, and a replica
// can be a few messages behind the leader; that is fine for a reader who
// checks versions, but not for a writer deciding whether its own append was
// stored, or for LastSeq, which callers use as the truth about a subject's
// end. Not found is jetstream.ErrMsgNotFound.
func (s *JetStreamStore) leaderMsg(ctx context.Context, req leaderGetRequest) (seq uint64, msgID string, err error) {
	body, err := json.Marshal(req)
	if err != nil {
		return 0, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	reply, err := s.nc.RequestWithContext(ctx, s.leaderGet, body)
	if err != nil {
		return 0, "", err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error,omitempty"`
		Message *struct {
			Seq    uint64 `json:"seq"`
			Header []byte `json:"hdrs,omitempty"`
		} `json:"message,omitempty"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return 0, "", fmt.Errorf("message get reply: %w", err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return 0, "", jetstream.ErrMsgNotFound
	case resp.Error != nil:
		return 0, "", resp.Error
	case resp.Message == nil:
		return 0, "", fmt.Errorf("message get reply without a message")
	}
	if len(resp.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return 0, "", fmt.Errorf("message get reply: headers: %w", err)
		}
		msgID = h.Get(jetstream.MsgIDHeader)
	}
	return resp.Message.Seq, msgID, nil
}

// Subscribe implements Store with an ordered consumer, which recreates
// itself after gaps and connection loss and always resumes after the last
// event it delivered.
func (s *JetStreamStore) Subscribe(ctx context.Context, filter string, after uint64, fn func(Event) error) error {
	if !validSubject(filter, true) {
		return fmt.Errorf("events: subscribe %q: %w: bad filter", filter, ErrInvalidAppend)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if after > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	}
	cons, err := s.js.OrderedConsumer(ctx, StreamName, cfg)
	if err != nil {
		return fmt.Errorf("events: subscribe %s: %w", filter, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("events: subscribe %s: %w", filter, err)
	}
	defer func() {
		// Stop closes the channel every goroutine of the iterator selects
		// on, so they all end. (Its Closed channel cannot be waited for:
		// on a Messages iterator it only closes if the subscription is
		// already gone when Closed is called.)
		it.Stop()
		// The server would drop the consumer after its inactivity
		// threshold; deleting it now keeps the server tidy.
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
			_ = s.js.DeleteConsumer(dctx, StreamName, info.Name)
			cancel()
		}
	}()
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("events: subscribe %s: %w", filter, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("events: subscribe %s: %w", filter, err)
		}
		ev, err := Unmarshal(m.Data())
		if err != nil {
			return fmt.Errorf("events: subscribe %s: seq %d: %w", filter, md.Sequence.Stream, err)
		}
		ev.Seq = md.Sequence.Stream
		if err := fn(ev); err != nil {
			return err
		}
	}
}
