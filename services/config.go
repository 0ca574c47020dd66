package services

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Configuration of the service roles (CONVENTIONS rule 5): each role's
// config is a struct whose zero value works (defaults fill what is left
// empty), filled from a JSON file, then FERRY_* environment variables, then
// flags — each layer overriding the one before — and validated in one place
// that reports every problem at once.
//
// Every setting has one row in its role's table (Setting): the key in the
// file, the environment variable, the flag, the help text. The loader, the
// flags, --help and docs/operations.md all come from those rows.

// Duration is a time.Duration written as a Go duration string ("30s",
// "1m30s") in config files.
type Duration time.Duration

// D is the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes the duration as "30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads "30s", "1m30s", "0".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (e.g. 30s, 5m, 1h)", b)
	}
	*d = Duration(v)
	return nil
}

// SecretString is a configuration value that must never be printed or
// logged (a password): every way of printing it shows "[redacted]".
type SecretString string

const redactedText = "[redacted]"

func (s SecretString) String() string {
	if s == "" {
		return ""
	}
	return redactedText
}

// GoString redacts %#v too.
func (s SecretString) GoString() string { return s.String() }

// Format makes every fmt verb print the redacted form.
func (s SecretString) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// MarshalJSON redacts the value; reading a config file reads it normally.
func (s SecretString) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// Setting is one configuration value of a role: its key in the config file
// (dotted JSON path), its environment variable, its flag ("" for secrets,
// which come from the file or the environment only), and what it means.
type Setting struct {
	Key   string
	Env   string
	Flag  string
	Usage string
	v     settingValue
	// derived: the default depends on the host or on other settings (the
	// usage text says how), so help shows no value.
	derived bool
}

// Type is the setting's kind: string, int, bool, duration, list or secret.
func (s Setting) Type() string { return s.v.Type() }

// Value is the setting's current value as text (secrets redacted).
func (s Setting) Value() string { return s.v.String() }

// settingValue reads a setting's text into its field.
type settingValue interface {
	Set(string) error
	String() string
	Type() string
}

type strValue struct{ p *string }

func (v strValue) Set(s string) error { *v.p = s; return nil }
func (v strValue) String() string     { return *v.p }
func (v strValue) Type() string       { return "string" }

type secretValue struct{ p *SecretString }

func (v secretValue) Set(s string) error { *v.p = SecretString(s); return nil }
func (v secretValue) String() string     { return v.p.String() }
func (v secretValue) Type() string       { return "secret" }

type intValue struct{ p *int }

func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not an integer", s)
	}
	*v.p = n
	return nil
}
func (v intValue) String() string { return strconv.Itoa(*v.p) }
func (v intValue) Type() string   { return "int" }

type int64Value struct{ p *int64 }

func (v int64Value) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not an integer", s)
	}
	*v.p = n
	return nil
}
func (v int64Value) String() string { return strconv.FormatInt(*v.p, 10) }
func (v int64Value) Type() string   { return "int" }

type boolValue struct{ p *bool }

func (v boolValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a boolean (true or false)", s)
	}
	*v.p = b
	return nil
}
func (v boolValue) String() string { return strconv.FormatBool(*v.p) }
func (v boolValue) Type() string   { return "bool" }

// boolPtrValue is a bool whose default (nil) is true.
type boolPtrValue struct{ p **bool }

func (v boolPtrValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a boolean (true or false)", s)
	}
	*v.p = &b
	return nil
}
func (v boolPtrValue) String() string { return strconv.FormatBool(*v.p == nil || **v.p) }
func (v boolPtrValue) Type() string   { return "bool" }

type durValue struct{ p *Duration }

func (v durValue) Set(s string) error { return v.p.UnmarshalText([]byte(strings.TrimSpace(s))) }
func (v durValue) String() string     { return v.p.String() }
func (v durValue) Type() string       { return "duration" }

// listValue is a comma-separated list; a repeated flag adds to it.
type listValue struct{ p *[]string }

func (v listValue) Set(s string) error {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	*v.p = out
	return nil
}
func (v listValue) String() string { return strings.Join(*v.p, ",") }
func (v listValue) Type() string   { return "list" }

// settings builds a role's table.
type settings []Setting

// add appends a row; env "" derives FERRY_<FLAG> from the flag, as every
// other ferry command does.
func (s *settings) add(key, flag, env, usage string, v settingValue) {
	if env == "" {
		env = "FERRY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
	}
	*s = append(*s, Setting{Key: key, Env: env, Flag: flag, Usage: usage, v: v})
}

// derived marks the last row's default as derived (see Setting).
func (s settings) derived() { s[len(s)-1].derived = true }

// RoleConfig is the configuration of one service role: CoordinatorConfig,
// AgentConfig or CertvaultConfig.
type RoleConfig interface {
	// Role is "coordinator", "agent" or "certvault".
	Role() string
	// Settings is the role's table, bound to this config's fields.
	Settings() []Setting
	// applyDefaults fills every setting left empty.
	applyDefaults()
	// problems checks the configuration (with defaults applied), reading
	// the files it names, and returns every problem.
	problems() []error
}

// ConfigSources are where a role's settings come from, besides defaults,
// in increasing precedence.
type ConfigSources struct {
	// File is a JSON config file ("" for none). Keys are the settings'
	// keys as nested objects ({"nats": {"url": "…"}}); unknown keys are an
	// error.
	File string
	// LookupEnv reads the environment (nil: os.LookupEnv).
	LookupEnv func(string) (string, bool)
	// Flags holds the flags BindFlags defined; only flags given on the
	// command line apply.
	Flags *pflag.FlagSet
}

