package services

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/agent"
	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/coordinator/notify"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// DevConfig configures the all-in-one stack. The zero value works: data under
// DefaultDataDir, coordinator on 127.0.0.1:7070, NATS on 127.0.0.1:4222, the
// agent writing under the user's home directory.
type DevConfig struct {
	DataDir string
	// HTTP is the coordinator's listen address (port 0: any free port).
	HTTP string
	// Vault is certvault's listen address (default 127.0.0.1:7071).
	Vault string
	NATS  NATSConfig
	// Root is the agent's root directory.
	Root    string
	AgentID string
	// DemoOrigin starts an HTTPS origin serving sample files on DemoAddr.
	DemoOrigin bool
	DemoAddr   string
	// OriginCAFiles are PEM files of extra CAs the agent trusts for origins.
	OriginCAFiles      []string
	AckWait            time.Duration
	ReconcileInterval  time.Duration
	CheckpointInterval time.Duration
	// Slots, MaxForeground and TimeSlice tune the agent's scheduler
	// (agent.Config); zero values are the defaults.
	Slots         int
	MaxForeground int
	TimeSlice     time.Duration
	// MinFreeBytes is the disk space the agent keeps free.
	MinFreeBytes int64
	// SharedRoot: Root is shared with other agents (agent.Config.SharedRoot).
	SharedRoot bool
	// IdleReadTimeout is how long a download may receive nothing before it
	// fails with ERROR_WINHTTP_TIMEOUT (default 60 s).
	IdleReadTimeout time.Duration
	// Limits and JobInactivityTimeout go to the coordinator.
	Limits               job.Limits
	JobInactivityTimeout time.Duration
}

// DevInfo is what a running dev stack tells its users (and the CLI, through
// dev.json in the data directory).
type DevInfo struct {
	CoordinatorURL string `json:"coordinator_url"`
	CertvaultURL   string `json:"certvault_url"`
	NATSURL        string `json:"nats_url,omitempty"`
	DemoOriginURL  string `json:"demo_origin_url,omitempty"`
	AgentID        string `json:"agent_id"`
	AgentRoot      string `json:"agent_root"`
	CredentialsDir string `json:"credentials_dir"`
	DataDir        string `json:"data_dir"`
	PID            int    `json:"pid"`
}

// DevInfoFile is the name of the file, in the data directory, that says where
// a running dev stack listens.
const DevInfoFile = "dev.json"

// DefaultDataDir is $FERRY_DATA_DIR, else $XDG_DATA_HOME/ferry, else
// ~/.local/share/ferry.
func DefaultDataDir() string {
	if d := os.Getenv("FERRY_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "ferry")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "ferry")
	}
	return filepath.Join(os.TempDir(), "ferry")
}

// Dev is a running all-in-one stack.
type Dev struct {
	info   DevInfo
	log    zerolog.Logger
	nats   *NATS
	lock   *os.File
	cancel context.CancelFunc
	group  *errgroup.Group
	ctx    context.Context
	once   sync.Once
	err    error
	coord  *coordinator.Service
	agent  *agent.Agent
}

// Agent is the stack's agent.
func (d *Dev) Agent() *agent.Agent { return d.agent }

