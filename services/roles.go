package services

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/ferry-dev/ferry/agent"
	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/coordinator/notify"
	"github.com/ferry-dev/ferry/events"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// The service roles: `ferry coordinator run`, `ferry certvault run` and
// `ferry agent run` each run one role in its own process, on its own host if
// need be, connected to the others through NATS JetStream (and, for
// certificates, certvault's HTTPS API). Each Run function checks its
// configuration (every problem at once, as a *ConfigError), connects to NATS
// (or starts an embedded server), serves until ctx ends, then stops its
// components and waits for them.

// serverStopTimeout bounds the stop of the coordinator and certvault after
// ctx ends (HTTP servers shut down gracefully within 5 s).
const serverStopTimeout = 15 * time.Second

// component is one long-lived part of a role.
type component struct {
	name string
	run  func(context.Context) error
}

// RunCoordinator runs the coordinator role until ctx ends.
func RunCoordinator(ctx context.Context, cfg CoordinatorConfig, log zerolog.Logger) error {
	cfg.applyDefaults()
	rt, ps := cfg.prepare()
	if len(ps) > 0 {
		return &ConfigError{Role: cfg.Role(), Problems: ps}
	}
	log = newRoleLogger(log, cfg.Role(), cfg.ID)
	return runRole(ctx, &cfg.RoleCommon, cfg.Role(), true, rt.nats, serverStopTimeout, log,
		func(ctx context.Context, n *NATS, h *Health) ([]component, error) {
			store, err := events.NewJetStreamStore(ctx, n.JS)
			if err != nil {
				return nil, err
			}
			auth := &identity.Authenticator{Roots: rt.roots, Roles: rt.roles}
			ccfg := coordinator.Config{
				ReconcileInterval: cfg.ReconcileInterval.D(), JobInactivityTimeout: cfg.JobInactivityTimeout.D(), Auth: auth,
				Limits: jobLimits(cfg.Limits),
			}
			if cfg.CertvaultURL != "" {
				vault := NewVaultClient(cfg.CertvaultURL, identity.ClientTLSConfig(*rt.cert, rt.roots))
				ccfg.Certs, ccfg.Headers = vault, vault
			} else {
				log.Warn().Msg("no certvault_url: jobs cannot be given client certificates or write-only headers (ERROR_SERVICE_UNAVAILABLE)")
			}
			coord, err := coordinator.New(ctx, ccfg, log, n.JS, store)
			if err != nil {
				return nil, err
			}
			comps := []component{{"coordinator", coord.Run}}
			if cfg.Notify.Disabled {
				log.Warn().Msg("notifications are disabled")
			} else {
				notifier, err := notify.New(notify.Config{Secret: rt.secret, RootCAs: rt.notifyRoots, Timeout: cfg.Notify.Timeout.D()}, log, n.JS, store)
				if err != nil {
					return nil, err
				}
				comps = append(comps, component{"notifier", notifier.Run})
			}
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return nil, fmt.Errorf("coordinator: listen %s: %w", cfg.Listen, err)
			}
			log.Info().Str("url", "https://"+ln.Addr().String()).Msg("coordinator API listening")
			api := &http.Server{Handler: h.CountRequests(coord.Handler()), ReadHeaderTimeout: 10 * time.Second,
				BaseContext: func(net.Listener) context.Context { return ctx }}
			tlsCfg := identity.ServerTLSConfig(*rt.cert, rt.roots)
			comps = append(comps, component{"api", func(ctx context.Context) error { return serve(ctx, api, ln, tlsCfg) }})
			return comps, nil
		})
}

// RunCertvault runs the certvault role until ctx ends.
func RunCertvault(ctx context.Context, cfg CertvaultConfig, log zerolog.Logger) error {
	cfg.applyDefaults()
	rt, ps := cfg.prepare()
	if len(ps) > 0 {
		return &ConfigError{Role: cfg.Role(), Problems: ps}
	}
	log = newRoleLogger(log, cfg.Role(), cfg.ID)
	return runRole(ctx, &cfg.RoleCommon, cfg.Role(), true, rt.nats, serverStopTimeout, log,
		func(ctx context.Context, n *NATS, h *Health) ([]component, error) {
			store, err := events.NewJetStreamStore(ctx, n.JS)
			if err != nil {
				return nil, err
			}
			auth := &identity.Authenticator{Roots: rt.roots, Roles: rt.roles}
			_, srv, err := vaultServer(ctx, n.JS, store, rt.keyring, auth, *rt.cert, log)
			if err != nil {
				return nil, err
			}
			srv.Handler = h.CountRequests(srv.Handler)
			srv.ReadHeaderTimeout = 10 * time.Second
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return nil, fmt.Errorf("certvault: listen %s: %w", cfg.Listen, err)
			}
			log.Info().Str("url", "https://"+ln.Addr().String()).Int("kek_version", rt.keyring.Active()).Msg("certvault API listening")
			return []component{{"api", func(ctx context.Context) error { return serve(ctx, srv, ln, srv.TLSConfig) }}}, nil
		})
}

