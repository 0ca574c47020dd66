package services

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator/notify"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Role defaults.
const (
	DefaultCoordinatorListen = ":7070"
	DefaultCertvaultListen   = ":7071"
	DefaultDrainTimeout      = 20 * time.Second
	// DefaultAgentSlots and the other agent defaults are agent.Config's.
	DefaultAgentSlots         = 4
	DefaultAgentMaxForeground = 4
)

// RoleCommon are the settings every role has.
type RoleCommon struct {
	// ID names this instance: the agent's ID (a stable subject token: its
	// staged files are found again by it), else a name for logs and the
	// NATS connection (default: the host name).
	ID string `json:"id,omitempty"`
	// DataDir holds what the role keeps on disk (the embedded NATS store;
	// an agent's default root).
	DataDir string    `json:"data_dir,omitempty"`
	Log     LogConfig `json:"log"`
	// HealthAddr serves GET /healthz and GET /metrics over plain HTTP (""
	// for none; keep it on loopback or an internal network).
	HealthAddr string     `json:"health_addr,omitempty"`
	NATS       NATSConfig `json:"nats"`
	// TLS is the role's identity from the deployment's CA: its server
	// certificate (coordinator, certvault), the client certificate it
	// presents to certvault (coordinator, agent), and the CA it trusts.
	TLS TLSFiles `json:"tls"`
}

// TLSFiles name a PEM identity and the CA file that verifies peers.
type TLSFiles struct {
	CAFile   string `json:"ca_file,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
}

func (c *RoleCommon) settings(s *settings) {
	s.add("id", "id", "", "instance name; for agents the stable agent ID (default: the host name)", strValue{&c.ID})
	s.derived()
	s.add("data_dir", "data-dir", "", "data directory: the embedded NATS store, an agent's default root (default: $FERRY_DATA_DIR, else ~/.local/share/ferry)", strValue{&c.DataDir})
	s.derived()
	s.add("log.level", "log-level", "", "log level: trace, debug, info, warn, error", strValue{&c.Log.Level})
	s.add("log.format", "log-format", "", "log format: json or console (default: console on a terminal, else json)", strValue{&c.Log.Format})
	s.add("health_addr", "health-addr", "", `address of the health and metrics listener (GET /healthz, /metrics; plain HTTP; "" for none, port 0 for any)`, strValue{&c.HealthAddr})
	n := &c.NATS
	s.add("nats.url", "nats-url", "", "NATS servers, comma-separated (tls://n1:4222,tls://n2:4222); not with --nats-embedded", strValue{&n.URL})
	s.add("nats.embedded", "nats-embedded", "", "run a NATS JetStream server in this process (single-host installs)", boolValue{&n.Embedded})
	s.add("nats.listen", "nats-listen", "", `embedded server's client address ("none": in-process only; default 127.0.0.1:4222)`, strValue{&n.Listen})
	s.add("nats.server_config", "nats-server-config", "", "nats-server config file for the embedded server (tls, authorization/accounts, cluster)", strValue{&n.ServerConfig})
	s.add("nats.data_dir", "nats-data-dir", "", "embedded server's store directory (default: the data directory)", strValue{&n.DataDir})
	s.derived()
	s.add("nats.sync_always", "nats-sync-always", "", "embedded server fsyncs every write before acknowledging it (sync_interval: always)", boolPtrValue{&n.SyncAlways})
	s.add("nats.replicas", "nats-replicas", "", "replicas of ferry's streams and buckets: 1 on one server, 3 on a 3-node cluster", intValue{&n.Replicas})
	s.add("nats.ca_file", "nats-ca", "", "CA (PEM) that verifies the NATS servers", strValue{&n.CAFile})
	s.add("nats.cert_file", "nats-cert", "", "client certificate (PEM) for NATS mutual TLS", strValue{&n.CertFile})
	s.add("nats.key_file", "nats-key", "", "key (PEM) of --nats-cert", strValue{&n.KeyFile})
	s.add("nats.user", "nats-user", "", "NATS user (with FERRY_NATS_PASSWORD or --nats-password-file)", strValue{&n.User})
	s.add("nats.password", "", "FERRY_NATS_PASSWORD", "NATS password of nats.user", secretValue{&n.Password})
	s.add("nats.password_file", "nats-password-file", "", "file holding the NATS password", strValue{&n.PasswordFile})
	s.add("nats.creds_file", "nats-creds", "", "NATS credentials file (user JWT and nkey seed)", strValue{&n.CredsFile})
	s.add("nats.nkey_file", "nats-nkey", "", "NATS nkey seed file", strValue{&n.NkeyFile})
	s.add("nats.connect_timeout", "nats-connect-timeout", "", "how long to wait for NATS at start before failing (then: reconnect forever)", durValue{&n.ConnectTimeout})
	s.add("tls.ca_file", "ca-cert", "", "CA (PEM) of the deployment: verifies clients and ferry servers", strValue{&c.TLS.CAFile})
	s.add("tls.cert_file", "cert", "", "this role's certificate (PEM) from the deployment's CA", strValue{&c.TLS.CertFile})
	s.add("tls.key_file", "key", "", "key (PEM) of --cert", strValue{&c.TLS.KeyFile})
}

