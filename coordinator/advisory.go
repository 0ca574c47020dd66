package coordinator

// Dead dispatches. A consumer of FERRY_CMDS delivers a command at most
// MaxDeliver times (dispatch.ConsumerOptions); when every delivery ended
// unsettled (agents that crashed on it, were cut off past AckWait, or handed
// it back), the server gives up: it sends a max-deliveries advisory and never
// delivers the command again. It does not remove it: on a work-queue stream
// only an ack or a Term does, so the dead command stays, and as a subject
// holds at most one pending command (MaxMsgsPerSubject 1, DiscardNew per
// subject), it would refuse every later command of that job — a Resume would
// leave the job QUEUED forever.
//
// So the coordinator captures those advisories in a stream of its own (an
// advisory is plain NATS: one sent while no coordinator runs would otherwise
// be lost), and for each one reads the dead command, deletes it, and fails
// its job (job.DispatchFailed: ERROR, if the job is still in a state the
// dispatch was for). The delete comes first: should the coordinator stop
// between the two, the job is not failed but dispatched again by the
// reconciler (after the de-duplication window), which is safe, whereas a
// failure written before the delete could, on a redelivered advisory, fail a
// job that was resumed meanwhile.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// DeadDispatchStream keeps the max-deliveries advisories of FERRY_CMDS until
// the coordinator has handled them.
const DeadDispatchStream = "FERRY_CMDS_DEAD"

// deadDispatchConsumer is the coordinators' durable consumer on it (several
// coordinators share the work).
const deadDispatchConsumer = "coordinator"

// coordinatorActor is the actor of the events the coordinator writes on its
// own account.
const coordinatorActor = "service/coordinator"

