// Package agent owns the worker that runs on every host: it consumes job
// commands (pool dispatches and commands pinned to this host), claims jobs
// with a fenced JobLeased event, transfers their files in order with the
// download engine (agent/download) into temporary files confined to its root
// directory, reports every state change as an event, and on Complete renames
// the finished files (or on Cancel deletes them).
//
// It imports job (and jobstore, dispatch) and events; never coordinator or
// certvault.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// Config tunes an agent. The zero value works except for ID and Root.
type Config struct {
	// ID names the agent: one subject token, stable across restarts (the
	// staged files it holds are found again by it).
	ID string
	// Principal is the identity written as the actor of its events
	// (default "agent/<ID>").
	Principal string
	Pool      string // default "default"
	// Root is the directory every file is written under; destinations
	// outside it are refused.
	Root string
	// SharedRoot says Root is shared storage that the other agents of the
	// pool mount at the same path. An agent that takes a job over then
	// resumes its files from the temporary files its previous holder
	// staged (with Range), and an agent that lost a job leaves them to the
	// new holder instead of deleting them. On separate disks (the default)
	// a takeover starts the files again and the loser deletes its copies.
	SharedRoot bool
	// Slots is how many background (HIGH, NORMAL, LOW) jobs transfer at
	// once (default 4); MaxForeground how many FOREGROUND jobs transfer
	// besides them (default 4). A higher class runs before a lower one,
	// jobs of a class take turns of TimeSlice (default 1 minute) when
	// others of the class wait (see Scheduler).
	Slots         int
	MaxForeground int
	TimeSlice     time.Duration
	// Waiting is how many dispatches beyond its slots the agent holds, so
	// that it sees higher-priority work while its slots are busy (default
	// Slots+4). Waiting jobs stay QUEUED, and this agent keeps their
	// dispatches alive; other agents of the pool take the rest.
	Waiting int
	// AckWait is how long a dispatch may go without a heartbeat before it is
	// redelivered to another agent (default 30 s).
	AckWait            time.Duration
	CheckpointInterval time.Duration // default 1 s
	CheckpointBytes    int64         // default 64 MiB
	Client             download.ClientOptions
	// ClientCerts releases a job's client certificate from certvault when
	// an origin asks for one; nil: jobs with a certificate fail like jobs
	// without one.
	ClientCerts ClientCerts
	// WriteOnlyHeaders releases the values of a job's write-only custom
	// headers from certvault, just in time; nil: jobs with write-only
	// headers fail with ERROR_SERVICE_UNAVAILABLE (transient: another
	// agent of the pool may be able to send them).
	WriteOnlyHeaders WriteOnlyHeaders
	// Bandwidth are the limits the agent starts with; the pool's setting
	// in the settings bucket replaces them at run time.
	Bandwidth dispatch.Bandwidth
	// MinFreeBytes is kept free on the disk: a file that would leave less
	// fails with ERROR_DISK_FULL (transient) before it starts or resumes.
	MinFreeBytes int64
	// Heartbeat is how often the agent refreshes its entry in the agent
	// registry (default DefaultHeartbeat); the entry expires after three.
	Heartbeat time.Duration
}

// ClientCerts fetches the client certificate of a job this agent holds the
// lease of, just in time (certvault's release, bound to its TLS channel).
type ClientCerts interface {
	Release(ctx context.Context, jobID string) (*tls.Certificate, error)
}

// WriteOnlyHeaders fetches the values of the write-only custom headers of a
// job this agent holds the lease of, just in time (certvault's header
// release, bound to its TLS channel), as "Name: value" lines.
// Implementations never log them.
type WriteOnlyHeaders interface {
	ReleaseHeaders(ctx context.Context, jobID string) ([]string, error)
}