func (c *RoleCommon) applyDefaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = sanitizeToken(host)
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir()
	}
	if c.NATS.URL == "" && !c.NATS.Embedded {
		c.NATS.URL = DefaultNATSURL
	}
	if c.NATS.DataDir == "" {
		c.NATS.DataDir = c.DataDir
	}
	if c.NATS.Replicas == 0 {
		c.NATS.Replicas = 1
	}
	if c.NATS.ConnectTimeout == 0 {
		c.NATS.ConnectTimeout = Duration(DefaultConnectTimeout)
	}
}

// roleRuntime is what preparing a role's configuration loaded from the
// files it names.
type roleRuntime struct {
	nats  natsClient
	cert  *tls.Certificate // tls.cert_file, if given
	roots *x509.CertPool   // tls.ca_file, if given
	// caTrustDomain is the trust domain of tls.ca_file's CA ("" if it has
	// none).
	caTrustDomain string
}

// prepare checks the common settings and loads their files. needIdentity
// says whether this role cannot run without tls.cert_file, key_file and
// ca_file, and why.
func (c *RoleCommon) prepare(needIdentity string) (roleRuntime, []error) {
	var rt roleRuntime
	var ps []error
	if !events.ValidID(c.ID) {
		ps = append(ps, fmt.Errorf("id %q must be one token of letters, digits, '-' and '_'", c.ID))
	}
	if c.Log.Level != "" {
		if _, err := zerolog.ParseLevel(strings.ToLower(c.Log.Level)); err != nil {
			ps = append(ps, fmt.Errorf("log.level %q: not one of trace, debug, info, warn, error", c.Log.Level))
		}
	}
	if f := c.Log.Format; f != "" && f != "json" && f != "console" {
		ps = append(ps, fmt.Errorf("log.format %q: not json or console", f))
	}
	if c.HealthAddr != "" {
		if _, _, err := net.SplitHostPort(c.HealthAddr); err != nil {
			ps = append(ps, fmt.Errorf("health_addr %q: %v", c.HealthAddr, err))
		}
	}
	var nps []error
	rt.nats, nps = c.NATS.prepareClient()
	ps = append(ps, nps...)

	id := c.TLS
	switch {
	case id.CertFile == "" && id.KeyFile == "":
		if needIdentity != "" {
			ps = append(ps, fmt.Errorf("tls.cert_file and tls.key_file (--cert, --key) are required: %s", needIdentity))
		}
	case id.CertFile == "" || id.KeyFile == "":
		ps = append(ps, errors.New("tls.cert_file and tls.key_file (--cert, --key) go together"))
	default:
		if cert, errs := loadKeyPairFiles("tls", id.CertFile, id.KeyFile); len(errs) > 0 {
			ps = append(ps, errs...)
		} else {
			rt.cert = &cert
		}
	}
	switch {
	case id.CAFile != "":
		pool, td, err := loadCAFile("tls.ca_file", id.CAFile)
		if err != nil {
			ps = append(ps, err)
		}
		rt.roots, rt.caTrustDomain = pool, td
	case needIdentity != "":
		ps = append(ps, fmt.Errorf("tls.ca_file (--ca-cert) is required: %s", needIdentity))
	}
	return rt, ps
}