// ConfigError lists every problem of a configuration.
type ConfigError struct {
	Role     string
	Problems []error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: invalid configuration", e.Role)
	if len(e.Problems) == 1 {
		fmt.Fprintf(&b, ": %v", e.Problems[0])
		return b.String()
	}
	fmt.Fprintf(&b, " (%d problems):", len(e.Problems))
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  - %v", p)
	}
	return b.String()
}

// Unwrap returns the problems (errors.Is and errors.As see each).
func (e *ConfigError) Unwrap() []error { return e.Problems }

// LoadConfig fills cfg from its sources — the file, then the environment,
// then flags — applies defaults and validates the result, reporting every
// problem at once as a *ConfigError.
func LoadConfig(cfg RoleConfig, src ConfigSources) error {
	lookup := src.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var problems []error
	if src.File != "" {
		if err := decodeConfigFile(src.File, cfg); err != nil {
			problems = append(problems, err)
		}
	}
	table := cfg.Settings()
	for _, s := range table {
		v, ok := lookup(s.Env)
		if !ok {
			continue
		}
		if err := s.v.Set(v); err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", s.Env, err))
		}
	}
	if src.Flags != nil {
		for _, s := range table {
			if s.Flag == "" {
				continue
			}
			f := src.Flags.Lookup(s.Flag)
			if f == nil || !f.Changed {
				continue
			}
			raw, ok := f.Value.(*rawFlag)
			if !ok || len(raw.vals) == 0 {
				continue
			}
			v := raw.vals[len(raw.vals)-1]
			if s.v.Type() == "list" {
				v = strings.Join(raw.vals, ",")
			}
			if err := s.v.Set(v); err != nil {
				problems = append(problems, fmt.Errorf("--%s: %w", s.Flag, err))
			}
		}
	}
	cfg.applyDefaults()
	problems = append(problems, cfg.problems()...)
	if len(problems) > 0 {
		return &ConfigError{Role: cfg.Role(), Problems: problems}
	}
	return nil
}

// decodeConfigFile reads a JSON config file strictly: one object, no
// unknown keys, nothing after it.
func decodeConfigFile(path string, cfg RoleConfig) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			line := 1 + bytes.Count(b[:min(int(syn.Offset), len(b))], []byte("\n"))
			return fmt.Errorf("config file %s: line %d: %v", path, line, err)
		case errors.As(err, &typ):
			return fmt.Errorf("config file %s: %q must be %s", path, typ.Field, typ.Type)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return fmt.Errorf("config file %s: unknown key %s (the keys are listed by --help)", path, strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if dec.More() {
		return fmt.Errorf("config file %s: data after the JSON object", path)
	}
	return nil
}

// rawFlag holds what the command line gave for a setting; LoadConfig
// applies it after the file and the environment.
type rawFlag struct {
	vals []string
	typ  string
	def  string
}

func (r *rawFlag) Set(s string) error { r.vals = append(r.vals, s); return nil }
func (r *rawFlag) String() string     { return r.def }
func (r *rawFlag) Type() string {
	switch r.typ {
	case "list":
		return "strings"
	case "secret":
		return "string"
	}
	return r.typ
}

// BindFlags defines a flag for every setting of cfg's role that has one,
// with the setting's default and its environment variable and file key in
// the help text.
func BindFlags(fs *pflag.FlagSet, cfg RoleConfig) {
	cfg.applyDefaults()
	for _, s := range cfg.Settings() {
		if s.Flag == "" {
			continue
		}
		r := &rawFlag{typ: s.v.Type(), def: s.v.String()}
		if s.derived {
			r.def = ""
		}
		usage := fmt.Sprintf("%s (%s; file: %s)", s.Usage, s.Env, s.Key)
		f := fs.VarPF(r, s.Flag, "", usage)
		if r.typ == "bool" {
			f.NoOptDefVal = "true"
		}
	}
}

// SettingsHelp describes the settings of cfg's role that have no flag
// (secrets), and how the sources combine, for --help.
func SettingsHelp(cfg RoleConfig) string {
	var b strings.Builder
	b.WriteString("Settings come from defaults, then the JSON file of --config (or $FERRY_CONFIG),\n")
	b.WriteString("then FERRY_* environment variables, then flags: a later source wins. Every\n")
	b.WriteString("flag below names its variable and its key in the file (nested objects: the\n")
	b.WriteString(`key nats.url is {"nats": {"url": "…"}}).` + "\n")
	var secrets []Setting
	for _, s := range cfg.Settings() {
		if s.Flag == "" {
			secrets = append(secrets, s)
		}
	}
	if len(secrets) > 0 {
		b.WriteString("\nSecrets, from the file or the environment only (never a flag):\n")
		for _, s := range secrets {
			fmt.Fprintf(&b, "  %-22s %-20s %s\n", s.Env, s.Key, s.Usage)
		}
	}
	return b.String()
}

// settingKeys lists the keys of a table, for tests and docs.
func settingKeys(t []Setting) []string {
	keys := make([]string, len(t))
	for i, s := range t {
		keys[i] = s.Key
	}
	slices.Sort(keys)
	return keys
}
