package services

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func flags(t *testing.T, cfg RoleConfig, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	BindFlags(fs, cfg)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

// TestConfigPrecedence: defaults < file < FERRY_* environment < flags, for
// every kind of value (string, int, duration, bool, list).
func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	ca, err := identity.NewCA("precedence.test")
	if err != nil {
		t.Fatal(err)
	}
	caFile := writeFile(t, dir, "ca.pem", string(ca.CertPEM()))
	file := writeFile(t, dir, "agent.json", fmt.Sprintf(`{
		"id": "from-file", "pool": "filepool", "root": "/srv/file", "slots": 2,
		"ack_wait": "10s", "time_slice": "2m", "checkpoint_bytes": 1000,
		"origin_ca_files": [%q], "nats": {"url": "nats://file:4222", "replicas": 1},
		"log": {"level": "debug"}, "bandwidth": {"class_bps": {"LOW": 100}}
	}`, caFile))
	var cfg AgentConfig
	err = LoadConfig(&cfg, ConfigSources{
		File: file,
		LookupEnv: env(map[string]string{
			"FERRY_POOL": "envpool", "FERRY_SLOTS": "3", "FERRY_ACK_WAIT": "20s",
			"FERRY_NATS_URL": "nats://env:4222", "FERRY_ORIGIN_CA": caFile,
		}),
		Flags: flags(t, &AgentConfig{}, "--slots", "5", "--ack-wait", "40s", "--origin-ca", caFile, "--origin-ca", caFile),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"id (file)", cfg.ID, "from-file"},
		{"root (file)", cfg.Root, "/srv/file"},
		{"time_slice (file)", cfg.TimeSlice.D(), 2 * time.Minute},
		{"checkpoint_bytes (file)", cfg.CheckpointBytes, int64(1000)},
		{"log.level (file)", cfg.Log.Level, "debug"},
		{"bandwidth.class_bps (file only)", cfg.Bandwidth.Class["LOW"], int64(100)},
		{"pool (env over file)", cfg.Pool, "envpool"},
		{"nats.url (env over file)", cfg.NATS.URL, "nats://env:4222"},
		{"slots (flag over env over file)", cfg.Slots, 5},
		{"ack_wait (flag over env over file)", cfg.AckWait.D(), 40 * time.Second},
		{"origin_ca_files (repeated flag)", len(cfg.OriginCAFiles), 2},
		{"max_foreground (default)", cfg.MaxForeground, DefaultAgentMaxForeground},
		{"drain_timeout (default)", cfg.DrainTimeout.D(), DefaultDrainTimeout},
		{"nats.connect_timeout (default)", cfg.NATS.ConnectTimeout.D(), DefaultConnectTimeout},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// A flag's default never overrides the file: only flags given apply.
	var cfg2 AgentConfig
	if err := LoadConfig(&cfg2, ConfigSources{File: file, LookupEnv: env(nil), Flags: flags(t, &AgentConfig{})}); err != nil {
		t.Fatal(err)
	}
	if cfg2.Slots != 2 || cfg2.Pool != "filepool" {
		t.Errorf("with no flags given: slots %d pool %q, want the file's 2 and filepool", cfg2.Slots, cfg2.Pool)
	}
}

// TestConfigEveryProblemAtOnce: a bad file key, bad environment values, bad
// flags, missing files and contradictions are reported together, one line
// each, and the error unwraps to each.
func TestConfigEveryProblemAtOnce(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "c.json", `{"nats": {"url": "nats://x:4222"}, "listen": "127.0.0.1:7070", "nosuchkey": 1}`)
	var cfg CoordinatorConfig
	err := LoadConfig(&cfg, ConfigSources{
		File: file,
		LookupEnv: env(map[string]string{
			"FERRY_NATS_REPLICAS": "three", "FERRY_NOTIFY_SECRET": "short",
			"FERRY_NATS_PASSWORD": "hunter2-secret",
		}),
		Flags: flags(t, &CoordinatorConfig{}, "--nats-url", "http://x", "--listen", "nowhere",
			"--cert", filepath.Join(dir, "missing.pem"), "--key", filepath.Join(dir, "missing-key.pem"),
			"--reconcile-interval", "soon", "--nats-cert", filepath.Join(dir, "n.pem"), "--log-level", "loud"),
	})
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("LoadConfig: %v, want a *ConfigError", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"unknown key \"nosuchkey\"",
		"FERRY_NATS_REPLICAS: \"three\" is not an integer",
		"--reconcile-interval: \"soon\" is not a duration",
		"nats.url \"http://x\": scheme \"http\"",
		"listen \"nowhere\"",
		"tls.cert_file: stat",
		"tls.key_file: stat",
		"tls.ca_file (--ca-cert) is required",
		"nats.cert_file and nats.key_file (--nats-cert, --nats-key) go together",
		"a NATS password needs nats.user",
		"notify secret: 5 bytes is too short",
		"log.level \"loud\"",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the report lacks %q:\n%s", want, msg)
		}
	}
	if len(ce.Problems) < 12 {
		t.Errorf("%d problems reported, want at least 12:\n%s", len(ce.Problems), msg)
	}
	if strings.Contains(msg, "hunter2") {
		t.Errorf("the report shows a secret:\n%s", msg)
	}
	if !strings.HasPrefix(msg, "coordinator: invalid configuration (") {
		t.Errorf("report header: %q", strings.SplitN(msg, "\n", 2)[0])
	}
}

