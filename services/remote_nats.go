package services

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// DefaultNATSURL is where a role looks for NATS when nothing is configured.
const DefaultNATSURL = "nats://127.0.0.1:4222"

// DefaultConnectTimeout bounds a role's wait for NATS at start.
const DefaultConnectTimeout = 30 * time.Second

// natsClient is what ConnectNATS needs beyond NATSConfig: the client
// options that prepare built from the files the config names.
type natsClient struct {
	tls   *tls.Config // nil: no TLS unless a tls:// URL asks for it
	creds []nats.Option
}

// ConnectNATS connects a service role to JetStream: to the remote servers of
// cfg.URL, or to a server embedded in this process (cfg.Embedded). name is
// the connection's name as NATS monitoring shows it ("agent/a1"). It waits
// at most cfg.ConnectTimeout for a first connection, then reconnects forever
// with a capped, jittered backoff. The JetStream context it returns creates
// streams and buckets with cfg.Replicas; when owner is false (agents) it
// uses streams and buckets that exist as they are, and creates only missing
// ones. It makes sure the event stream exists before it returns.
func ConnectNATS(ctx context.Context, cfg NATSConfig, name string, owner bool, log zerolog.Logger) (*NATS, error) {
	cl, problems := cfg.prepareClient()
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	return connectNATS(ctx, cfg, cl, name, owner, log)
}

func connectNATS(ctx context.Context, cfg NATSConfig, cl natsClient, name string, owner bool, log zerolog.Logger) (_ *NATS, err error) {
	log = log.With().Str("component", "nats").Logger()
	timeout := cfg.ConnectTimeout.D()
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	replicas := max(cfg.Replicas, 1)
	n := &NATS{closed: make(chan struct{})}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	var closeOnce sync.Once
	var lastErr atomic.Pointer[error] // why the last attempt failed, for the start-up error
	connected := make(chan struct{})
	var connectOnce sync.Once
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.CustomReconnectDelay(reconnectDelay),
		nats.ConnectHandler(func(*nats.Conn) { connectOnce.Do(func() { close(connected) }) }),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("nats disconnected; reconnecting")
			}
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				lastErr.Store(&err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("server", c.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ClosedHandler(func(*nats.Conn) { closeOnce.Do(func() { close(n.closed) }) }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Warn().Err(err).Str("subject", subj).Msg("nats async error")
		}),
	}
	if cl.tls != nil && !cfg.Embedded {
		// An in-process connection is a pipe, never TLS (the server does
		// not offer it there).
		opts = append(opts, nats.Secure(cl.tls))
	}
	opts = append(opts, cl.creds...)
	url := cfg.URL
	if cfg.Embedded {
		srv, err := startEmbedded(cfg, log)
		if err != nil {
			return nil, err
		}
		n.Server = srv
		if addr, ok := srv.Addr().(*net.TCPAddr); ok && addr != nil {
			n.ClientURL = fmt.Sprintf("nats://%s", net.JoinHostPort(addr.IP.String(), strconv.Itoa(addr.Port)))
		}
		opts = append(opts, nats.InProcessServer(srv))
		url = ""
		log.Info().Str("url", n.ClientURL).Str("store", cfg.DataDir).Msg("embedded nats server running")
	} else {
		if url == "" {
			url = DefaultNATSURL
		}
		n.ClientURL = url
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats: connect to %s: %w", redactURL(url), err)
	}
	n.Conn = nc
	if nc.IsConnected() {
		connectOnce.Do(func() { close(connected) })
	}
	wait := time.NewTimer(timeout)
	defer wait.Stop()
	select {
	case <-connected:
	case <-n.closed:
		return nil, fmt.Errorf("nats: %s refused the connection: %v", redactURL(url), nc.LastError())
	case <-wait.C:
		why := "no answer"
		if e := nc.LastError(); e != nil {
			why = e.Error()
		} else if e := lastErr.Load(); e != nil {
			why = (*e).Error()
		}
		return nil, fmt.Errorf("nats: no server of %s could be reached within %s (%s)", redactURL(url), timeout, why)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	server := nc.ConnectedUrlRedacted()
	if cfg.Embedded {
		server = "in-process"
	}
	log.Info().Str("server", server).Str("name", name).Msg("nats connected")
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats: jetstream: %w", err)
	}
	n.JS = &replicatedJS{JetStream: js, replicas: replicas, adopt: !owner}
	// A cluster that has just started may not have a JetStream leader yet:
	// try until the connect timeout.
	err = retryUntil(ctx, wait.C, func() error {
		return events.EnsureStream(ctx, n.JS, events.StreamOptions{Replicas: replicas})
	})
	if err != nil {
		return nil, fmt.Errorf("nats: JetStream is not available on %s within %s: %w", redactURL(n.ClientURL), timeout, err)
	}
	return n, nil
}

// reconnectDelay is the wait before reconnect attempt n: 100 ms doubling to
// at most 5 s, plus up to 25% of jitter so that a fleet of agents does not
// reconnect in lockstep after a server restart.
func reconnectDelay(attempts int) time.Duration {
	d := 100 * time.Millisecond << min(attempts, 6)
	d = min(d, 5*time.Second)
	return d + rand.N(d/4+1)
}

// retryUntil calls fn until it succeeds, ctx ends or deadline fires,
// returning fn's last error.
func retryUntil(ctx context.Context, deadline <-chan time.Time, fn func() error) error {
	delay := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-deadline:
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// redactURL hides passwords and tokens in NATS URLs (nats://user:pass@host,
// nats://token@host).
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if scheme := strings.Index(p, "://"); scheme >= 0 && scheme < at {
				userinfo := p[scheme+3 : at]
				if user, _, ok := strings.Cut(userinfo, ":"); ok {
					parts[i] = p[:scheme+3] + user + ":" + redactedText + p[at:]
				} else { // a token
					parts[i] = p[:scheme+3] + redactedText + p[at:]
				}
			}
		}
	}
	return strings.Join(parts, ",")
}

// replicatedJS is the JetStream context of a role: every stream and bucket
// ferry's packages create through it gets the deployment's replica count
// (they ask for the single-node default; R3 on a cluster is a deployment
// decision, made here). With adopt, existing streams and buckets are used as
// they are rather than updated: only the coordinator and certvault own their
// configuration, so a rolling upgrade of agents cannot change it, and agents
// need no permission to update streams.
type replicatedJS struct {
	jetstream.JetStream
	replicas int
	adopt    bool
}

func (r *replicatedJS) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = r.replicas
	return r.JetStream.CreateStream(ctx, cfg)
}

func (r *replicatedJS) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = r.replicas
	return r.JetStream.UpdateStream(ctx, cfg)
}

func (r *replicatedJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = r.replicas
	if r.adopt {
		if s, err := r.JetStream.Stream(ctx, cfg.Name); err == nil {
			return s, nil
		}
	}
	return r.JetStream.CreateOrUpdateStream(ctx, cfg)
}

func (r *replicatedJS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = r.replicas
	return r.JetStream.CreateKeyValue(ctx, cfg)
}

func (r *replicatedJS) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = r.replicas
	return r.JetStream.UpdateKeyValue(ctx, cfg)
}

func (r *replicatedJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = r.replicas
	if r.adopt {
		if kv, err := r.JetStream.KeyValue(ctx, cfg.Bucket); err == nil {
			return kv, nil
		}
	}
	return r.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
}
