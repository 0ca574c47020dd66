package certvault

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
)

// EnvKEK is the environment variable that can hold the keyring: one
// base64-encoded 32-byte key (version 1), or "version:base64" entries
// separated by newlines or commas.
const EnvKEK = "FERRY_VAULT_KEK"

// KEKSize is the size of a key-encryption key: AES-256.
const KEKSize = 32

// Keyring holds the versioned key-encryption keys (KEKs) that wrap the data
// key of every stored private key. The highest version is active: new
// records are wrapped with it, and Vault.Rotate rewraps older records to it.
// An older version may be dropped from the keyring once Vault.KEKVersionsInUse
// no longer lists it.
//
// A Keyring never shows its keys: fmt (every verb), encoding/json and
// zerolog print its versions only.
type Keyring struct {
	keys   map[int]secret
	active int
	// file is the absolute path of the file the keyring was read from
	// (LoadKeyringFile); fromEnv says it came from EnvKEK. A vault
	// persists key rotations to file, and refuses to make new keys for a
	// keyring it cannot persist.
	file    string
	fromEnv bool
}

// NewKeyring makes a keyring from keys by version. Versions are positive;
// every key is KEKSize bytes. The keyring keeps copies.
func NewKeyring(keys map[int][]byte) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("certvault: keyring: no keys")
	}
	var problems []error
	k := &Keyring{keys: make(map[int]secret, len(keys))}
	for v, key := range keys {
		switch {
		case v < 1:
			problems = append(problems, fmt.Errorf("version %d: versions start at 1", v))
		case len(key) != KEKSize:
			problems = append(problems, fmt.Errorf("version %d: key is %d bytes, want %d (AES-256)", v, len(key), KEKSize))
		default:
			k.keys[v] = bytes.Clone(key)
			k.active = max(k.active, v)
		}
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("certvault: keyring: %w", err)
	}
	return k, nil
}

// ParseKeyring reads a keyring in one of two forms:
//
//	{"keys": [{"version": 1, "key": "<base64>"}, …]}
//
// or lines "version:base64key" (blank lines and lines starting with '#' are
// ignored; commas may separate entries too). Keys are standard base64 of 32
// bytes.
func ParseKeyring(data []byte) (*Keyring, error) {
	trimmed := bytes.TrimSpace(data)
	keys := map[int][]byte{}
	var problems []error
	add := func(where string, v int, b64 string) {
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: key is not base64", where))
			return
		}
		if _, dup := keys[v]; dup {
			problems = append(problems, fmt.Errorf("%s: version %d appears twice", where, v))
			return
		}
		keys[v] = key
	}
	if len(trimmed) > 0 && trimmed[0] == '{' {
		var doc struct {
			Keys []struct {
				Version int    `json:"version"`
				Key     string `json:"key"`
			} `json:"keys"`
		}
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&doc); err != nil {
			// The decoder's message may quote input; say where, not what.
			var syn *json.SyntaxError
			if errors.As(err, &syn) {
				return nil, fmt.Errorf("certvault: keyring: not valid JSON at byte %d", syn.Offset)
			}
			return nil, errors.New(`certvault: keyring: JSON must be {"keys": [{"version": N, "key": "<base64>"}]}`)
		}
		for i, e := range doc.Keys {
			add("entry "+strconv.Itoa(i+1), e.Version, e.Key)
		}
	} else {
		// Comments go first, whole lines, so that a comma in one does not
		// split it into entries.
		var kept []string
		for _, line := range strings.Split(string(trimmed), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(line), "#") {
				kept = append(kept, line)
			}
		}
		lines := strings.FieldsFunc(strings.Join(kept, "\n"), func(r rune) bool { return r == '\n' || r == ',' })
		for i, line := range lines {
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			where := "entry " + strconv.Itoa(i+1)
			vs, b64, ok := strings.Cut(line, ":")
			if !ok {
				problems = append(problems, fmt.Errorf(`%s: want "version:base64key"`, where))
				continue
			}
			v, err := strconv.Atoi(strings.TrimSpace(vs))
			if err != nil {
				problems = append(problems, fmt.Errorf("%s: version is not a number", where))
				continue
			}
			add(where, v, b64)
		}
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("certvault: keyring: %w", err)
	}
	k, err := NewKeyring(keys)
	for _, key := range keys {
		clear(key)
	}
	return k, err
}