// prepareClient checks the NATS settings and builds the client's TLS and
// credential options.
func (n *NATSConfig) prepareClient() (natsClient, []error) {
	var cl natsClient
	var ps []error
	if n.Embedded && n.URL != "" {
		ps = append(ps, errors.New("nats.url and nats.embedded exclude each other: connect to servers, or run one in this process"))
	}
	if !n.Embedded {
		for _, u := range strings.Split(n.URL, ",") {
			if err := checkNATSURL(strings.TrimSpace(u)); err != nil {
				ps = append(ps, err)
			}
		}
		for _, set := range []struct{ key, v string }{{"nats.listen", n.Listen}, {"nats.server_config", n.ServerConfig}} {
			if set.v != "" {
				ps = append(ps, fmt.Errorf("%s applies to the embedded server only (nats.embedded: true)", set.key))
			}
		}
	}
	if n.Embedded {
		if n.Listen != "" && n.Listen != "none" {
			if _, _, err := net.SplitHostPort(n.Listen); err != nil {
				ps = append(ps, fmt.Errorf("nats.listen %q: %v", n.Listen, err))
			}
		}
		if n.ServerConfig != "" {
			if _, err := server.ProcessConfigFile(n.ServerConfig); err != nil {
				ps = append(ps, fmt.Errorf("nats.server_config: %s", strings.TrimSpace(err.Error())))
			}
		} else if n.Replicas > 1 {
			ps = append(ps, fmt.Errorf("nats.replicas %d needs a cluster: a lone embedded server holds one replica (give nats.server_config a cluster {} block, or use replicas 1)", n.Replicas))
		}
		if n.DataDir == "" {
			ps = append(ps, errors.New("nats.data_dir: the embedded server needs a data directory"))
		}
	}
	if n.Replicas < 0 || n.Replicas > 5 { // 0: the default, 1
		ps = append(ps, fmt.Errorf("nats.replicas %d: must be 1 to 5 (3 on a 3-node cluster)", n.Replicas))
	}
	if n.ConnectTimeout < 0 { // 0: the default
		ps = append(ps, fmt.Errorf("nats.connect_timeout %s: must be positive", n.ConnectTimeout))
	}

	// TLS: any file turns it on.
	if n.CAFile != "" || n.CertFile != "" || n.KeyFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if n.CAFile != "" {
			pool, _, err := loadCAFile("nats.ca_file", n.CAFile)
			if err != nil {
				ps = append(ps, err)
			}
			tc.RootCAs = pool
		}
		switch {
		case n.CertFile == "" && n.KeyFile == "":
		case n.CertFile == "" || n.KeyFile == "":
			ps = append(ps, errors.New("nats.cert_file and nats.key_file (--nats-cert, --nats-key) go together"))
		default:
			cert, errs := loadKeyPairFiles("nats", n.CertFile, n.KeyFile)
			if len(errs) > 0 {
				ps = append(ps, errs...)
			} else {
				tc.Certificates = []tls.Certificate{cert}
			}
		}
		cl.tls = tc
	}

	// Credentials: one kind at most.
	kinds := 0
	for _, set := range []bool{n.User != "" || n.Password != "" || n.PasswordFile != "", n.CredsFile != "", n.NkeyFile != ""} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		ps = append(ps, errors.New("nats credentials: give one of nats.user (with a password), nats.creds_file, nats.nkey_file"))
	}
	switch {
	case n.Password != "" && n.PasswordFile != "":
		ps = append(ps, errors.New("nats.password (FERRY_NATS_PASSWORD) and nats.password_file exclude each other"))
	case n.User == "" && (n.Password != "" || n.PasswordFile != ""):
		ps = append(ps, errors.New("a NATS password needs nats.user (--nats-user)"))
	case n.User != "":
		pw := string(n.Password)
		if n.PasswordFile != "" {
			b, err := os.ReadFile(n.PasswordFile)
			if err != nil {
				ps = append(ps, fmt.Errorf("nats.password_file: %v", err))
			}
			pw = strings.TrimRight(string(b), "\r\n")
		}
		if pw == "" && n.PasswordFile == "" {
			ps = append(ps, fmt.Errorf("nats.user %q has no password: set FERRY_NATS_PASSWORD or nats.password_file", n.User))
		}
		cl.creds = append(cl.creds, nats.UserInfo(n.User, pw))
	}
	if n.CredsFile != "" {
		if _, err := os.Stat(n.CredsFile); err != nil {
			ps = append(ps, fmt.Errorf("nats.creds_file: %v", err))
		}
		cl.creds = append(cl.creds, nats.UserCredentials(n.CredsFile))
	}
	if n.NkeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(n.NkeyFile)
		if err != nil {
			ps = append(ps, fmt.Errorf("nats.nkey_file: %v", err))
		} else {
			cl.creds = append(cl.creds, opt)
		}
	}
	return cl, ps
}

func checkNATSURL(s string) error {
	if s == "" {
		return errors.New("nats.url: empty server in the list")
	}
	raw := s
	if !strings.Contains(s, "://") {
		raw = "nats://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("nats.url %q: %v", redactURL(s), err)
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Errorf("nats.url %q: scheme %q is not nats, tls, ws or wss", redactURL(s), u.Scheme)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("nats.url %q: no host", redactURL(s))
	}
	return nil
}

