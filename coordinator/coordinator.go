// Package coordinator owns the job API: job commands over HTTP (JSON under
// /v1, errors as problem+json), who may do what, dispatch of jobs to agent
// pools on FERRY_CMDS, the reconciler that re-dispatches what a crash may
// have lost, the KV read model and its projector, and job event streams as
// server-sent events.
//
// It imports job (and its jobstore and dispatch packages), events, and
// certvault's names and identities (a job's client certificate is checked
// through the CertLookup interface it declares, and write-only header
// values are kept through HeaderVault); never agent.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// Config tunes the coordinator. The zero value works.
type Config struct {
	Limits job.Limits
	// ReconcileInterval is how often every job is checked for a lost
	// dispatch or a due retry (default 15 s).
	ReconcileInterval time.Duration
	// JobInactivityTimeout cancels jobs nobody touched for that long
	// (default 90 days, as BITS; negative: never).
	JobInactivityTimeout time.Duration
	// Auth identifies callers by their verified client certificates. It is
	// required: every API call needs a verified identity.
	Auth *identity.Authenticator
	// Certs resolves the client certificates jobs name. Nil: setting a
	// client certificate answers ERROR_SERVICE_UNAVAILABLE.
	Certs CertLookup
	// Headers keeps the values of write-only custom headers. Nil: making
	// headers write-only (or clearing them) answers
	// ERROR_SERVICE_UNAVAILABLE.
	Headers HeaderVault
}

// Service is the coordinator.
type Service struct {
	cfg       Config
	log       zerolog.Logger
	js        jetstream.JetStream
	store     events.Store
	repo      *jobstore.Repo
	readModel ReadModel
	projector *Projector
	settings  jetstream.KeyValue
	kick      chan struct{}

	// The jobs read model's generations (projections.go): the pointer
	// bucket, the generation queries read, this process's name in reader
	// leases and locks, its lease on the current generation (owned by
	// followProjection), and switches handed to runProjector.
	projKV   jetstream.KeyValue
	models   *modelSource
	instance string
	leases   leaseSet
	handover chan *handover

	// registry is a recent copy of the agent registry's member list, for
	// finding jobs held by agents that are gone (orphaned).
	registry registryCache
}

// New assembles a coordinator on an event store and a JetStream context. It
// creates the read-model bucket (of the generation the projection pointer
// names; projections.go), the pointer bucket and the command stream if
// missing, and takes a reader lease on the read model it will serve.
func New(ctx context.Context, cfg Config, log zerolog.Logger, js jetstream.JetStream, store events.Store) (_ *Service, err error) {
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = 15 * time.Second
	}
	if cfg.Auth == nil {
		return nil, errors.New("coordinator: an authenticator is required")
	}
	projKV, err := EnsureProjectionsBucket(ctx, js)
	if err != nil {
		return nil, err
	}
	instance := newInstanceID()
	clog := log.With().Str("component", "coordinator").Logger()
	kv, ptr, lease, err := openJobsModel(ctx, js, projKV, instance, func(msg string) { clog.Warn().Msg(msg) })
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lease.release(context.WithoutCancel(ctx))
		}
	}()
	if _, err := dispatch.EnsureStream(ctx, js, dispatch.StreamOptions{}); err != nil {
		return nil, err
	}
	settings, err := dispatch.EnsureSettingsBucket(ctx, js)
	if err != nil {
		return nil, err
	}
	models := newModelSource(kv, ptr.Generation)
	s := &Service{
		cfg: cfg, log: clog, js: js, store: store,
		repo:      &jobstore.Repo{Store: store},
		readModel: ReadModel{src: models}, settings: settings,
		kick:   make(chan struct{}, 1),
		projKV: projKV, models: models, instance: instance,
		handover: make(chan *handover),
	}
	s.leases.add(lease)
	s.projector = &Projector{Store: store, KV: kv, Log: s.log, OnApply: s.onApply}
	// Writers start from the projected state and read only the events
	// after it: long-lived jobs stay cheap to load.
	s.repo.Snapshots = s.readModel
	s.repo.SnapshotUnusable = func(id string, reason error) {
		s.log.Warn().Err(reason).Str("job", id).Msg("read model snapshot not used; replaying the job's events")
	}
	return s, nil
}