// TestConfigAgentWithoutIdentity: an agent needs no certificate unless it
// fetches job certificates from certvault; a coordinator and certvault
// always need one, and certvault its keyring.
func TestConfigIdentityRequirements(t *testing.T) {
	root := t.TempDir()
	var a AgentConfig
	if err := LoadConfig(&a, ConfigSources{LookupEnv: env(map[string]string{"FERRY_ROOT": root})}); err != nil {
		t.Fatalf("agent without certvault: %v", err)
	}
	a = AgentConfig{}
	err := LoadConfig(&a, ConfigSources{LookupEnv: env(map[string]string{"FERRY_ROOT": root, "FERRY_CERTVAULT_URL": "https://vault:7071"})})
	if err == nil || !strings.Contains(err.Error(), "certvault releases job keys only to agents it can verify") {
		t.Fatalf("agent with certvault but no identity: %v", err)
	}
	var v CertvaultConfig
	err = LoadConfig(&v, ConfigSources{LookupEnv: env(nil)})
	if err == nil || !strings.Contains(err.Error(), "keyring_file (--keyring-file) or FERRY_VAULT_KEK") || !strings.Contains(err.Error(), "tls.cert_file and tls.key_file") {
		t.Fatalf("certvault without keyring or identity: %v", err)
	}
}

// TestSettingsCoverTheFile: every key a config file may hold is a setting
// (with an environment variable, and a flag unless it is a secret), except
// the few that are maps; names are unique; the table's keys are real keys.
func TestSettingsCoverTheFile(t *testing.T) {
	fileOnly := []string{"roles.overrides", "bandwidth.class_bps"}
	for _, cfg := range []RoleConfig{&CoordinatorConfig{}, &CertvaultConfig{}, &AgentConfig{}} {
		t.Run(cfg.Role(), func(t *testing.T) {
			var leaves []string
			jsonLeaves(reflect.TypeOf(cfg).Elem(), "", &leaves)
			keys := settingKeys(cfg.Settings())
			for _, l := range leaves {
				if !slices.Contains(keys, l) && !slices.Contains(fileOnly, l) {
					t.Errorf("file key %s has no setting (environment variable, flag)", l)
				}
			}
			for _, k := range keys {
				if !slices.Contains(leaves, k) {
					t.Errorf("setting %s is not a key of the file", k)
				}
			}
			seen := map[string]bool{}
			for _, s := range cfg.Settings() {
				for _, n := range []string{"env " + s.Env, "flag " + s.Flag} {
					if n != "flag " && seen[n] {
						t.Errorf("%s is used twice", n)
					}
					seen[n] = true
				}
				if s.Flag == "" && s.Type() != "secret" {
					t.Errorf("%s has no flag but is not a secret", s.Key)
				}
				if s.Type() == "secret" && s.Flag != "" {
					t.Errorf("secret %s has a flag (it would show in ps)", s.Key)
				}
			}
		})
	}
}

// jsonLeaves lists the dotted JSON keys of t's leaf fields.
func jsonLeaves(t reflect.Type, prefix string, out *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" {
			jsonLeaves(f.Type, prefix, out)
			continue
		}
		if name == "" {
			name = f.Name
		}
		key := prefix + name
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Time{}) {
			jsonLeaves(ft, key+".", out)
			continue
		}
		*out = append(*out, key)
	}
}

// TestOperationsDocListsSettings: docs/operations.md names every
// environment variable of every role.
func TestOperationsDocListsSettings(t *testing.T) {
	b, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, cfg := range []RoleConfig{&CoordinatorConfig{}, &CertvaultConfig{}, &AgentConfig{}} {
		for _, s := range cfg.Settings() {
			if !strings.Contains(doc, "`"+s.Env+"`") || !strings.Contains(doc, "`"+s.Key+"`") {
				t.Errorf("docs/operations.md does not list %s (%s) of the %s", s.Env, s.Key, cfg.Role())
			}
		}
	}
}

// TestSecretsStayHidden: a password in a config never prints.
func TestSecretsStayHidden(t *testing.T) {
	cfg := CoordinatorConfig{}
	cfg.NATS.Password = "hunter2-secret"
	cfg.Notify.Secret = "webhook-secret-0123456789"
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprintf("%v %+v %#v %s %q %x", cfg, cfg, cfg, cfg.NATS.Password, cfg.NATS.Password, cfg.NATS.Password), string(b)} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "webhook-secret") || strings.Contains(s, "68756e74") {
			t.Fatalf("a secret printed: %s", s)
		}
	}
	for _, s := range cfg.Settings() {
		if s.Key == "nats.password" && s.Value() != redactedText {
			t.Fatalf("Setting.Value of the password: %q", s.Value())
		}
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://u:pw@h:4222,tls://h2:4222": "nats://u:[redacted]@h:4222,tls://h2:4222",
		"nats://token@h:4222":              "nats://[redacted]@h:4222",
		"nats://h:4222":                    "nats://h:4222",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