// loadKeyPairFiles loads a certificate and its key; prefix names the
// settings ("tls" for tls.cert_file and tls.key_file).
func loadKeyPairFiles(prefix, certFile, keyFile string) (tls.Certificate, []error) {
	var ps []error
	for _, f := range []struct{ key, file string }{{prefix + ".cert_file", certFile}, {prefix + ".key_file", keyFile}} {
		if _, err := os.Stat(f.file); err != nil {
			ps = append(ps, fmt.Errorf("%s: %v", f.key, err))
		}
	}
	if len(ps) > 0 {
		return tls.Certificate{}, ps
	}
	c, err := identity.LoadKeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, []error{fmt.Errorf("%s.cert_file, %s.key_file: %v", prefix, prefix, err)}
	}
	if time.Now().After(c.Leaf.NotAfter) {
		return c, []error{fmt.Errorf("%s.cert_file: certificate %s expired at %s", prefix, certFile, c.Leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	return c, nil
}

// loadCAFile reads a PEM file of CA certificates; the trust domain is that
// of the first certificate's single spiffe:// URI SAN, if it has one.
func loadCAFile(key, file string) (*x509.CertPool, string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %v", key, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, "", fmt.Errorf("%s: %s holds no PEM certificate", key, file)
	}
	td := ""
	if blk, _ := pem.Decode(b); blk != nil {
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil && len(c.URIs) == 1 && c.URIs[0].Scheme == identity.SPIFFEScheme {
			td = c.URIs[0].Host
		}
	}
	return pool, td, nil
}

func loadCAFiles(key string, files []string) (*x509.CertPool, []error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	var ps []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			ps = append(ps, fmt.Errorf("%s: %v", key, err))
			continue
		}
		if !roots.AppendCertsFromPEM(b) {
			ps = append(ps, fmt.Errorf("%s: %s holds no PEM certificate", key, f))
		}
	}
	return roots, ps
}

func checkListen(key, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s %q: %v", key, addr, err)
	}
	return nil
}

func checkHTTPSURL(key, s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%s %q: must be an https:// URL", key, s)
	}
	return nil
}

func positive(key string, d Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s %s: must be positive", key, d)
	}
	return nil
}

// roleMap builds the role map of a server role: the configured trust
// domain, else the CA's.
func roleMap(rm identity.RoleMap, rt roleRuntime) (identity.RoleMap, []error) {
	var ps []error
	if rm.TrustDomain == "" {
		rm.TrustDomain = rt.caTrustDomain
	}
	if rm.TrustDomain == "" && rt.roots != nil {
		ps = append(ps, errors.New("roles.trust_domain (--trust-domain): tls.ca_file's CA names no spiffe:// trust domain, so give it"))
	}
	if err := rm.Validate(); err != nil {
		ps = append(ps, err)
	}
	return rm, ps
}

// --- coordinator -------------------------------------------------------------

// CoordinatorConfig configures `ferry coordinator run`: the job API over
// HTTPS, the read-model projector and the clock (retries, deadlines,
// re-dispatch), and the notifier.
type CoordinatorConfig struct {
	RoleCommon
	// Listen is the API's HTTPS address (default ":7070").
	Listen string `json:"listen,omitempty"`
	// CertvaultURL is certvault's HTTPS API, where job client certificates
	// are checked ("" : setting one answers ERROR_SERVICE_UNAVAILABLE).
	CertvaultURL string `json:"certvault_url,omitempty"`
	// Roles maps principals to roles (trust domain default: the CA's).
	Roles                identity.RoleMap `json:"roles"`
	ReconcileInterval    Duration         `json:"reconcile_interval,omitempty"`
	JobInactivityTimeout Duration         `json:"job_inactivity_timeout,omitempty"`
	Limits               LimitsConfig     `json:"limits"`
	Notify               NotifyConfig     `json:"notify"`
}

// LimitsConfig are the BITS limits the coordinator enforces.
type LimitsConfig struct {
	MaxFilesPerJob   int `json:"max_files_per_job,omitempty"`
	MaxRangesPerFile int `json:"max_ranges_per_file,omitempty"`
	MaxJobsPerUser   int `json:"max_jobs_per_user,omitempty"`
}

// NotifyConfig configures BITS notifications (webhooks).
type NotifyConfig struct {
	// Disabled turns notifications off.
	Disabled bool `json:"disabled,omitempty"`
	// Secret signs every notification (at least 16 bytes; every
	// coordinator of a deployment uses the same one). SecretFile holds it
	// instead.
	Secret     SecretString `json:"secret,omitempty"`
	SecretFile string       `json:"secret_file,omitempty"`
	// CAFiles are extra CAs (PEM) that verify webhooks, besides the
	// system's.
	CAFiles []string `json:"ca_files,omitempty"`
	// Timeout bounds one delivery attempt (default 10 s).
	Timeout Duration `json:"timeout,omitempty"`
}