// StartDev starts NATS (embedded), the coordinator, one agent and optionally
// the demo origin, and returns once all of them accept work.
func StartDev(ctx context.Context, cfg DevConfig, log zerolog.Logger) (_ *Dev, err error) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir()
	}
	if cfg.DataDir, err = filepath.Abs(cfg.DataDir); err != nil {
		return nil, err
	}
	if cfg.HTTP == "" {
		cfg.HTTP = "127.0.0.1:7070"
	}
	if cfg.Vault == "" {
		cfg.Vault = "127.0.0.1:7071"
	}
	if cfg.Root == "" {
		if cfg.Root, err = os.UserHomeDir(); err != nil {
			return nil, fmt.Errorf("dev: agent root: %w", err)
		}
	}
	if cfg.Root, err = filepath.Abs(cfg.Root); err != nil {
		return nil, err
	}
	if cfg.AgentID == "" {
		host, _ := os.Hostname()
		cfg.AgentID = "dev-" + sanitizeToken(host)
	}
	if cfg.NATS.DataDir == "" {
		cfg.NATS.DataDir = cfg.DataDir
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("dev: data dir: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	d := &Dev{log: log, lock: lock}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()

	if d.nats, err = StartNATS(ctx, cfg.NATS, log); err != nil {
		return nil, err
	}
	store, err := events.NewJetStreamStore(ctx, d.nats.JS)
	if err != nil {
		return nil, err
	}
	pki, err := loadDevPKI(identity.DefaultDir(cfg.DataDir))
	if err != nil {
		return nil, err
	}
	coordCert, err := pki.issue(identity.RoleService, "coordinator", "localhost", "127.0.0.1", "::1")
	if err != nil {
		return nil, err
	}
	keyring, err := loadDevKeyring(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	vaultCert, err := pki.issue(identity.RoleService, "certvault", "localhost", "127.0.0.1", "::1")
	if err != nil {
		return nil, err
	}
	vault, vaultSrv, err := vaultServer(ctx, d.nats.JS, store, keyring, pki.auth, vaultCert, log)
	if err != nil {
		return nil, err
	}
	// In the all-in-one stack the coordinator checks job certificates and
	// stores write-only header values in the vault directly (same process,
	// same JetStream).
	coord, err := coordinator.New(ctx, coordinator.Config{ReconcileInterval: cfg.ReconcileInterval, Auth: pki.auth, Certs: vault, Headers: vault,
		Limits: cfg.Limits, JobInactivityTimeout: cfg.JobInactivityTimeout}, log, d.nats.JS, store)
	if err != nil {
		return nil, err
	}
	vaultLn, err := net.Listen("tcp", cfg.Vault)
	if err != nil {
		return nil, fmt.Errorf("dev: certvault listen %s: %w", cfg.Vault, err)
	}
	d.info.CertvaultURL = "https://" + vaultLn.Addr().String()
	d.coord = coord

	// The demo origin gets a certificate from a throwaway CA that only this
	// stack's agent trusts.
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	for _, f := range cfg.OriginCAFiles {
		pemBytes, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("dev: origin CA: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("dev: origin CA %s: no certificate found", f)
		}
	}
	var originLn net.Listener
	var originTLS *tls.Config
	if cfg.DemoOrigin {
		// A CA of its own, trusted only by this stack's agent for origins.
		originCA, err := identity.NewCA("origin.ferry.dev")
		if err != nil {
			return nil, err
		}
		cert, err := (&devPKI{ca: originCA}).issue(identity.RoleService, "demo-origin", "localhost", "127.0.0.1", "::1")
		if err != nil {
			return nil, err
		}
		roots.AddCert(originCA.Cert)
		originTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		addr := cfg.DemoAddr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		if originLn, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("dev: demo origin: %w", err)
		}
		d.info.DemoOriginURL = "https://localhost:" + strconv.Itoa(originLn.Addr().(*net.TCPAddr).Port)
	}

	// The agent's own identity: certvault releases job keys to it only.
	agentCert, err := pki.issue(identity.RoleAgent, cfg.AgentID)
	if err != nil {
		return nil, err
	}
	releases := vaultReleases{tls: identity.ClientTLSConfig(agentCert, pki.ca.Pool()), url: d.info.CertvaultURL}
	ag, err := agent.New(agent.Config{
		ID: cfg.AgentID, Principal: identity.SPIFFEID{TrustDomain: pki.ca.TrustDomain(), Role: identity.RoleAgent, Name: cfg.AgentID}.String(),
		Root: cfg.Root, AckWait: cfg.AckWait, Slots: cfg.Slots, MaxForeground: cfg.MaxForeground, TimeSlice: cfg.TimeSlice, MinFreeBytes: cfg.MinFreeBytes, SharedRoot: cfg.SharedRoot,
		CheckpointInterval: cfg.CheckpointInterval,
		Client:             download.ClientOptions{RootCAs: roots, IdleReadTimeout: cfg.IdleReadTimeout},
		ClientCerts:        releases,
		WriteOnlyHeaders:   releases,
	}, log, d.nats.JS, store)
	if err != nil {
		return nil, err
	}
	d.agent = ag

	// Notifications: webhooks are verified like origins (system roots plus
	// the origin CAs), signed with the installation's secret.
	secret, err := notifySecret(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	notifier, err := notify.New(notify.Config{Secret: secret, RootCAs: roots}, log, d.nats.JS, store)
	if err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", cfg.HTTP)
	if err != nil {
		return nil, fmt.Errorf("dev: coordinator listen %s: %w", cfg.HTTP, err)
	}
	d.info.CoordinatorURL = "https://" + ln.Addr().String()
	d.info.CredentialsDir = pki.dir
	d.info.NATSURL = d.nats.ClientURL
	d.info.AgentID, d.info.AgentRoot, d.info.DataDir, d.info.PID = cfg.AgentID, cfg.Root, cfg.DataDir, os.Getpid()

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	g, gctx := errgroup.WithContext(runCtx)
	d.group, d.ctx = g, gctx
	api := &http.Server{Handler: coord.Handler(), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return gctx }}
	g.Go(func() error { return coord.Run(gctx) })
	g.Go(func() error { return ag.Run(gctx) })
	g.Go(func() error { return notifier.Run(gctx) })
	g.Go(func() error { return serve(gctx, api, ln, identity.ServerTLSConfig(coordCert, pki.ca.Pool())) })
	g.Go(func() error { return serve(gctx, vaultSrv, vaultLn, vaultSrv.TLSConfig) })
	if originLn != nil {
		origin := &http.Server{Handler: DemoOrigin(), ReadHeaderTimeout: 10 * time.Second, TLSConfig: originTLS}
		g.Go(func() error { return serve(gctx, origin, originLn, originTLS) })
	}
	if err := writeJSONFile(filepath.Join(cfg.DataDir, DevInfoFile), d.info); err != nil {
		return nil, err
	}
	return d, nil
}

// serve runs srv on ln until ctx ends, then shuts it down gracefully.
func serve(ctx context.Context, srv *http.Server, ln net.Listener, tlsCfg *tls.Config) error {
	errc := make(chan error, 1)
	go func() {
		if tlsCfg != nil {
			errc <- srv.Serve(tls.NewListener(ln, tlsCfg))
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	}
}

// Info says where the stack listens.
func (d *Dev) Info() DevInfo { return d.info }

// Coordinator exposes the coordinator (tests wait on its projector).
func (d *Dev) Coordinator() *coordinator.Service { return d.coord }

// NATS exposes the JetStream connection.
func (d *Dev) NATS() *NATS { return d.nats }

// Done is closed when a component failed or the stack was closed.
func (d *Dev) Done() <-chan struct{} { return d.ctx.Done() }

// Close stops every component, waits for them, and closes the store.
func (d *Dev) Close() error {
	d.once.Do(func() {
		if d.cancel != nil {
			d.cancel()
			d.err = d.group.Wait()
		}
		if d.nats != nil {
			d.nats.Close()
		}
		if d.info.DataDir != "" {
			_ = os.Remove(filepath.Join(d.info.DataDir, DevInfoFile))
		}
		if d.lock != nil {
			d.lock.Close()
		}
	})
	if errors.Is(d.err, context.Canceled) {
		return nil
	}
	return d.err
}

// lockDataDir makes sure one stack at a time uses a data directory.
func lockDataDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dev: lock data dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("dev: data directory %s is in use by another ferry process (stop it, or use --data-dir)", dir)
	}
	return f, nil
}

// ReadDevInfo reads dev.json from a data directory.
func ReadDevInfo(dataDir string) (DevInfo, error) {
	var info DevInfo
	b, err := os.ReadFile(filepath.Join(dataDir, DevInfoFile))
	if err != nil {
		return info, err
	}
	return info, json.Unmarshal(b, &info)
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func sanitizeToken(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '-'
	}, s)
	if s == "" {
		s = "local"
	}
	return s
}

// NotifySecretFile holds, in the data directory, the key that signs
// webhook notifications (32 random bytes, hex), unless FERRY_NOTIFY_SECRET
// gives one.
const NotifySecretFile = "notify.secret"

// notifySecret returns FERRY_NOTIFY_SECRET, or the data directory's secret,
// made on first use.
func notifySecret(dataDir string) (notify.Secret, error) {
	if v := os.Getenv("FERRY_NOTIFY_SECRET"); v != "" {
		return notify.Secret(v), nil
	}
	path := filepath.Join(dataDir, NotifySecretFile)
	if b, err := os.ReadFile(path); err == nil {
		return notify.Secret(strings.TrimSpace(string(b))), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("dev: notify secret: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	v := hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("dev: notify secret: %w", err)
	}
	return notify.Secret(v), nil
}
