// Package dispatch owns the command stream FERRY_CMDS: its configuration, the
// subjects of pool and host-pinned commands, the wire format of a command, and
// publishing with de-duplication. The coordinator publishes; agents consume.
//
// A dispatch message says "job X needs attention at version V": whoever
// receives it reloads the job and decides from its current state, so a late
// or repeated message is harmless.
package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the work-queue stream of job commands.
const StreamName = "FERRY_CMDS"

// Command kinds.
const (
	KindTransfer = "transfer" // pool: lease the job and transfer its files
	KindComplete = "complete" // pinned: rename staged files to their final names
	KindCleanup  = "cleanup"  // pinned: delete staged files of a cancelled job
)

// Header names.
const (
	HeaderJobSeq = "Ferry-Job-Seq"
	HeaderKind   = "Ferry-Command"
)

// PoolSubject is where dispatches for a pool go.
func PoolSubject(pool, jobID string) string { return "ferry.cmd.pool." + pool + "." + jobID }

// AgentSubject is where commands pinned to one agent go.
func AgentSubject(agent, jobID string) string { return "ferry.cmd.agent." + agent + "." + jobID }

// PoolFilter and AgentFilter are the consumer filters.
func PoolFilter(pool string) string   { return "ferry.cmd.pool." + pool + ".>" }
func AgentFilter(agent string) string { return "ferry.cmd.agent." + agent + ".>" }

// PoolConsumer and AgentConsumer name the durable consumers.
func PoolConsumer(pool string) string   { return "pool-" + pool }
func AgentConsumer(agent string) string { return "agent-" + agent }

// Command is the body of a command message.
type Command struct {
	Kind   string `json:"kind"`
	JobID  string `json:"job_id"`
	JobSeq uint64 `json:"job_seq"`
}

// StreamOptions tune the stream.
type StreamOptions struct{ Replicas int }

// EnsureStream creates or updates FERRY_CMDS: work-queue retention, at most
// one pending command per subject (so per job and kind target), de-duplication.
func EnsureStream(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.Stream, error) {
	if o.Replicas < 1 {
		o.Replicas = 1
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:                 StreamName,
		Subjects:             []string{"ferry.cmd.>"},
		Retention:            jetstream.WorkQueuePolicy,
		Storage:              jetstream.FileStorage,
		Discard:              jetstream.DiscardNew,
		MaxMsgsPerSubject:    1,
		DiscardNewPerSubject: true,
		Duplicates:           2 * time.Minute,
		Replicas:             o.Replicas,
		MaxMsgSize:           64 << 10,
	})
	if err != nil {
		return nil, fmt.Errorf("dispatch: ensure stream %s: %w", StreamName, err)
	}
	return s, nil
}

// DefaultMaxDeliver is how many times a command is delivered before NATS
// gives up on it (ConsumerOptions.MaxDeliver's default).
const DefaultMaxDeliver = 20

// MaxDeliveriesAdvisories is the subject (a wildcard over consumers) of the
// advisories the server sends when a consumer of FERRY_CMDS gives up on a
// command after MaxDeliver deliveries. The message stays in the work-queue
// stream (nothing acked it) but is never delivered again, and since a
// subject holds one pending command, it blocks the job's next command until
// it is deleted: the coordinator listens here, fails the job, and deletes it.
const MaxDeliveriesAdvisories = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamName + ".>"

// ConsumerOptions tune a consumer.
type ConsumerOptions struct {
	AckWait time.Duration // default 30 s
	// MaxDeliver bounds the deliveries of one command (default
	// DefaultMaxDeliver; negative: unbounded). Every delivery that is not
	// settled counts: an agent that crashed or was cut off past AckWait,
	// or that handed the command back (Nak). Heartbeats (InProgress) of a
	// live agent do not.
	MaxDeliver int
	MaxPending int // MaxAckPending; default 1000
}

// EnsureConsumer creates or updates the durable pull consumer name on filter.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, name, filter string, o ConsumerOptions) (jetstream.Consumer, error) {
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	switch {
	case o.MaxDeliver == 0:
		o.MaxDeliver = DefaultMaxDeliver
	case o.MaxDeliver < 0:
		o.MaxDeliver = -1
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 1000
	}
	c, err := js.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:       name,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.AckWait,
		MaxDeliver:    o.MaxDeliver,
		MaxAckPending: o.MaxPending,
		MaxWaiting:    512,
	})
	if err != nil {
		return nil, fmt.Errorf("dispatch: ensure consumer %s: %w", name, err)
	}
	return c, nil
}

// ErrPending means a command for that subject is already waiting; the waiting
// one will be handled against the job's current state, so nothing is lost.
var ErrPending = errors.New("a command for this job is already pending")

// Publish sends one command. The message ID makes repeats of the same
// decision (same job, kind and version) idempotent.
func Publish(ctx context.Context, js jetstream.JetStream, subject string, c Command) error {
	body, err := json.Marshal(c)
	if err != nil {
		return err
	}
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(HeaderKind, c.Kind)
	m.Header.Set(HeaderJobSeq, strconv.FormatUint(c.JobSeq, 10))
	_, err = js.PublishMsg(ctx, m,
		jetstream.WithMsgID(c.JobID+":"+c.Kind+":"+strconv.FormatUint(c.JobSeq, 10)),
		jetstream.WithExpectStream(StreamName))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "per subject") {
			return ErrPending
		}
		return fmt.Errorf("dispatch: publish %s %s: %w", c.Kind, c.JobID, err)
	}
	return nil
}

// Decode parses a command message.
func Decode(m jetstream.Msg) (Command, error) {
	var c Command
	if err := json.Unmarshal(m.Data(), &c); err != nil {
		return c, fmt.Errorf("dispatch: decode %s: %w", m.Subject(), err)
	}
	if c.JobID == "" || c.Kind == "" {
		return c, fmt.Errorf("dispatch: decode %s: missing job_id or kind", m.Subject())
	}
	return c, nil
}