// Role implements RoleConfig.
func (c *CoordinatorConfig) Role() string { return "coordinator" }

// Settings implements RoleConfig.
func (c *CoordinatorConfig) Settings() []Setting {
	var s settings
	c.RoleCommon.settings(&s)
	s.add("listen", "listen", "", "HTTPS address of the job API", strValue{&c.Listen})
	s.add("certvault_url", "certvault-url", "", "certvault's HTTPS URL, where job client certificates are checked", strValue{&c.CertvaultURL})
	s.add("roles.trust_domain", "trust-domain", "", "SPIFFE trust domain whose identities get roles (default: the CA's)", strValue{&c.Roles.TrustDomain})
	s.add("reconcile_interval", "reconcile-interval", "", "how often lost dispatches, due retries and deadlines are checked", durValue{&c.ReconcileInterval})
	s.add("job_inactivity_timeout", "job-inactivity-timeout", "", "jobs nobody touched for this long are cancelled", durValue{&c.JobInactivityTimeout})
	s.add("limits.max_files_per_job", "max-files-per-job", "", "BG_E_TOO_MANY_FILES_IN_JOB beyond this", intValue{&c.Limits.MaxFilesPerJob})
	s.add("limits.max_ranges_per_file", "max-ranges-per-file", "", "BG_E_TOO_MANY_RANGES_IN_FILE beyond this", intValue{&c.Limits.MaxRangesPerFile})
	s.add("limits.max_jobs_per_user", "max-jobs-per-user", "", "BG_E_TOO_MANY_JOBS_PER_USER beyond this many unfinished jobs", intValue{&c.Limits.MaxJobsPerUser})
	s.add("notify.disabled", "notify-disabled", "", "send no notifications", boolValue{&c.Notify.Disabled})
	s.add("notify.secret", "", "FERRY_NOTIFY_SECRET", "key that signs notifications (≥ 16 bytes; the same on every coordinator)", secretValue{&c.Notify.Secret})
	s.add("notify.secret_file", "notify-secret-file", "", "file holding the key that signs notifications", strValue{&c.Notify.SecretFile})
	s.add("notify.ca_files", "notify-ca", "", "extra CA (PEM) that verifies webhooks (repeatable)", listValue{&c.Notify.CAFiles})
	s.add("notify.timeout", "notify-timeout", "", "bound of one notification attempt", durValue{&c.Notify.Timeout})
	return s
}

func (c *CoordinatorConfig) applyDefaults() {
	c.RoleCommon.applyDefaults()
	if c.Listen == "" {
		c.Listen = DefaultCoordinatorListen
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = Duration(15 * time.Second)
	}
	if c.JobInactivityTimeout == 0 {
		c.JobInactivityTimeout = Duration(job.DefaultJobInactivityTimeout)
	}
	if c.Limits.MaxFilesPerJob == 0 {
		c.Limits.MaxFilesPerJob = job.DefaultMaxFilesPerJob
	}
	if c.Limits.MaxRangesPerFile == 0 {
		c.Limits.MaxRangesPerFile = job.DefaultMaxRangesPerFile
	}
	if c.Limits.MaxJobsPerUser == 0 {
		c.Limits.MaxJobsPerUser = job.DefaultMaxJobsPerUser
	}
	if c.Notify.Timeout == 0 {
		c.Notify.Timeout = Duration(10 * time.Second)
	}
}

type coordinatorRuntime struct {
	roleRuntime
	roles       identity.RoleMap
	secret      notify.Secret
	notifyRoots *x509.CertPool
}