// LoadKeyringFile reads a keyring file (see ParseKeyring). The file must not
// be readable or writable by group or others (mode 0600 or 0400), like an SSH
// private key.
func LoadKeyringFile(path string) (*Keyring, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("certvault: keyring: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("certvault: keyring: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("certvault: keyring %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("certvault: keyring %s: mode %04o lets group or others access it; chmod 600 it", path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("certvault: keyring %s: %w", path, err)
	}
	defer clear(data)
	k, err := ParseKeyring(data)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	if k.file, err = filepath.Abs(path); err != nil {
		return nil, fmt.Errorf("certvault: keyring %s: %w", path, err)
	}
	return k, nil
}

// KeyringFromEnv reads the keyring from EnvKEK through getenv (os.Getenv in
// production). A single base64 key is version 1.
func KeyringFromEnv(getenv func(string) string) (*Keyring, error) {
	v := getenv(EnvKEK)
	if strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("certvault: keyring: %s is not set", EnvKEK)
	}
	if !strings.Contains(v, ":") {
		v = "1:" + v
	}
	k, err := ParseKeyring([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, EnvKEK)
	}
	k.fromEnv = true
	return k, nil
}

// LoadKeyring loads the keyring from path when it is not empty, else from the
// environment (EnvKEK).
func LoadKeyring(path string) (*Keyring, error) {
	if path != "" {
		return LoadKeyringFile(path)
	}
	return KeyringFromEnv(os.Getenv)
}

// Active is the version new records are wrapped with: the highest.
func (k Keyring) Active() int { return k.active }

// Versions lists the versions in the keyring, ascending.
func (k Keyring) Versions() []int {
	vs := make([]int, 0, len(k.keys))
	for v := range k.keys {
		vs = append(vs, v)
	}
	slices.Sort(vs)
	return vs
}

// Has reports whether version v is in the keyring.
func (k *Keyring) Has(v int) bool { _, ok := k.keys[v]; return ok }

// key returns the KEK of version v. Callers must not retain or change it.
func (k *Keyring) key(v int) ([]byte, bool) { key, ok := k.keys[v]; return key, ok }

// Without returns a keyring without version v (for dropping an old KEK after
// a rotation). It fails if v is the only version.
func (k *Keyring) Without(v int) (*Keyring, error) {
	keys := map[int][]byte{}
	for ver, key := range k.keys {
		if ver != v {
			keys[ver] = key
		}
	}
	return NewKeyring(keys)
}

// String shows the versions, never the keys. (Value receivers: a copied
// Keyring redacts itself too.)
func (k Keyring) String() string {
	return fmt.Sprintf("Keyring(versions=%v active=%d)", k.Versions(), k.active)
}

// GoString is String, so %#v redacts too.
func (k Keyring) GoString() string { return k.String() }

// Format makes every fmt verb print String: without it, %d or %x would
// print the fields.
func (k Keyring) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// MarshalJSON shows the versions, never the keys.
func (k Keyring) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Versions []int `json:"versions"`
		Active   int   `json:"active"`
	}{k.Versions(), k.active})
}

// MarshalZerologObject logs the versions, never the keys.
func (k Keyring) MarshalZerologObject(e *zerolog.Event) {
	e.Ints("versions", k.Versions()).Int("active", k.active)
}

// secret is key material: a KEK, a data key, a password. It prints, encodes
// and logs as "[REDACTED n bytes]" whatever the verb or encoder, so that a
// struct holding one cannot leak it by being printed.
type secret []byte

const redacted = "[REDACTED]"

func (s secret) String() string               { return redacted }
func (s secret) GoString() string             { return redacted }
func (s secret) Format(f fmt.State, _ rune)   { _, _ = io.WriteString(f, redacted) }
func (s secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (s secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
