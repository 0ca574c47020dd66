package certvault

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestParseKeyring(t *testing.T) {
	k1, k2 := testKEK(t), testKEK(t)
	b1, b2 := base64.StdEncoding.EncodeToString(k1), base64.StdEncoding.EncodeToString(k2)
	for name, text := range map[string]string{
		"lines":               "# ferry keyring\n1:" + b1 + "\n\n2:" + b2 + "\n",
		"commas":              "1:" + b1 + ", 2:" + b2,
		"comment with commas": "# keep it secret, keep it safe\n1:" + b1 + "\n2:" + b2,
		"json":                `{"keys": [{"version": 2, "key": "` + b2 + `"}, {"version": 1, "key": "` + b1 + `"}]}`,
	} {
		k, err := ParseKeyring([]byte(text))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if k.Active() != 2 || fmt.Sprint(k.Versions()) != "[1 2]" {
			t.Errorf("%s: active %d versions %v", name, k.Active(), k.Versions())
		}
		if got, _ := k.key(1); !bytes.Equal(got, k1) {
			t.Errorf("%s: version 1 is not the key", name)
		}
	}
	short := base64.StdEncoding.EncodeToString(k1[:16])
	for name, text := range map[string]string{
		"empty":        "",
		"no version":   b1,
		"bad version":  "one:" + b1,
		"version 0":    "0:" + b1,
		"negative":     "-1:" + b1,
		"not base64":   "1:not*base64",
		"short key":    "1:" + short,
		"duplicate":    "1:" + b1 + "\n1:" + b2,
		"json unknown": `{"keys": [], "extra": 1}`,
		"json syntax":  `{"keys": [`,
		"json empty":   `{"keys": []}`,
	} {
		_, err := ParseKeyring([]byte(text))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		// Refusals never quote a key.
		if strings.Contains(err.Error(), b1) || strings.Contains(err.Error(), b2) || strings.Contains(err.Error(), short) {
			t.Errorf("%s: error quotes the key: %v", name, err)
		}
	}
}

func TestLoadKeyringFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek")
	text := "1:" + base64.StdEncoding.EncodeToString(testKEK(t)) + "\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyringFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable keyring: %v", err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o602} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadKeyringFile(path); err == nil {
			t.Errorf("mode %04o accepted", mode)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		k, err := LoadKeyringFile(path)
		if err != nil || k.Active() != 1 {
			t.Errorf("mode %04o: %v, %v", mode, k, err)
		}
	}
	if _, err := LoadKeyringFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
	if _, err := LoadKeyringFile(dir); err == nil {
		t.Error("directory accepted")
	}
	k, err := LoadKeyring(path)
	if err != nil || k.Active() != 1 {
		t.Errorf("LoadKeyring(path): %v, %v", k, err)
	}
}

func TestKeyringFromEnv(t *testing.T) {
	key := testKEK(t)
	env := map[string]string{EnvKEK: base64.StdEncoding.EncodeToString(key)}
	k, err := KeyringFromEnv(func(n string) string { return env[n] })
	if err != nil || k.Active() != 1 {
		t.Fatalf("single key: %v, %v", k, err)
	}
	if got, _ := k.key(1); !bytes.Equal(got, key) {
		t.Error("single key is not version 1")
	}
	env[EnvKEK] = "1:" + base64.StdEncoding.EncodeToString(key) + ",3:" + base64.StdEncoding.EncodeToString(testKEK(t))
	if k, err = KeyringFromEnv(func(n string) string { return env[n] }); err != nil || k.Active() != 3 {
		t.Fatalf("two keys: %v, %v", k, err)
	}
	env[EnvKEK] = ""
	if _, err := KeyringFromEnv(func(n string) string { return env[n] }); err == nil || !strings.Contains(err.Error(), EnvKEK) {
		t.Errorf("unset: %v", err)
	}
	t.Setenv(EnvKEK, base64.StdEncoding.EncodeToString(key))
	if k, err := LoadKeyring(""); err != nil || k.Active() != 1 {
		t.Errorf("LoadKeyring(\"\") from the environment: %v, %v", k, err)
	}
}

func TestKeyringWithout(t *testing.T) {
	k := testKeyring(t, map[int][]byte{1: testKEK(t), 2: testKEK(t)})
	k2, err := k.Without(1)
	if err != nil || k2.Has(1) || !k2.Has(2) || k2.Active() != 2 {
		t.Fatalf("Without(1) = %v, %v", k2, err)
	}
	if _, err := k2.Without(2); err == nil {
		t.Error("an empty keyring was made")
	}
}

// leakForms are the ways bytes could show up in text.
func leakForms(b []byte) []string {
	return []string{
		string(b), base64.StdEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
		hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)), fmt.Sprint([]byte(b))[1:20],
		fmt.Sprintf("%d", b[:4]), fmt.Sprintf("%v", b[:4]),
	}
}

func assertRedacted(t *testing.T, what string, out string, secrets ...[]byte) {
	t.Helper()
	for _, s := range secrets {
		for _, f := range leakForms(s) {
			if strings.Contains(out, f) {
				t.Errorf("%s leaks %q: %s", what, f, out)
			}
		}
	}
}

// TestRedaction prints key-holding values every way fmt, encoding/json and
// zerolog can.
func TestRedaction(t *testing.T) {
	kek := bytes.Repeat([]byte{0xA7}, KEKSize)
	k := testKeyring(t, map[int][]byte{1: kek, 7: bytes.Repeat([]byte{0x5C}, KEKSize)})
	password := []byte("correct horse battery staple")
	pemKey := []byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n")
	pfxBytes := bytes.Repeat([]byte{0x3E}, 64)
	reqPEM := ImportRequest{PEM: pemKey}
	reqPFX := ImportRequest{PFX: pfxBytes, Password: password}
	type holder struct {
		K   *Keyring
		KV  Keyring
		R   ImportRequest
		RP  *ImportRequest
		Sec secret
	}
	h := holder{K: k, KV: *k, R: reqPFX, RP: &reqPEM, Sec: secret(kek)}
	values := map[string]any{"keyring": k, "keyring value": *k, "pem request": reqPEM, "pfx request": reqPFX,
		"pointer to request": &reqPFX, "holder": h, "pointer to holder": &h, "secret": secret(password)}
	secrets := [][]byte{kek, password, pemKey[28:60], pfxBytes}
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
			assertRedacted(t, name+" "+verb, fmt.Sprintf(verb, v), secrets...)
		}
		js, err := json.Marshal(v)
		if err != nil {
			t.Errorf("%s: json: %v", name, err)
		}
		assertRedacted(t, name+" json", string(js), secrets...)
		var buf bytes.Buffer
		log := zerolog.New(&buf)
		log.Info().Interface("v", v).Msg("x")
		if o, ok := v.(zerolog.LogObjectMarshaler); ok {
			log.Info().Object("o", o).Msg("x")
		}
		assertRedacted(t, name+" zerolog", buf.String(), secrets...)
	}
	// What they do show.
	if s := fmt.Sprint(k); s != "Keyring(versions=[1 7] active=7)" {
		t.Errorf("keyring prints %q", s)
	}
	if s := fmt.Sprint(reqPFX); !strings.Contains(s, "pfx 64 bytes") {
		t.Errorf("request prints %q", s)
	}
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	log.Info().Object("keyring", k).Msg("")
	if !strings.Contains(buf.String(), `"active":7`) {
		t.Errorf("zerolog keyring: %s", buf.String())
	}
}
