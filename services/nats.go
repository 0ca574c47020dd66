package services

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// NATSConfig says where JetStream is: a remote URL, or an embedded server
// storing under DataDir. StartNATS (the dev stack) embeds a server when URL
// is empty; the service roles (ConnectNATS) embed one only when Embedded is
// set.
type NATSConfig struct {
	// URL of the remote NATS servers, comma-separated
	// ("tls://n1:4222,tls://n2:4222,tls://n3:4222"); the client moves to
	// another one when its server goes away.
	URL string `json:"url,omitempty"`
	// Embedded runs a NATS server in this process (single-host installs).
	Embedded bool `json:"embedded,omitempty"`
	// DataDir holds the embedded server's JetStream store.
	DataDir string `json:"data_dir,omitempty"`
	// Listen is the embedded server's client address so that agents on other
	// processes can join: "127.0.0.1:4222" by default, port 0 picks a free
	// one, "none" listens nowhere (in-process use only).
	Listen string `json:"listen,omitempty"`
	// ServerConfig is a nats-server configuration file for the embedded
	// server: its tls {} block, authorization {} or accounts {} with users
	// and permissions, cluster {} routes. JetStream is always on, the store
	// is DataDir/jetstream unless the file names one, and Listen, when set,
	// wins over the file's listen address.
	ServerConfig string `json:"server_config,omitempty"`
	// SyncAlways fsyncs every write before acknowledging it (default true,
	// nats-server's sync_interval: always). false leaves it to the server's
	// default interval (2 minutes): acknowledged writes can then be lost in a
	// power cut. A ServerConfig that sets sync_interval wins.
	SyncAlways *bool `json:"sync_always,omitempty"`
	// Replicas for streams and buckets (1 embedded; 3 on a cluster).
	Replicas int `json:"replicas,omitempty"`

	// CAFile verifies the servers' certificates (PEM); CertFile and KeyFile
	// are the client certificate for mutual TLS. Any of them turns TLS on.
	CAFile   string `json:"ca_file,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// Credentials: User with Password (or PasswordFile), or a CredsFile
	// (JWT + nkey seed), or an NkeyFile (seed). At most one kind.
	User         string       `json:"user,omitempty"`
	Password     SecretString `json:"password,omitempty"`
	PasswordFile string       `json:"password_file,omitempty"`
	CredsFile    string       `json:"creds_file,omitempty"`
	NkeyFile     string       `json:"nkey_file,omitempty"`
	// ConnectTimeout bounds the wait for a first connection at start (and
	// for JetStream to answer); after that the client reconnects forever.
	ConnectTimeout Duration `json:"connect_timeout,omitempty"`
}

// NATS is a connection to JetStream, with the embedded server if one was
// started.
type NATS struct {
	Server *server.Server // nil when remote
	Conn   *nats.Conn
	JS     jetstream.JetStream
	// ClientURL is where other processes connect ("" if not listening).
	ClientURL string
	closed    chan struct{}
}

// StartNATS connects to JetStream, starting the embedded server if no URL is
// configured, and makes sure the event stream exists.
func StartNATS(ctx context.Context, cfg NATSConfig, log zerolog.Logger) (*NATS, error) {
	log = log.With().Str("component", "nats").Logger()
	n := &NATS{closed: make(chan struct{})}
	var copts []nats.Option
	copts = append(copts, nats.Name("ferry"), nats.MaxReconnects(-1),
		nats.ClosedHandler(func(*nats.Conn) { close(n.closed) }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Warn().Err(err).Str("subject", subj).Msg("nats async error")
		}))
	url := cfg.URL
	if url == "" {
		srv, err := startEmbedded(cfg, log)
		if err != nil {
			return nil, err
		}
		n.Server = srv
		if addr, ok := srv.Addr().(*net.TCPAddr); ok && addr != nil {
			n.ClientURL = fmt.Sprintf("nats://%s", net.JoinHostPort(addr.IP.String(), strconv.Itoa(addr.Port)))
		}
		copts = append(copts, nats.InProcessServer(srv))
	} else {
		n.ClientURL = url
	}
	nc, err := nats.Connect(url, copts...)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("nats: connect: %w", err)
	}
	n.Conn = nc
	if n.JS, err = jetstream.New(nc); err != nil {
		n.Close()
		return nil, fmt.Errorf("nats: jetstream: %w", err)
	}
	if err := events.EnsureStream(ctx, n.JS, events.StreamOptions{Replicas: cfg.Replicas}); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func startEmbedded(cfg NATSConfig, log zerolog.Logger) (*server.Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("nats: embedded server needs a data directory")
	}
	store := filepath.Join(cfg.DataDir, "jetstream")
	if err := os.MkdirAll(store, 0o700); err != nil {
		return nil, fmt.Errorf("nats: data dir: %w", err)
	}
	opts := &server.Options{}
	if cfg.ServerConfig != "" {
		if err := opts.ProcessConfigFile(cfg.ServerConfig); err != nil {
			return nil, fmt.Errorf("nats: embedded server config: %w", err)
		}
	}
	if opts.ServerName == "" {
		opts.ServerName = "ferry-embedded"
	}
	opts.JetStream, opts.NoSigs = true, true
	if opts.StoreDir == "" {
		opts.StoreDir = store
	}
	if !opts.SyncAlways && opts.SyncInterval == 0 {
		opts.SyncAlways = cfg.SyncAlways == nil || *cfg.SyncAlways
	}
	if opts.MaxPayload == 0 {
		opts.MaxPayload = 8 << 20
	}
	switch {
	case cfg.Listen == "" && cfg.ServerConfig != "":
		// The file's listen address (nats-server's default if it has none).
	case cfg.Listen == "none":
		opts.DontListen = true
	default:
		listen := cfg.Listen
		if listen == "" {
			listen = "127.0.0.1:4222"
		}
		host, port, err := net.SplitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("nats: listen address %q: %w", listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats: listen port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats: embedded server: %w", err)
	}
	srv.SetLoggerV2(natsLogger{log}, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats: embedded server not ready (is %s in use, or the store %s locked?)", cfg.Listen, opts.StoreDir)
	}
	return srv, nil
}

// Close drains the connection and stops the embedded server, waiting for it,
// so that the store is closed cleanly.
func (n *NATS) Close() {
	if n.Conn != nil {
		if err := n.Conn.Drain(); err == nil {
			select {
			case <-n.closed:
			case <-time.After(10 * time.Second):
			}
		}
		n.Conn.Close()
	}
	if n.Server != nil {
		n.Server.Shutdown()
		n.Server.WaitForShutdown()
	}
}

// natsLogger routes the embedded server's log to zerolog.
type natsLogger struct{ log zerolog.Logger }

func (l natsLogger) Noticef(f string, v ...any) { l.log.Debug().Msgf(f, v...) }
func (l natsLogger) Warnf(f string, v ...any)   { l.log.Warn().Msgf(f, v...) }
func (l natsLogger) Fatalf(f string, v ...any)  { l.log.Error().Msgf(f, v...) }
func (l natsLogger) Errorf(f string, v ...any)  { l.log.Error().Msgf(f, v...) }
func (l natsLogger) Debugf(f string, v ...any)  { l.log.Trace().Msgf(f, v...) }
func (l natsLogger) Tracef(f string, v ...any)  { l.log.Trace().Msgf(f, v...) }