// Run runs the projector and the reconciler until ctx ends.
func (s *Service) Run(parent context.Context) error {
	g, ctx := errgroup.WithContext(parent)
	g.Go(func() error { return s.runProjector(ctx) })
	g.Go(func() error { return s.reconcileLoop(ctx) })
	g.Go(func() error { return s.agentLoop(ctx) })
	g.Go(func() error { return s.deadDispatchLoop(ctx) })
	g.Go(func() error { return s.followProjection(ctx) })
	err := g.Wait()
	if parent.Err() != nil {
		return nil
	}
	return err
}

// runProjector keeps the projector running: a failure (a read-model write
// timing out while JetStream elects a new leader, say) restarts it from its
// saved position after a pause. Restarting is safe: its writes are
// compare-and-set and events already applied are skipped. A switch to a new
// generation of the read model (handover) stops it, moves it and the
// queries to the new bucket, and starts it again there.
func (s *Service) runProjector(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for {
		run := startProjector(ctx, s.projector)
		select {
		case <-run.done:
		case h := <-s.handover:
			run.halt()
			s.applyHandover(ctx, h)
			backoff = 200 * time.Millisecond
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn().Err(run.err).Dur("retry_in", backoff).Msg("projector stopped; restarting")
		select {
		case <-ctx.Done():
			return nil
		case h := <-s.handover:
			s.applyHandover(ctx, h)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// Projector exposes the read-model projector (tests and the dev stack wait
// on it).
func (s *Service) Projector() *Projector { return s.projector }

// ReadModel exposes the query side.
func (s *Service) ReadModel() ReadModel { return s.readModel }

// onApply reacts to projected states that need a command published.
func (s *Service) onApply(j *job.Job, ev *events.Event) {
	if movesDeadline(ev.Type) {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// movesDeadline reports whether an event of type t may bring a retry or a
// deadline forward, so the clock must recompute its timer now rather than at
// its next periodic pass.
func movesDeadline(t string) bool {
	switch t {
	case events.TypeJobTransientError, // a retry is scheduled
		events.TypeJobConnecting, // MaxDownloadTime starts counting
		events.TypeJobModified:   // a retry policy changed
		return true
	}
	return false
}

// --- commands ---------------------------------------------------------------

// exec runs a command as principal and publishes what it implies. view, if
// not nil, is a recent state of the job to decide on first.
func (s *Service) exec(ctx context.Context, id string, c job.Command, principal string, view *job.Job) (jobstore.Result, error) {
	m := events.Meta{Actor: principal, CorrelationID: correlationID(ctx)}
	res, err := s.repo.Execute(ctx, id, c, m, view)
	if err != nil {
		return res, err
	}
	if len(res.Events) > 0 {
		s.publishFor(ctx, &res.Job)
	}
	return res, nil
}

// publishFor publishes the command a job's state calls for, if any. A
// failure is logged, not returned: the event is stored, so the reconciler
// will publish it later (an accepted command is never lost).
func (s *Service) publishFor(ctx context.Context, j *job.Job) {
	subject, cmd, ok := commandFor(j, time.Now())
	if !ok && s.orphaned(ctx, j) {
		// The safety net under the redelivery of dispatches: a job held
		// by an agent that left the registry gets a new dispatch. While
		// the holder's dispatch is still in FERRY_CMDS (held, or waiting
		// for its AckWait to pass) the publish is refused (ErrPending) and
		// redelivery does the work; if that dispatch is gone — acked by
		// mistake, lost with a crash — this one brings the job back.
		subject, cmd, ok = takeoverCommand(j)
	}
	if !ok {
		return
	}
	err := dispatch.Publish(ctx, s.js, subject, cmd)
	switch {
	case err == nil:
		s.log.Debug().Str("job", j.ID).Str("kind", cmd.Kind).Uint64("seq", cmd.JobSeq).Msg("dispatched")
	case errors.Is(err, dispatch.ErrPending):
		s.log.Debug().Str("job", j.ID).Str("kind", cmd.Kind).Msg("dispatch already pending")
	default:
		s.log.Warn().Err(err).Str("job", j.ID).Str("kind", cmd.Kind).Msg("dispatch failed; the reconciler will retry")
	}
}

// commandFor says which command, if any, the job's state needs published.
func commandFor(j *job.Job, now time.Time) (string, dispatch.Command, bool) {
	c := dispatch.Command{JobID: j.ID, JobSeq: j.Version}
	switch {
	case j.State == job.Cancelled && j.PendingCleanup && j.FilesAgent != "":
		c.Kind = dispatch.KindCleanup
		return dispatch.AgentSubject(j.FilesAgent, j.ID), c, true
	case j.PendingComplete && j.FilesAgent != "":
		c.Kind = dispatch.KindComplete
		return dispatch.AgentSubject(j.FilesAgent, j.ID), c, true
	case j.State == job.Queued && j.Agent == "",
		j.State == job.TransientError && j.RetryAt != nil && !now.Before(*j.RetryAt):
		c.Kind = dispatch.KindTransfer
		if j.TargetAgent != "" {
			return dispatch.AgentSubject(j.TargetAgent, j.ID), c, true
		}
		return dispatch.PoolSubject(j.Pool, j.ID), c, true
	}
	return "", c, false
}

// takeoverCommand is the transfer dispatch of an active job whose holder is
// gone: the next lease takes the job over.
func takeoverCommand(j *job.Job) (string, dispatch.Command, bool) {
	c := dispatch.Command{JobID: j.ID, JobSeq: j.Version, Kind: dispatch.KindTransfer}
	if j.TargetAgent != "" {
		return dispatch.AgentSubject(j.TargetAgent, j.ID), c, true
	}
	return dispatch.PoolSubject(j.Pool, j.ID), c, true
}

// registryCache holds the IDs of the agents in the registry, read at most
// every registryMaxAge.
type registryCache struct {
	mu    sync.Mutex
	at    time.Time
	alive map[string]bool
}

const registryMaxAge = 5 * time.Second

// orphaned reports whether j is held by an agent that is not in the agent
// registry (its heartbeats stopped: dead, hung, cut off). A registry that
// cannot be read orphans nothing.
func (s *Service) orphaned(ctx context.Context, j *job.Job) bool {
	if !j.State.Active() || j.Agent == "" || j.PendingComplete {
		return false
	}
	r := &s.registry
	r.mu.Lock()
	alive, fresh := r.alive, r.alive != nil && time.Since(r.at) <= registryMaxAge
	r.mu.Unlock()
	if !fresh {
		// Read without the lock: API requests that publish must not wait
		// behind a slow registry read (two concurrent refreshes are harmless).
		entries, err := s.agentEntries(ctx)
		if err != nil {
			s.log.Warn().Err(err).Msg("agent registry unreadable: no orphaned jobs re-dispatched this time")
			return false
		}
		alive = make(map[string]bool, len(entries))
		for _, e := range entries {
			alive[e.ID] = true
		}
		r.mu.Lock()
		r.alive, r.at = alive, time.Now()
		r.mu.Unlock()
	}
	return !alive[j.Agent]
}

// reconcileLoop re-publishes commands that a crash between "event stored"
// and "command published" lost, dispatches retries when their delay has
// elapsed, and applies deadlines (MaxDownloadTime, NoProgressTimeout,
// JobInactivityTimeout). It runs at start, every ReconcileInterval, and at
// the earliest retry or deadline.
func (s *Service) reconcileLoop(ctx context.Context) error {
	return s.clock().run(ctx)
}

func (s *Service) clock() *clock {
	return &clock{
		interval: s.cfg.ReconcileInterval, inactivity: s.cfg.JobInactivityTimeout, kick: s.kick, log: s.log,
		list: func(ctx context.Context) ([]job.Job, error) {
			return s.readModel.List(ctx, func(j *job.Job) bool { return !j.State.Final() || j.PendingCleanup })
		},
		publish: s.publishFor,
		timeout: func(ctx context.Context, j *job.Job, c job.Timeout) error {
			_, err := s.exec(ctx, j.ID, c, "service/coordinator", j)
			return err
		},
	}
}

// clock drives everything that happens because time passed. Its I/O comes
// in as functions so that it runs the same against the read model and, in
// tests, against an in-memory store in virtual time.
type clock struct {
	interval   time.Duration
	inactivity time.Duration
	kick       <-chan struct{}
	log        zerolog.Logger
	list       func(context.Context) ([]job.Job, error)
	publish    func(context.Context, *job.Job)
	timeout    func(context.Context, *job.Job, job.Timeout) error
}

func (c *clock) run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-c.kick:
		}
		next, err := c.tick(ctx)
		if err != nil && ctx.Err() == nil {
			c.log.Warn().Err(err).Msg("reconcile failed")
		}
		wait := c.interval
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), 10*time.Millisecond))
		}
		timer.Stop()
		timer.Reset(wait)
	}
}