func (c *CoordinatorConfig) prepare() (coordinatorRuntime, []error) {
	var rt coordinatorRuntime
	var ps []error
	rt.roleRuntime, ps = c.RoleCommon.prepare("the coordinator serves its API over HTTPS and identifies callers by their certificates")
	if err := checkListen("listen", c.Listen); err != nil {
		ps = append(ps, err)
	}
	if c.CertvaultURL != "" {
		if err := checkHTTPSURL("certvault_url", c.CertvaultURL); err != nil {
			ps = append(ps, err)
		}
	}
	var rps []error
	rt.roles, rps = roleMap(c.Roles, rt.roleRuntime)
	ps = append(ps, rps...)
	if err := positive("reconcile_interval", c.ReconcileInterval); err != nil {
		ps = append(ps, err)
	}
	for _, l := range []struct {
		key string
		v   int
	}{{"limits.max_files_per_job", c.Limits.MaxFilesPerJob}, {"limits.max_ranges_per_file", c.Limits.MaxRangesPerFile}, {"limits.max_jobs_per_user", c.Limits.MaxJobsPerUser}} {
		if l.v < 0 {
			ps = append(ps, fmt.Errorf("%s %d: must not be negative", l.key, l.v))
		}
	}
	if !c.Notify.Disabled {
		secret := []byte(c.Notify.Secret)
		switch {
		case c.Notify.Secret != "" && c.Notify.SecretFile != "":
			ps = append(ps, errors.New("notify.secret (FERRY_NOTIFY_SECRET) and notify.secret_file exclude each other"))
		case c.Notify.SecretFile != "":
			b, err := os.ReadFile(c.Notify.SecretFile)
			if err != nil {
				ps = append(ps, fmt.Errorf("notify.secret_file: %v", err))
			}
			secret = []byte(strings.TrimSpace(string(b)))
		}
		switch {
		case len(secret) == 0 && c.Notify.SecretFile == "":
			ps = append(ps, errors.New("notify: a signing secret is required: set FERRY_NOTIFY_SECRET or notify.secret_file (--notify-secret-file), or notify.disabled"))
		case len(secret) > 0 && len(secret) < 16:
			ps = append(ps, fmt.Errorf("notify secret: %d bytes is too short; use at least 16 (32 random bytes recommended)", len(secret)))
		}
		rt.secret = notify.Secret(secret)
		var cps []error
		rt.notifyRoots, cps = loadCAFiles("notify.ca_files", c.Notify.CAFiles)
		ps = append(ps, cps...)
		if err := positive("notify.timeout", c.Notify.Timeout); err != nil {
			ps = append(ps, err)
		}
	}
	return rt, ps
}

func (c *CoordinatorConfig) problems() []error { _, ps := c.prepare(); return ps }

// --- certvault ---------------------------------------------------------------

// CertvaultConfig configures `ferry certvault run`: the certificate store
// API and the key release endpoint over HTTPS (TLS 1.3, client
// certificates).
type CertvaultConfig struct {
	RoleCommon
	// Listen is the HTTPS address (default ":7071").
	Listen string `json:"listen,omitempty"`
	// Roles maps principals to roles. To let a coordinator that runs as a
	// separate process check certificates in owners' own stores, give its
	// identity the admin role here (docs/operations.md).
	Roles identity.RoleMap `json:"roles"`
	// KeyringFile holds the key-encryption keyring (mode 0600); else
	// KEK (FERRY_VAULT_KEK) is the keyring.
	KeyringFile string       `json:"keyring_file,omitempty"`
	KEK         SecretString `json:"kek,omitempty"`
}

// Role implements RoleConfig.
func (c *CertvaultConfig) Role() string { return "certvault" }

// Settings implements RoleConfig.
func (c *CertvaultConfig) Settings() []Setting {
	var s settings
	c.RoleCommon.settings(&s)
	s.add("listen", "listen", "", "HTTPS address of the store API and the release endpoint (TLS 1.3)", strValue{&c.Listen})
	s.add("roles.trust_domain", "trust-domain", "", "SPIFFE trust domain whose identities get roles (default: the CA's)", strValue{&c.Roles.TrustDomain})
	s.add("keyring_file", "keyring-file", "", "key-encryption keyring file (mode 0600; rotate-key writes new keys to it)", strValue{&c.KeyringFile})
	s.add("kek", "", certvault.EnvKEK, `key-encryption keyring "1:<base64 32 bytes>[,2:…]" when there is no keyring file`, secretValue{&c.KEK})
	return s
}

func (c *CertvaultConfig) applyDefaults() {
	c.RoleCommon.applyDefaults()
	if c.Listen == "" {
		c.Listen = DefaultCertvaultListen
	}
}

type certvaultRuntime struct {
	roleRuntime
	roles   identity.RoleMap
	keyring *certvault.Keyring
}

func (c *CertvaultConfig) prepare() (certvaultRuntime, []error) {
	var rt certvaultRuntime
	var ps []error
	rt.roleRuntime, ps = c.RoleCommon.prepare("certvault serves HTTPS and releases keys only to verified agents")
	if err := checkListen("listen", c.Listen); err != nil {
		ps = append(ps, err)
	}
	var rps []error
	rt.roles, rps = roleMap(c.Roles, rt.roleRuntime)
	ps = append(ps, rps...)
	var err error
	switch {
	case c.KeyringFile != "" && c.KEK != "":
		ps = append(ps, fmt.Errorf("keyring_file and %s exclude each other", certvault.EnvKEK))
	case c.KeyringFile != "":
		rt.keyring, err = certvault.LoadKeyringFile(c.KeyringFile)
	case c.KEK != "":
		rt.keyring, err = certvault.KeyringFromEnv(func(string) string { return string(c.KEK) })
	default:
		err = fmt.Errorf("certvault needs its key-encryption keyring: keyring_file (--keyring-file) or %s", certvault.EnvKEK)
	}
	if err != nil {
		ps = append(ps, err)
	}
	return rt, ps
}