// maxDeliveriesAdvisory is the server's io.nats.jetstream.advisory.v1.max_deliver.
type maxDeliveriesAdvisory struct {
	Type       string `json:"type"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// deadDispatchLoop handles dead dispatches until ctx ends. A failure of
// NATS is logged and retried: the coordinator keeps serving meanwhile, and
// the advisories wait in their stream.
func (s *Service) deadDispatchLoop(ctx context.Context) error {
	delay := 100 * time.Millisecond
	for {
		err := s.watchDeadDispatches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn().Err(err).Msg("handling dead dispatches failed; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (s *Service) watchDeadDispatches(ctx context.Context) error {
	if _, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadDispatchStream,
		Description: "max-deliveries advisories of " + dispatch.StreamName + ", until the coordinator has failed their jobs",
		Subjects:    []string{dispatch.MaxDeliveriesAdvisories},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      30 * 24 * time.Hour,
		Replicas:    1,
	}); err != nil {
		return fmt.Errorf("ensure stream %s: %w", DeadDispatchStream, err)
	}
	cmds, err := s.js.Stream(ctx, dispatch.StreamName)
	if err != nil {
		return fmt.Errorf("stream %s: %w", dispatch.StreamName, err)
	}
	c, err := s.js.CreateOrUpdateConsumer(ctx, DeadDispatchStream, jetstream.ConsumerConfig{
		Durable:    deadDispatchConsumer,
		AckPolicy:  jetstream.AckExplicitPolicy,
		AckWait:    time.Minute,
		MaxDeliver: -1, // a dead dispatch must be cleared eventually
	})
	if err != nil {
		return fmt.Errorf("ensure consumer %s on %s: %w", deadDispatchConsumer, DeadDispatchStream, err)
	}
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		batch, err := c.Fetch(16, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			return fmt.Errorf("fetch advisories: %w", err)
		}
		for m := range batch.Messages() {
			s.handleDeadDispatch(ctx, cmds, m)
		}
		cancel()
		if err := batch.Error(); err != nil && ctx.Err() == nil &&
			!errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("fetch advisories: %w", err)
		}
	}
	return nil
}

// handleDeadDispatch settles one advisory: acked once handled (or
// meaningless), handed back for a later try when NATS or the event store
// failed.
func (s *Service) handleDeadDispatch(ctx context.Context, cmds jetstream.Stream, m jetstream.Msg) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(m.Data(), &adv); err != nil || adv.Stream != dispatch.StreamName || adv.StreamSeq == 0 {
		s.log.Warn().Err(err).Str("subject", m.Subject()).Bytes("advisory", m.Data()).Msg("ignoring a malformed max-deliveries advisory")
		_ = m.Term()
		return
	}
	log := s.log.With().Str("consumer", adv.Consumer).Uint64("command_seq", adv.StreamSeq).Uint64("deliveries", adv.Deliveries).Logger()
	if err := s.clearDeadDispatch(ctx, cmds, adv, m, log); err != nil {
		if ctx.Err() == nil {
			log.Warn().Err(err).Msg("dead dispatch not cleared yet; trying again shortly")
			_ = m.NakWithDelay(5 * time.Second)
		}
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := m.DoubleAck(actx); err != nil {
		// Redelivered: the command is gone by then, so nothing repeats.
		log.Debug().Err(err).Msg("ack of a max-deliveries advisory failed")
	}
}

// clearDeadDispatch deletes the dead command at adv.StreamSeq and fails its
// job. A command that is no longer there was handled before (or settled
// late): nothing to do.
func (s *Service) clearDeadDispatch(ctx context.Context, cmds jetstream.Stream, adv maxDeliveriesAdvisory, m jetstream.Msg, log zerolog.Logger) error {
	raw, err := cmds.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		log.Debug().Msg("dead dispatch already cleared")
		return nil
	}
	if err != nil {
		return fmt.Errorf("read command %d: %w", adv.StreamSeq, err)
	}
	cmd := commandOf(raw)
	log = log.With().Str("job", cmd.JobID).Str("kind", cmd.Kind).Str("subject", raw.Subject).Logger()
	if err := cmds.DeleteMsg(ctx, adv.StreamSeq); err != nil {
		if _, gerr := cmds.GetMsg(ctx, adv.StreamSeq); !errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("delete command %d: %w", adv.StreamSeq, err)
		}
	}
	if cmd.Kind != dispatch.KindTransfer || !events.ValidID(cmd.JobID) {
		// A pinned command (Complete, Cancel cleanup): the job waits for
		// its files' host, and the reconciler publishes the command again
		// once the de-duplication window has passed.
		log.Warn().Msg("command delivered too many times without being settled: deleted; it will be published again")
		return nil
	}
	// The command is gone now, so this is the only chance to fail the job:
	// retry until it is written, refused, or the coordinator stops.
	delay := 100 * time.Millisecond
	for {
		res, err := s.failDispatch(ctx, cmd.JobID, job.DispatchFailed{Deliveries: adv.Deliveries})
		switch {
		case err == nil && len(res.Events) > 0:
			log.Warn().Str("state", string(res.Job.State)).Msg("no agent could run the job: its dispatch was delivered too many times; job failed")
			return nil
		case err == nil:
			log.Info().Str("state", string(res.Job.State)).Msg("dead dispatch deleted; the job had moved on")
			return nil
		case isRefusal(err):
			log.Info().Err(err).Msg("dead dispatch deleted; nothing to fail")
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		log.Warn().Err(err).Msg("failing the job of a dead dispatch failed; retrying")
		_ = m.InProgress()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// commandOf decodes a command message; a body that does not decode still
// names its job in the subject's last token.
func commandOf(raw *jetstream.RawStreamMsg) dispatch.Command {
	var c dispatch.Command
	if err := json.Unmarshal(raw.Data, &c); err == nil && c.JobID != "" && c.Kind != "" {
		return c
	}
	c = dispatch.Command{Kind: raw.Header.Get(dispatch.HeaderKind)}
	if i := strings.LastIndexByte(raw.Subject, '.'); i >= 0 {
		c.JobID = raw.Subject[i+1:]
	}
	if c.Kind == "" && strings.HasPrefix(raw.Subject, "ferry.cmd.pool.") {
		c.Kind = dispatch.KindTransfer
	}
	return c
}

// failDispatch runs job.DispatchFailed on job id.
func (s *Service) failDispatch(ctx context.Context, id string, c job.DispatchFailed) (jobstore.Result, error) {
	return s.exec(ctx, id, c, coordinatorActor, nil)
}