// tick publishes every command that is due, applies every deadline that has
// passed, and returns the time of the earliest future retry or deadline.
func (c *clock) tick(ctx context.Context) (time.Time, error) {
	now := time.Now()
	var next time.Time
	soonest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	jobs, err := c.list(ctx)
	if err != nil {
		return next, err
	}
	tc := job.Timeout{InactivityTimeout: c.inactivity}
	var errs []error
	for i := range jobs {
		j := &jobs[i]
		if at := j.NextDeadline(tc); !at.IsZero() {
			if now.Before(at) {
				soonest(at)
			} else {
				if err := c.timeout(ctx, j, tc); err != nil && !isRefusal(err) {
					errs = append(errs, fmt.Errorf("job %s: deadline: %w", j.ID, err))
				}
				// Its new state is published by the command itself; look
				// again soon in case another deadline follows.
				soonest(now.Add(time.Second))
				continue
			}
		}
		if j.State == job.TransientError && j.RetryAt != nil && j.RetryAt.After(now) {
			soonest(*j.RetryAt)
			continue
		}
		c.publish(ctx, j)
	}
	return next, errors.Join(errs...)
}

// isRefusal reports whether err is the job model refusing a command (the job
// changed meanwhile), not a failure to run it.
func isRefusal(err error) bool {
	var je *job.Error
	return errors.As(err, &je)
}