func (c *CertvaultConfig) problems() []error { _, ps := c.prepare(); return ps }

// --- agent -------------------------------------------------------------------

// AgentConfig configures `ferry agent run`: one worker of a pool.
type AgentConfig struct {
	RoleCommon
	Pool string `json:"pool,omitempty"`
	// Root is the directory every file is written under (default
	// <data_dir>/files).
	Root          string   `json:"root,omitempty"`
	Slots         int      `json:"slots,omitempty"`
	MaxForeground int      `json:"max_foreground,omitempty"`
	TimeSlice     Duration `json:"time_slice,omitempty"`
	AckWait       Duration `json:"ack_wait,omitempty"`
	// CheckpointInterval and CheckpointBytes: a progress checkpoint at
	// most this often, or after this many bytes.
	CheckpointInterval Duration `json:"checkpoint_interval,omitempty"`
	CheckpointBytes    int64    `json:"checkpoint_bytes,omitempty"`
	MinFreeBytes       int64    `json:"min_free_bytes,omitempty"`
	IdleReadTimeout    Duration `json:"idle_read_timeout,omitempty"`
	// SharedRoot: root is shared storage mounted by every agent of the
	// pool at the same path (agent.Config.SharedRoot).
	SharedRoot bool `json:"shared_root,omitempty"`
	// Bandwidth are the limits the agent starts with (the pool's setting
	// replaces them at run time).
	Bandwidth dispatch.Bandwidth `json:"bandwidth"`
	// OriginCAFiles are extra CAs (PEM) trusted for origins, besides the
	// system's.
	OriginCAFiles []string `json:"origin_ca_files,omitempty"`
	// CertvaultURL is where job client certificates are released ("" :
	// jobs that need one fail as if they had none).
	CertvaultURL string `json:"certvault_url,omitempty"`
	// DrainTimeout bounds the graceful stop: after SIGTERM the agent takes
	// no new work, stops its transfers at a checkpoint and hands their
	// dispatches back, and exits at the latest after this long.
	DrainTimeout Duration `json:"drain_timeout,omitempty"`
}

// Role implements RoleConfig.
func (c *AgentConfig) Role() string { return "agent" }

// Settings implements RoleConfig.
func (c *AgentConfig) Settings() []Setting {
	var s settings
	c.RoleCommon.settings(&s)
	s.add("pool", "pool", "", "pool whose jobs this agent runs", strValue{&c.Pool})
	s.add("root", "root", "", "directory files are written under; destinations outside are refused (default: <data-dir>/files)", strValue{&c.Root})
	s.derived()
	s.add("shared_root", "shared-root", "", "root is shared storage of the pool: a takeover resumes the previous holder's staged files", boolValue{&c.SharedRoot})
	s.add("slots", "slots", "", "background (HIGH, NORMAL, LOW) jobs transferred at once", intValue{&c.Slots})
	s.add("max_foreground", "max-foreground", "", "FOREGROUND jobs transferred besides them", intValue{&c.MaxForeground})
	s.add("time_slice", "time-slice", "", "turn length among jobs of one priority", durValue{&c.TimeSlice})
	s.add("ack_wait", "ack-wait", "", "a dispatch without heartbeat is redelivered to another agent after this", durValue{&c.AckWait})
	s.add("checkpoint_interval", "checkpoint-interval", "", "progress checkpoint interval", durValue{&c.CheckpointInterval})
	s.add("checkpoint_bytes", "checkpoint-bytes", "", "progress checkpoint after this many bytes", int64Value{&c.CheckpointBytes})
	s.add("min_free_bytes", "min-free-bytes", "", "disk space kept free (ERROR_DISK_FULL otherwise)", int64Value{&c.MinFreeBytes})
	s.add("idle_read_timeout", "idle-read-timeout", "", "a download that receives nothing this long fails with ERROR_WINHTTP_TIMEOUT", durValue{&c.IdleReadTimeout})
	s.add("bandwidth.total_bps", "bandwidth-bps", "", "start-up limit of all transfers in bytes/s (0: none; the pool's setting replaces it)", int64Value{&c.Bandwidth.Total})
	s.add("origin_ca_files", "origin-ca", "", "extra CA (PEM) trusted for origins (repeatable)", listValue{&c.OriginCAFiles})
	s.add("certvault_url", "certvault-url", "", "certvault's HTTPS URL, for job client certificates (needs --cert/--key/--ca-cert)", strValue{&c.CertvaultURL})
	s.add("drain_timeout", "drain-timeout", "", "after SIGTERM: stop within this long (transfers stop at a checkpoint, dispatches are handed back)", durValue{&c.DrainTimeout})
	return s
}