// RunAgent runs the agent role until ctx ends, then drains: it fetches no
// new dispatches, stops its transfers at a checkpoint, hands their
// dispatches back (Nak, so another agent of the pool takes them at once) and
// returns — an error if that took longer than cfg.DrainTimeout.
func RunAgent(ctx context.Context, cfg AgentConfig, log zerolog.Logger) error {
	cfg.applyDefaults()
	rt, ps := cfg.prepare()
	if len(ps) > 0 {
		return &ConfigError{Role: cfg.Role(), Problems: ps}
	}
	log = newRoleLogger(log, cfg.Role(), cfg.ID)
	return runRole(ctx, &cfg.RoleCommon, cfg.Role(), false, rt.nats, cfg.DrainTimeout.D(), log,
		func(ctx context.Context, n *NATS, h *Health) ([]component, error) {
			store, err := events.NewJetStreamStore(ctx, n.JS)
			if err != nil {
				return nil, err
			}
			acfg := agent.Config{
				ID: cfg.ID, Principal: rt.principal, Pool: cfg.Pool, Root: cfg.Root,
				Slots: cfg.Slots, MaxForeground: cfg.MaxForeground, TimeSlice: cfg.TimeSlice.D(),
				AckWait: cfg.AckWait.D(), CheckpointInterval: cfg.CheckpointInterval.D(), CheckpointBytes: cfg.CheckpointBytes,
				Client:    download.ClientOptions{RootCAs: rt.originRoots, IdleReadTimeout: cfg.IdleReadTimeout.D()},
				Bandwidth: cfg.Bandwidth, MinFreeBytes: cfg.MinFreeBytes, SharedRoot: cfg.SharedRoot,
			}
			if cfg.CertvaultURL != "" {
				rel := agentReleases{tls: identity.ClientTLSConfig(*rt.cert, rt.roots), url: cfg.CertvaultURL}
				acfg.ClientCerts, acfg.WriteOnlyHeaders = rel, rel
			}
			ag, err := agent.New(acfg, log, n.JS, store)
			if err != nil {
				return nil, err
			}
			return []component{{"agent", ag.Run}}, nil
		})
}

// runRole is what the roles share: the health listener (first, so that
// probes get 503 while the role starts), the NATS connection, the role's
// components in one errgroup, and the stop — bounded by stop — when ctx
// ends or a component fails.
func runRole(ctx context.Context, c *RoleCommon, role string, owner bool, cl natsClient, stop time.Duration, log zerolog.Logger,
	setup func(context.Context, *NATS, *Health) ([]component, error)) error {
	h := NewHealth(role, c.ID)
	var healthLn net.Listener
	if c.HealthAddr != "" {
		var err error
		if healthLn, err = net.Listen("tcp", c.HealthAddr); err != nil {
			return fmt.Errorf("%s: health listener %s: %w", role, c.HealthAddr, err)
		}
	}
	// The components run on their own context: ctx ending starts the stop,
	// which may take a while (an agent's transfers reach a checkpoint).
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	if healthLn != nil {
		g.Go(func() error { return h.Serve(gctx, healthLn, log) })
	}
	fail := func(err error) error {
		cancel()
		return errors.Join(err, ignoreCanceled(g.Wait()))
	}
	n, err := connectNATS(ctx, c.NATS, cl, role+"/"+c.ID, owner, log)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", role, err))
	}
	h.SetConn(n.Conn)
	comps, err := setup(gctx, n, h)
	if err != nil {
		err = fail(fmt.Errorf("%s: %w", role, err))
		n.Close()
		return err
	}
	for _, comp := range comps {
		g.Go(func() error {
			err := comp.run(gctx)
			h.SetRunning(false)
			switch {
			case gctx.Err() != nil:
				return nil
			case err == nil:
				return fmt.Errorf("%s: %s stopped unexpectedly", role, comp.name)
			}
			return fmt.Errorf("%s: %s: %w", role, comp.name, err)
		})
	}
	h.SetRunning(true)
	log.Info().Str("nats", redactURL(n.ClientURL)).Msg(role + " running")

	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	select {
	case err := <-done: // a component failed
		n.Close()
		return err
	case <-ctx.Done():
	}
	log.Info().Dur("timeout", stop).Msg(role + " stopping")
	h.SetRunning(false)
	cancel()
	timer := time.NewTimer(stop)
	defer timer.Stop()
	select {
	case err := <-done:
		n.Close()
		if err == nil {
			log.Info().Msg(role + " stopped")
		}
		return err
	case <-timer.C:
		// The process exits now; what it still held is redelivered after
		// the consumers' AckWait.
		n.Conn.Close()
		return fmt.Errorf("%s: did not stop within %s; unfinished dispatches are redelivered after their ack wait", role, stop)
	}
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// RunRole runs the role cfg configures (loaded with LoadConfig) with its
// logger writing to w: JSON lines, or console lines on a terminal.
func RunRole(ctx context.Context, cfg RoleConfig, w io.Writer) error {
	var lc LogConfig
	switch c := cfg.(type) {
	case *CoordinatorConfig:
		lc = c.Log
	case *CertvaultConfig:
		lc = c.Log
	case *AgentConfig:
		lc = c.Log
	default:
		return fmt.Errorf("unknown role config %T", cfg)
	}
	log, err := NewLogger(lc, w)
	if err != nil {
		return err
	}
	switch c := cfg.(type) {
	case *CoordinatorConfig:
		return RunCoordinator(ctx, *c, log)
	case *CertvaultConfig:
		return RunCertvault(ctx, *c, log)
	default:
		return RunAgent(ctx, *cfg.(*AgentConfig), log)
	}
}

// agentReleases is an agent's way to its jobs' client certificates and
// write-only header values: certvault's release endpoints, reached with the
// agent's own identity over connections of their own (channel-bound).
type agentReleases struct {
	tls *tls.Config
	url string
}

func (r agentReleases) Release(ctx context.Context, jobID string) (*tls.Certificate, error) {
	return certvault.Fetch(ctx, r.tls, r.url, jobID)
}

func (r agentReleases) ReleaseHeaders(ctx context.Context, jobID string) ([]string, error) {
	return certvault.FetchHeaders(ctx, r.tls, r.url, jobID)
}