func (c *Config) defaults() error {
	var errs []error
	if !events.ValidID(c.ID) {
		errs = append(errs, fmt.Errorf("agent id %q must be one subject token (no dots, spaces or wildcards)", c.ID))
	}
	if c.Root == "" || !filepath.IsAbs(c.Root) {
		errs = append(errs, fmt.Errorf("agent root %q must be an absolute directory", c.Root))
	}
	if c.Pool == "" {
		c.Pool = job.DefaultPool
	}
	if !events.ValidID(c.Pool) {
		errs = append(errs, fmt.Errorf("pool %q must be one subject token", c.Pool))
	}
	if c.Principal == "" {
		c.Principal = "agent/" + c.ID
	}
	if c.Slots <= 0 {
		c.Slots = DefaultSlots
	}
	if c.MaxForeground <= 0 {
		c.MaxForeground = 4
	}
	if c.Waiting <= 0 {
		c.Waiting = c.Slots + 4
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	c.Root = filepath.Clean(c.Root)
	return errors.Join(errs...)
}

// Agent is one worker process.
type Agent struct {
	cfg  Config
	log  zerolog.Logger
	js   jetstream.JetStream
	repo *jobstore.Repo
	root *os.Root

	limits *limiters
	sched  *Scheduler

	mu      sync.Mutex
	running map[string]*run // job ID -> its transfer on this host
}

// run is a transfer in progress, so that Complete and Cancel cleanup can stop
// it before they touch its files.
type run struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// New validates cfg and opens the agent's root.
func New(cfg Config, log zerolog.Logger, js jetstream.JetStream, store events.Store) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, fmt.Errorf("agent: config: %w", err)
	}
	if err := os.MkdirAll(cfg.Root, 0o755); err != nil {
		return nil, fmt.Errorf("agent: root: %w", err)
	}
	root, err := os.OpenRoot(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("agent: open root: %w", err)
	}
	a := &Agent{
		cfg: cfg, log: log.With().Str("component", "agent").Str("agent", cfg.ID).Logger(),
		js: js, repo: &jobstore.Repo{Store: store}, root: root,
		running: map[string]*run{}, limits: newLimiters(),
		sched: NewScheduler(SchedulerConfig{Slots: cfg.Slots, MaxForeground: cfg.MaxForeground, TimeSlice: cfg.TimeSlice}),
	}
	if err := a.SetBandwidth(cfg.Bandwidth); err != nil {
		root.Close()
		return nil, err
	}
	return a, nil
}

// Run consumes commands until ctx ends. On return every transfer has stopped
// at a checkpoint and its dispatch has been handed back.
func (a *Agent) Run(ctx context.Context) error {
	defer a.root.Close()
	if _, err := dispatch.EnsureStream(ctx, a.js, dispatch.StreamOptions{}); err != nil {
		return err
	}
	opts := dispatch.ConsumerOptions{AckWait: a.cfg.AckWait}
	pool, err := dispatch.EnsureConsumer(ctx, a.js, dispatch.PoolConsumer(a.cfg.Pool), dispatch.PoolFilter(a.cfg.Pool), opts)
	if err != nil {
		return err
	}
	pinned, err := dispatch.EnsureConsumer(ctx, a.js, dispatch.AgentConsumer(a.cfg.ID), dispatch.AgentFilter(a.cfg.ID), opts)
	if err != nil {
		return err
	}
	a.log.Info().Str("pool", a.cfg.Pool).Str("root", a.cfg.Root).Int("slots", a.cfg.Slots).Msg("agent running")
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.consume(ctx, pool, a.cfg.Slots+a.cfg.MaxForeground+a.cfg.Waiting, a.transfer) })
	// Commands pinned to this host: Complete and Cancel cleanup of the
	// files only it has, and transfers of jobs pinned to this agent. One
	// more place than the pool's, so a Complete never waits behind them.
	g.Go(func() error {
		return a.consume(ctx, pinned, a.cfg.Slots+a.cfg.MaxForeground+a.cfg.Waiting+1, a.hostCommand)
	})
	g.Go(func() error { return a.watchBandwidth(ctx) })
	g.Go(func() error { return a.runRegistry(ctx) })
	err = g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// consume fetches up to slots messages at a time and handles each in its own