// --- helpers ----------------------------------------------------------------

type ctxKey int

const correlationKey ctxKey = iota

func correlationID(ctx context.Context) string {
	v, _ := ctx.Value(correlationKey).(string)
	return v
}

// newJobID makes a job ID: a UUIDv7, so IDs sort by creation time.
func newJobID() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("coordinator: new job id: %w", err)
	}
	return id.String(), nil
}

// caller is who makes a request, from the verified client certificate.
type caller struct {
	Principal string
	Role      identity.Role
}

func (c caller) admin() bool { return c.Role == identity.RoleAdmin }

// callerOf returns the authenticated caller put in the context by the
// identity middleware.
func callerOf(r *http.Request) (caller, error) {
	s, ok := identity.SessionFrom(r.Context())
	if !ok {
		return caller{}, &job.Error{Code: job.E_UNAUTHENTICATED, Detail: "a verified client certificate is required"}
	}
	if err := s.RequireRole(identity.RoleUser, identity.RoleAdmin); err != nil {
		return caller{}, err
	}
	return caller{Principal: s.Principal, Role: s.Role}, nil
}

// mayAccess enforces BITS's job ACL: only the owner or an administrator may
// see or change a job.
func (c caller) mayAccess(j *job.Job) error {
	if c.admin() || j.Owner == c.Principal {
		return nil
	}
	return job.Errorf(job.E_ACCESSDENIED, "job %s belongs to another principal", j.ID)
}