func (c *AgentConfig) applyDefaults() {
	c.RoleCommon.applyDefaults()
	if c.Pool == "" {
		c.Pool = job.DefaultPool
	}
	if c.Root == "" {
		c.Root = filepath.Join(c.DataDir, "files")
	}
	if c.Slots == 0 {
		c.Slots = DefaultAgentSlots
	}
	if c.MaxForeground == 0 {
		c.MaxForeground = DefaultAgentMaxForeground
	}
	if c.TimeSlice == 0 {
		c.TimeSlice = Duration(time.Minute)
	}
	if c.AckWait == 0 {
		c.AckWait = Duration(30 * time.Second)
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = Duration(time.Second)
	}
	if c.CheckpointBytes == 0 {
		c.CheckpointBytes = 64 << 20
	}
	if c.IdleReadTimeout == 0 {
		c.IdleReadTimeout = Duration(download.DefaultIdleReadTimeout)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = Duration(DefaultDrainTimeout)
	}
}

type agentRuntime struct {
	roleRuntime
	originRoots *x509.CertPool
	principal   string
}

func (c *AgentConfig) prepare() (agentRuntime, []error) {
	var rt agentRuntime
	var ps []error
	need := ""
	if c.CertvaultURL != "" {
		need = "certvault releases job keys only to agents it can verify (certvault_url is set)"
	}
	rt.roleRuntime, ps = c.RoleCommon.prepare(need)
	if c.CertvaultURL != "" {
		if err := checkHTTPSURL("certvault_url", c.CertvaultURL); err != nil {
			ps = append(ps, err)
		}
	}
	if !events.ValidID(c.Pool) {
		ps = append(ps, fmt.Errorf("pool %q must be one token of letters, digits, '-' and '_'", c.Pool))
	}
	if !filepath.IsAbs(c.Root) {
		ps = append(ps, fmt.Errorf("root %q must be an absolute directory", c.Root))
	}
	for _, n := range []struct {
		key string
		v   int64
		min int64
	}{
		{"slots", int64(c.Slots), 1}, {"max_foreground", int64(c.MaxForeground), 1},
		{"checkpoint_bytes", c.CheckpointBytes, 1}, {"min_free_bytes", c.MinFreeBytes, 0},
	} {
		if n.v < n.min {
			ps = append(ps, fmt.Errorf("%s %d: must be at least %d", n.key, n.v, n.min))
		}
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"time_slice", c.TimeSlice}, {"ack_wait", c.AckWait}, {"checkpoint_interval", c.CheckpointInterval},
		{"idle_read_timeout", c.IdleReadTimeout}, {"drain_timeout", c.DrainTimeout},
	} {
		if err := positive(d.key, d.v); err != nil {
			ps = append(ps, err)
		}
	}
	if err := c.Bandwidth.Validate(); err != nil {
		ps = append(ps, fmt.Errorf("bandwidth: %v", err))
	}
	var cps []error
	rt.originRoots, cps = loadCAFiles("origin_ca_files", c.OriginCAFiles)
	ps = append(ps, cps...)
	// The agent's events name it by its certificate's principal when it has
	// one (spiffe://<td>/agent/<id>), as the dev stack does.
	rt.principal = "agent/" + c.ID
	if rt.cert != nil {
		if p, err := identity.Principal(rt.cert.Leaf); err == nil {
			rt.principal = p
			// certvault releases a job's key only to the lease holder,
			// spiffe://<td>/agent/<id> with <id> the agent's ID.
			if id, err := identity.ParseSPIFFEID(p); err == nil && id.Role == identity.RoleAgent && id.Name != c.ID && c.CertvaultURL != "" {
				ps = append(ps, fmt.Errorf("id %q differs from the agent ID of tls.cert_file (%s): certvault would refuse this agent's job keys; use --id %s or that agent's certificate", c.ID, p, id.Name))
			}
		}
	}
	return rt, ps
}

func (c *AgentConfig) problems() []error { _, ps := c.prepare(); return ps }

// newRoleLogger is the logger of a role, with its name and ID on every
// line.
func newRoleLogger(log zerolog.Logger, role, id string) zerolog.Logger {
	return log.With().Str("role", role).Str("id", id).Logger()
}

func jobLimits(l LimitsConfig) job.Limits {
	return job.Limits{MaxFilesPerJob: l.MaxFilesPerJob, MaxRangesPerFile: l.MaxRangesPerFile, MaxJobsPerUser: l.MaxJobsPerUser}
}