// goroutine, never holding more than slots at once.
func (a *Agent) consume(ctx context.Context, c jetstream.Consumer, slots int, handle func(context.Context, jetstream.Msg)) error {
	sem := make(chan struct{}, slots)
	var wg sync.WaitGroup
	defer wg.Wait()
	for ctx.Err() == nil {
		// Wait for at least one free slot.
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		free := 1
		for free < slots {
			select {
			case sem <- struct{}{}:
				free++
				continue
			default:
			}
			break
		}
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		batch, err := c.Fetch(free, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			for range free {
				<-sem
			}
			if ctx.Err() != nil {
				return nil
			}
			a.log.Warn().Err(err).Msg("fetch failed")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		got := 0
		for m := range batch.Messages() {
			got++
			wg.Go(func() {
				defer func() { <-sem }()
				handle(ctx, m)
			})
		}
		cancel()
		for range free - got {
			<-sem
		}
		if err := batch.Error(); err != nil && ctx.Err() == nil && !errors.Is(err, jetstream.ErrNoMessages) {
			a.log.Debug().Err(err).Msg("fetch ended")
		}
	}
	return nil
}

// heartbeat tells the server the message is being worked on until stop.
func (a *Agent) heartbeat(m jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(max(a.cfg.AckWait/3, 100*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := m.InProgress(); err != nil {
					a.log.Debug().Err(err).Msg("heartbeat failed")
				}
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func (a *Agent) meta() events.Meta { return events.Meta{Actor: a.cfg.Principal} }

// exec runs an agent command on the job, chained on the agent's view j. A
// conflict reloads j, so a priority changed meanwhile (ferry job set
// --priority on a running job) reaches the scheduler here, at the latest
// with the next checkpoint.
func (a *Agent) exec(ctx context.Context, j *job.Job, c job.Command) error {
	before := j.Priority
	_, err := a.repo.Execute(ctx, j.ID, c, a.meta(), j)
	if j.Priority != before && before != "" {
		a.sched.SetPriority(j.ID, j.Priority)
	}
	return err
}

// lostLease reports whether err says the agent no longer holds the job.
func lostLease(err error) bool {
	var je *job.Error
	return errors.As(err, &je) && (je.Code == job.BG_E_INVALID_STATE || je.Code == job.BG_E_NOT_FOUND)
}

// transfer handles one pool dispatch: lease the job and move its files.
func (a *Agent) transfer(ctx context.Context, m jetstream.Msg) {
	cmd, err := dispatch.Decode(m)
	if err != nil {
		a.log.Warn().Err(err).Msg("dropping malformed command")
		_ = m.Term()
		return
	}
	log := a.log.With().Str("job", cmd.JobID).Logger()
	stop := a.heartbeat(m)
	defer stop()
	jobCtx, release := a.register(ctx, cmd.JobID)
	defer release()

	// The job's class decides when it may run; while it waits for a slot it
	// stays QUEUED and this agent keeps its dispatch (with heartbeats).
	lease := job.Lease{Agent: a.cfg.ID, DispatchSeq: cmd.JobSeq}
	if md, err := m.Metadata(); err == nil {
		lease.Deliveries = int(md.NumDelivered)
	}
	j, err := a.repo.LoadAtLeast(ctx, cmd.JobID, cmd.JobSeq)
	if err == nil {
		_, err = job.Decide(&j, lease, time.Now())
	}
	if err != nil {
		if lostLease(err) {
			log.Debug().Err(err).Msg("nothing to do for this dispatch")
			a.settle(m, log)
			return
		}
		a.handBack(ctx, m, log, err)
		return
	}
	// Follow the job's events while this agent holds it: a Suspend, Cancel,
	// Complete or deadline stops the transfer at once (not at the next
	// write), and a priority change reaches the scheduler even while the
	// job waits for a slot.
	jobCtx, stopJob := context.WithCancelCause(jobCtx)
	defer stopJob(nil)
	go a.follow(jobCtx, j, stopJob, log)

	ticket, err := a.sched.Acquire(jobCtx, j.ID, j.Priority)
	if err != nil {
		a.notRun(ctx, m, log, err)
		return
	}
	defer func() { ticket.Release() }()

	// The lease chains on the state just loaded (no second load).
	if err := a.exec(ctx, &j, lease); err != nil {
		if lostLease(err) {
			log.Debug().Err(err).Msg("nothing to do for this dispatch")
			a.settle(m, log)
			return
		}
		a.handBack(ctx, m, log, err)
		return
	}
	log = log.With().Int("attempt", j.Attempt).Logger()
	log.Info().Str("priority", string(j.Priority)).Msg("job leased")

	certs := a.clientCertFor(&j) // one release at most per lease
	hdrs := a.writeOnlyHeadersFor(&j)
	for idx := j.NextFile(); idx >= 0; idx = j.NextFile() {
		err := a.transferUntilPreempted(jobCtx, &j, idx, certs, hdrs, ticket, log)
		var f *download.Failure
		switch {
		case err == nil:
			continue
		case errors.Is(err, errPreempted):
			// BITS: the time slice ended, or a higher priority needs the
			// slot. The job goes back to QUEUED (its files stay here) and
			// waits for its next turn on this agent.
			why := ticket.Reason()
			if err := a.exec(ctx, &j, job.Yield{Agent: a.cfg.ID}); err != nil {
				if lostLease(err) {
					a.fenced(ctx, &j, log)
					a.settle(m, log)
					return
				}
				a.handBack(ctx, m, log, err)
				return
			}
			log.Info().Str("reason", string(why)).Msg("job yielded its slot")
			// Yield returns no ticket when it fails: keep the old one for
			// the deferred Release (a no-op once it was given up).
			next, err := ticket.Yield(jobCtx)
			if err != nil {
				a.notRun(ctx, m, log, err)
				return
			}
			ticket = next
			if err := a.exec(ctx, &j, job.Lease{Agent: a.cfg.ID, DispatchSeq: j.Version}); err != nil {
				if lostLease(err) {
					log.Debug().Err(err).Msg("the job changed while it waited for its turn")
					a.settle(m, log)
					return
				}
				a.handBack(ctx, m, log, err)
				return
			}
			log.Info().Int("attempt", j.Attempt).Msg("job's turn again")
		case lostLease(err), ctx.Err() == nil && jobCtx.Err() != nil:
			// Refused, or stopped for a Complete or Cancel on this host.
			a.fenced(ctx, &j, log)
			a.settle(m, log)
			return
		case errors.As(err, &f):
			log.Info().Str("code", f.Code.Symbol).Bool("transient", f.Transient).Str("description", f.Description).Msg("transfer failed")
			ferr := a.exec(ctx, &j, job.Fail{Agent: a.cfg.ID, Transient: f.Transient, RetryAfter: f.RetryAfter,
				Error: events.ErrorInfo{Context: f.Context, Code: f.Code.Symbol, HResult: f.Code.HResultString(), Description: f.Description, FileIndex: idx}})
			if ferr != nil && !lostLease(ferr) {
				a.handBack(ctx, m, log, ferr)
				return
			}
			if ferr != nil {
				a.settle(m, log)
				return
			}
			ack(m)
			return
		default:
			a.handBack(ctx, m, log, err)
			return
		}
	}
	log.Info().Msg("job transferred")
	ack(m)
}

var errPreempted = errors.New("agent: the scheduler gave the job's slot to other work")

// errJobChanged stops a job's transfer when its events say this agent must
// let go of it.
var errJobChanged = errors.New("agent: the job was suspended, cancelled, completed, failed or taken over")

// follow applies the job's new events to a copy of j until ctx ends: a
// priority change goes to the scheduler; a change that takes the job from
// this agent calls stop. It is best effort: the fencing of every write
// remains the guarantee.
func (a *Agent) follow(ctx context.Context, j job.Job, stop context.CancelCauseFunc, log zerolog.Logger) {
	prio := j.Priority
	err := a.repo.Store.Subscribe(ctx, events.JobSubject(j.ID), j.Version, func(ev events.Event) error {
		if err := job.Evolve(&j, &ev); err != nil {
			return err
		}
		if j.Priority != prio {
			prio = j.Priority
			a.sched.SetPriority(j.ID, prio)
		}
		if a.mustLetGo(&j) {
			log.Info().Str("event", ev.Type).Str("state", string(j.State)).Msg("the job changed: stopping its transfer")
			stop(errJobChanged)
			return errJobChanged
		}
		return nil
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, errJobChanged) {
		log.Debug().Err(err).Msg("following the job's events stopped")
	}
}

// mustLetGo reports whether j's state leaves this agent nothing to do.
func (a *Agent) mustLetGo(j *job.Job) bool {
	switch {
	case j.PendingComplete, j.State == job.Suspended, j.State == job.Cancelled, j.State == job.Acknowledged, j.State == job.Errored:
		return true
	case j.State.Active() && j.Agent != "" && j.Agent != a.cfg.ID:
		return true
	}
	return false
}

// transferUntilPreempted transfers file idx until it is done, fails, or the
// scheduler takes the slot back (errPreempted; the file stays resumable at
// its last checkpoint).
func (a *Agent) transferUntilPreempted(ctx context.Context, j *job.Job, idx int, certs download.ClientCertProvider, hdrs *headerSource, t *Ticket, log zerolog.Logger) error {
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-t.Preempted():
			if t.Reason() != StopReleased {
				cancel(errPreempted)
			}
		case <-done:
		}
	}()
	err := a.transferFile(runCtx, j, idx, certs, hdrs, log)
	if err != nil && errors.Is(context.Cause(runCtx), errPreempted) && ctx.Err() == nil {
		if t.Reason() == StopRemoved {
			return fmt.Errorf("agent: job removed from the scheduler: %w", context.Canceled)
		}
		return errPreempted
	}
	return err
}

// notRun settles a dispatch whose job never got (or lost) its turn.
func (a *Agent) notRun(ctx context.Context, m jetstream.Msg, log zerolog.Logger, err error) {
	switch {
	case ctx.Err() != nil:
		a.handBack(ctx, m, log, err)
	default:
		// Stopped for a Complete, Cancel or newer delivery of the job: the
		// job's events say what happens next.
		log.Debug().Err(err).Msg("job left the scheduler before its turn")
		a.settle(m, log)
	}
}

// register records a transfer of job id; stopJob cancels it and waits.
func (a *Agent) register(ctx context.Context, id string) (context.Context, func()) {
	jobCtx, cancel := context.WithCancel(ctx)
	r := &run{cancel: cancel, done: make(chan struct{})}
	a.mu.Lock()
	prev := a.running[id]
	a.running[id] = r
	a.mu.Unlock()
	if prev != nil {
		// A redelivery of a job this host still runs: the older run stops.
		prev.cancel()
		<-prev.done
	}
	return jobCtx, func() {
		cancel()
		a.mu.Lock()
		if a.running[id] == r {
			delete(a.running, id)
		}
		a.mu.Unlock()
		close(r.done)
	}
}

// stopJob stops this host's transfer of job id, if any, and waits until it
// has let go of the job's files.
func (a *Agent) stopJob(id string) {
	a.mu.Lock()
	r := a.running[id]
	a.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

// transferFile moves file idx of j, chaining every event on j.
func (a *Agent) transferFile(ctx context.Context, j *job.Job, idx int, certs download.ClientCertProvider, hdrs *headerSource, log zerolog.Logger) error {
	f := j.Files[idx]
	rel, err := a.relPath(f.LocalName)
	if err != nil {
		return &download.Failure{Context: job.ContextLocalFile, Code: job.E_ACCESSDENIED, Description: err.Error(), Err: err}
	}
	if dir := path.Dir(rel); dir != "." {
		if err := a.root.MkdirAll(dir, 0o755); err != nil {
			return &download.Failure{Context: job.ContextLocalFile, Code: job.E_ACCESSDENIED,
				Description: fmt.Sprintf("cannot create the directory of %s: %v", f.LocalName, errors.Unwrap(err)), Err: err}
		}
	}
	if err := a.exec(ctx, j, job.StartConnecting{Agent: a.cfg.ID, FileIndex: idx}); err != nil {
		return err
	}
	// Write-only header values come from certvault now that the job is
	// CONNECTING (certvault releases them only then, and while
	// TRANSFERRING); they replace plain headers of the same names.
	header := customHeaders(j.Options.CustomHeaders)
	if len(j.Options.WriteOnlyHeaders) > 0 {
		lines, err := hdrs.get(ctx, j)
		if err != nil {
			return err
		}
		header = withWriteOnly(header, lines)
	}
	temp := TempName(rel, j.ID, idx)
	// One HTTP client per transfer: a connection authenticated with one
	// job's client certificate must never carry another job's requests, and
	// net/http pools connections by host only. Its idle connections are
	// closed when the transfer ends.
	copts := clientOptions(a.cfg.Client, j.Options)
	if len(j.Options.IgnoreCertErrors) > 0 {
		// An audited opt-in (the job's events say who set it); say so
		// wherever the transfer is looked at.
		log.Warn().Strs("ignore_cert_errors", j.Options.IgnoreCertErrors).Msg("server certificate checks relaxed for this job")
	}
	client := download.NewClient(copts)
	defer client.CloseIdleConnections()
	fetchCtx := ctx
	switch {
	case certs != nil:
		fetchCtx = download.WithClientCertificate(ctx, certs)
	case j.Options.AnonymousClientAuth:
		fetchCtx = download.WithAnonymousClientAuth(ctx)
	}
	// MaxDownloadTime: the coordinator's clock fails the job at the
	// deadline (and so fences this agent); stopping here as well ends the
	// transfer at once rather than at the next checkpoint.
	if at, ok := downloadDeadline(j, time.Now()); ok {
		var cancel context.CancelFunc
		fetchCtx, cancel = context.WithDeadlineCause(fetchCtx, at, errMaxDownloadTime)
		defer cancel()
	}
	// With no provider, an origin that asks for a client certificate fails
	// the transfer with ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED (0x80072F0C)
	// before any HTTP request is sent, as BITS does.
	res, err := download.Fetch(fetchCtx, download.Request{
		URL: f.RemoteURL, Root: a.root, TempName: temp, Client: client,
		Header: header, Ranges: fileRanges(f.Ranges),
		ExpectedSHA256: f.ExpectedSHA256, Dynamic: j.Options.Dynamic, MaxSize: j.Options.MaxDownloadSize,
		Limiter: a.limiter(j.Priority), MinFreeBytes: a.cfg.MinFreeBytes,
		CheckpointInterval: a.cfg.CheckpointInterval, CheckpointBytes: a.cfg.CheckpointBytes,
		Log: log.With().Int("file", idx).Logger(),
		OnTransferring: func(s download.Start) error {
			return a.exec(ctx, j, job.StartTransferring{Agent: a.cfg.ID, FileIndex: idx,
				BytesTotal: s.Total, Offset: s.Offset, Restarted: s.Restarted})
		},
		OnCheckpoint: func(c download.Checkpoint) error {
			return a.exec(ctx, j, job.Checkpoint{Agent: a.cfg.ID, FileIndex: idx, BytesTransferred: c.Bytes, BytesTotal: c.Total})
		},
	})
	if err != nil {
		if errors.Is(context.Cause(fetchCtx), errMaxDownloadTime) && ctx.Err() == nil {
			return maxDownloadFailure(j)
		}
		return err
	}
	return a.exec(ctx, j, job.FileDone{Agent: a.cfg.ID, FileIndex: idx, Bytes: res.Bytes, SHA256: res.SHA256,
		TempName: temp, ETag: res.ETag, LastModified: res.LastModified,
		ResponseHeaders: flatHeaders(res.Header), FinalURL: res.FinalURL})
}

// clientCertFor is the client-certificate provider of j's transfers, nil
// when the job names none. The key is released from certvault only when an
// origin asks for a certificate, at most once per lease, and lives in this
// closure's memory only while the lease's transfers run.
func (a *Agent) clientCertFor(j *job.Job) download.ClientCertProvider {
	if j.ClientCertificate == nil || a.cfg.ClientCerts == nil {
		return nil
	}
	id := j.ID
	var (
		mu   sync.Mutex
		cert *tls.Certificate
	)
	return func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if cert != nil {
			return cert, nil
		}
		c, err := a.cfg.ClientCerts.Release(cri.Context(), id)
		if err != nil {
			// certvault unreachable or unavailable: retry later; refused
			// (lease, state, certificate gone): the job's error.
			code := job.CodeOf(err)
			transient := code == job.E_FAIL || code == job.ERROR_SERVICE_UNAVAILABLE
			if transient {
				code = job.ERROR_SERVICE_UNAVAILABLE
			}
			return nil, &download.Failure{Context: job.ContextRemoteFile, Code: code, Transient: transient,
				Description: "the origin asked for the job's client certificate and certvault did not release it: " + err.Error(), Err: err}
		}
		cert = c
		return cert, nil
	}
}

// headerSource releases a job's write-only header values from certvault
// when a transfer first needs them, once per lease (and again if the job's
// write-only headers change meanwhile), and keeps them in memory only
// while the dispatch's transfers run. A nil *headerSource is an agent
// without a way to certvault.
type headerSource struct {
	rel WriteOnlyHeaders
	id  string

	mu      sync.Mutex
	attempt int
	names   []string
	lines   []string
}

// writeOnlyHeadersFor is the header source of j's transfers.
func (a *Agent) writeOnlyHeadersFor(j *job.Job) *headerSource {
	if a.cfg.WriteOnlyHeaders == nil {
		return nil
	}
	return &headerSource{rel: a.cfg.WriteOnlyHeaders, id: j.ID}
}

// get returns the "Name: value" lines of j's write-only headers. A refusal
// or an unreachable certvault fails the transfer like a client certificate
// that was not released (transient when certvault is unavailable). The
// values are never logged or put in a description.
func (h *headerSource) get(ctx context.Context, j *job.Job) ([]string, error) {
	if h == nil {
		return nil, &download.Failure{Context: job.ContextRemoteFile, Code: job.ERROR_SERVICE_UNAVAILABLE, Transient: true,
			Description: "the job has write-only custom headers and this agent has no certvault to release them"}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lines != nil && h.attempt == j.Attempt && slices.Equal(h.names, j.Options.WriteOnlyHeaders) {
		return h.lines, nil
	}
	h.lines = nil
	lines, err := h.rel.ReleaseHeaders(ctx, h.id)
	if err != nil {
		code := job.CodeOf(err)
		transient := code == job.E_FAIL || code == job.ERROR_SERVICE_UNAVAILABLE
		if transient {
			code = job.ERROR_SERVICE_UNAVAILABLE
		}
		return nil, &download.Failure{Context: job.ContextRemoteFile, Code: code, Transient: transient,
			Description: "certvault did not release the job's write-only custom headers: " + err.Error(), Err: err}
	}
	h.lines, h.attempt, h.names = lines, j.Attempt, slices.Clone(j.Options.WriteOnlyHeaders)
	return lines, nil
}

// fenced runs when a write was refused: the job was suspended, cancelled,
// completed or taken over. Staged files stay for a later resume unless
// another host now holds the job's files.
func (a *Agent) fenced(ctx context.Context, j *job.Job, log zerolog.Logger) {
	cur, err := a.repo.Load(ctx, j.ID)
	if err != nil {
		log.Warn().Err(err).Msg("reload after losing the lease failed")
		return
	}
	log.Info().Str("state", string(cur.State)).Str("lease", cur.Agent).Msg("stopped: the agent no longer holds the job")
	// A job that is over (ACKNOWLEDGED, CANCELLED) has no staged files left
	// to anyone: what this agent still wrote after it ended (on a shared
	// root, after the new holder completed or cleaned up) goes as well.
	if cur.State.Final() || cur.FilesAgent != a.cfg.ID && !a.cfg.SharedRoot {
		a.discard(&cur, log)
	}
}

// handBack returns a dispatch for redelivery after an error that is not the
// job's fault (NATS unavailable, agent shutting down).
func (a *Agent) handBack(ctx context.Context, m jetstream.Msg, log zerolog.Logger, err error) {
	if ctx.Err() != nil {
		log.Info().Msg("agent stopping: job handed back at its last checkpoint")
		_ = m.Nak()
		return
	}
	log.Warn().Err(err).Msg("job handed back for redelivery")
	_ = m.NakWithDelay(5 * time.Second)
}

// settle ends this agent's part in a dispatch whose transfer stopped before
// the job was done here (the lease was lost, the job changed, the transfer
// was replaced): it acks the dispatch only if the job no longer needs one.
//
// JetStream settles a message by its stream sequence, not by delivery. Once
// a dispatch went unheartbeated past AckWait (this agent paused or cut off)
// and was delivered again — to another agent, or again to this one — an ack
// from the older delivery would remove the message the newer one runs on,
// and should that holder die, nothing would ever deliver the job again: it
// would stay CONNECTING or TRANSFERRING for good. So while the job is
// active (QUEUED, CONNECTING, TRANSFERRING, no Complete pending) the
// dispatch is left alone: its current holder's heartbeats keep it, and
// without them it is delivered again after AckWait. A job that is done,
// suspended, failed or cancelled gets a new dispatch when it needs one, so
// this one is acked. When the job cannot be read, the dispatch is left to
// be delivered again, which is always safe.
func (a *Agent) settle(m jetstream.Msg, log zerolog.Logger) {
	cmd, err := dispatch.Decode(m)
	if err != nil {
		ack(m)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cur, err := a.repo.LoadLatest(ctx, cmd.JobID)
	switch {
	case err != nil && job.CodeOf(err) == job.BG_E_NOT_FOUND:
		ack(m)
	case err != nil:
		log.Debug().Err(err).Msg("dispatch left for redelivery: the job could not be read")
	case cur.State.Active() && !cur.PendingComplete:
		log.Debug().Str("state", string(cur.State)).Str("lease", cur.Agent).Msg("dispatch left to the job's current holder")
	default:
		ack(m)
	}
}

func ack(m jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.DoubleAck(ctx)
}

// hostCommand handles a command sent to this agent alone: a transfer of a
// job pinned to it, or a command for files only this host has.
func (a *Agent) hostCommand(ctx context.Context, m jetstream.Msg) {
	if cmd, err := dispatch.Decode(m); err == nil && cmd.Kind == dispatch.KindTransfer {
		a.transfer(ctx, m)
		return
	}
	a.pinned(ctx, m)
}

// pinned handles commands for files only this host has.
func (a *Agent) pinned(ctx context.Context, m jetstream.Msg) {
	cmd, err := dispatch.Decode(m)
	if err != nil {
		a.log.Warn().Err(err).Msg("dropping malformed command")
		_ = m.Term()
		return
	}
	log := a.log.With().Str("job", cmd.JobID).Str("command", cmd.Kind).Logger()
	stop := a.heartbeat(m)
	defer stop()
	j, err := a.repo.LoadAtLeast(ctx, cmd.JobID, cmd.JobSeq)
	if err != nil {
		if lostLease(err) {
			ack(m)
			return
		}
		a.handBack(ctx, m, log, err)
		return
	}
	switch cmd.Kind {
	case dispatch.KindComplete:
		err = a.complete(ctx, &j, log)
	case dispatch.KindCleanup:
		err = a.cleanup(ctx, &j, log)
	default:
		log.Warn().Msg("unknown command")
	}
	if err != nil && !lostLease(err) {
		a.handBack(ctx, m, log, err)
		return
	}
	ack(m)
}

// complete renames the job's transferred files to their final names, durably,
// and deletes the temporary files of the others (BG_S_PARTIAL_COMPLETE).
func (a *Agent) complete(ctx context.Context, j *job.Job, log zerolog.Logger) error {
	if !j.PendingComplete || j.FilesAgent != a.cfg.ID {
		return nil
	}
	a.stopJob(j.ID)
	done := []int{}
	for i, f := range j.Files {
		rel, err := a.relPath(f.LocalName)
		if err != nil {
			if f.Transferred {
				return a.exec(ctx, j, job.CompleteFailed{Agent: a.cfg.ID, Error: localError(job.E_ACCESSDENIED, err.Error(), i), Renamed: done})
			}
			continue
		}
		if !f.Transferred {
			_ = download.Discard(a.root, TempName(rel, j.ID, i))
			continue
		}
		if err := a.publish(f.TempName, rel); err != nil {
			log.Warn().Err(err).Int("file", i).Msg("complete: rename failed")
			return a.exec(ctx, j, job.CompleteFailed{Agent: a.cfg.ID, Renamed: done, Error: localError(codeForFS(err),
				fmt.Sprintf("cannot move the file to %s: %v", f.LocalName, errors.Unwrap(err)), i)})
		}
		done = append(done, i)
	}
	// The renamed files' sidecars go before the job says ACKNOWLEDGED, so
	// nothing of the job is left once it does. A crash in between is
	// harmless: a repeated complete finds each file already renamed.
	for _, i := range done {
		_ = download.Discard(a.root, j.Files[i].TempName) // the sidecar; the file itself was renamed
	}
	if err := a.exec(ctx, j, job.CompleteDone{Agent: a.cfg.ID, Files: done}); err != nil {
		return err
	}
	log.Info().Ints("files", done).Msg("job acknowledged")
	return nil
}

// publish renames a staged file to its final name and makes the rename
// durable. A temp file already gone with the final name present means an
// earlier attempt renamed it before crashing.
func (a *Agent) publish(temp, final string) error {
	if err := a.root.Rename(temp, final); err != nil {
		if _, serr := a.root.Stat(temp); errors.Is(serr, os.ErrNotExist) {
			if _, ferr := a.root.Stat(final); ferr == nil {
				return nil
			}
		}
		return err
	}
	return syncDir(a.root, path.Dir(final))
}

func syncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// cleanup deletes the staged files of a cancelled job.
func (a *Agent) cleanup(ctx context.Context, j *job.Job, log zerolog.Logger) error {
	if j.State != job.Cancelled || !j.PendingCleanup || j.FilesAgent != a.cfg.ID {
		return nil
	}
	a.stopJob(j.ID)
	undeleted := a.discard(j, log)
	log.Info().Int("undeleted", len(undeleted)).Msg("cancelled job's files deleted")
	return a.exec(ctx, j, job.FilesDeleted{Agent: a.cfg.ID, Undeleted: undeleted})
}

// discard deletes every temporary file of j on this host and returns the
// local names of those it could not delete.
func (a *Agent) discard(j *job.Job, log zerolog.Logger) []string {
	var undeleted []string
	for i, f := range j.Files {
		rel, err := a.relPath(f.LocalName)
		if err != nil {
			continue
		}
		if err := download.Discard(a.root, TempName(rel, j.ID, i)); err != nil {
			log.Warn().Err(err).Int("file", i).Msg("cannot delete temporary file")
			undeleted = append(undeleted, f.LocalName)
			continue
		}
		if j.State == job.Cancelled && f.Renamed && !f.Completed {
			// A Complete that failed later renamed this one: Cancel takes
			// it back, as it would the temporary file.
			if err := a.root.Remove(rel); err != nil && !errors.Is(err, os.ErrNotExist) {
				log.Warn().Err(err).Int("file", i).Msg("cannot delete a file renamed by a failed complete")
				undeleted = append(undeleted, f.LocalName)
			} else if err == nil {
				_ = syncDir(a.root, path.Dir(rel))
			}
		}
	}
	return undeleted
}

// relPath maps a job's absolute local name to a path under the agent's root.
func (a *Agent) relPath(local string) (string, error) {
	if err := job.ValidateLocalName(local); err != nil {
		return "", err
	}
	rootSlash := filepath.ToSlash(a.cfg.Root)
	if rootSlash == "/" {
		return strings.TrimPrefix(local, "/"), nil
	}
	rel, ok := strings.CutPrefix(local, rootSlash+"/")
	if !ok || rel == "" {
		return "", fmt.Errorf("destination %s is outside this agent's root %s", local, a.cfg.Root)
	}
	return rel, nil
}

// TempName is where file idx of job id is staged: a hidden file next to its
// final name, so Complete is a rename within one directory.
func TempName(rel, jobID string, idx int) string {
	dir, base := path.Split(rel)
	return fmt.Sprintf("%s.%s.ferry-%s-%d.part", dir, base, jobID, idx)
}

func localError(c job.Code, desc string, file int) events.ErrorInfo {
	return events.ErrorInfo{Context: job.ContextLocalFile, Code: c.Symbol, HResult: c.HResultString(), Description: desc, FileIndex: file}
}

func codeForFS(err error) job.Code {
	switch {
	case errors.Is(err, os.ErrPermission):
		return job.E_ACCESSDENIED
	case errors.Is(err, os.ErrNotExist):
		return job.ERROR_FILE_NOT_FOUND
	}
	return job.E_FAIL
}

// Scheduler is the agent's scheduler (for status and tests).
func (a *Agent) Scheduler() *Scheduler { return a.sched }
