package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// keyringLines returns the "version:base64" lines of a keyring file.
func keyringLines(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if v, k, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && !strings.HasPrefix(v, "#") {
			out[v] = k
		}
	}
	return out
}

func rotateKey(t *testing.T, dataDir string, env []string, args ...string) certvault.RotateKeyResult {
	t.Helper()
	cmd := exec.Command(ferryBin, append([]string{"certvault", "rotate-key", "-o", "json"}, args...)...)
	cmd.Env = append(append(os.Environ(), "FERRY_DATA_DIR="+dataDir), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ferry certvault rotate-key %v: %v", args, err)
	}
	var res certvault.RotateKeyResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("rotate-key output %q: %v", out, err)
	}
	return res
}

// TestCertvaultRotateKey: `ferry certvault rotate-key` against a real
// `ferry dev`: a new key in the keyring file, every record rewrapped,
// --finish --retire (also from FERRY_FINISH/FERRY_RETIRE) leaving only the
// new version, non-admins refused, and a restart on the rotated keyring.
func TestCertvaultRotateKey(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	s := startStack(t, dataDir, root, o.CAFile)
	dir := t.TempDir()
	certPEM, keyPEM, pfx := clientCertFiles(t, "alice@example.test", "s3cret")
	pemFile, pfxFile, passFile := filepath.Join(dir, "alice.pem"), filepath.Join(dir, "alice.pfx"), filepath.Join(dir, "pass")
	for name, b := range map[string][]byte{pemFile: append(certPEM, keyPEM...), pfxFile: pfx, passFile: []byte("s3cret\n")} {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, code := ferry(t, dataDir, "cert", "import", "--pem", pemFile, "-o", "json")
	var info struct{ SHA1 string }
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("import: %d %s", code, out)
	}
	if _, code := ferry(t, dataDir, "cert", "import", "--store", "Apps", "--pfx", pfxFile, "--password-file", passFile); code != 0 {
		t.Fatal("import pfx failed")
	}
	kekFile := filepath.Join(dataDir, services.DevKeyringFile)
	before := keyringLines(t, kekFile)
	if len(before) != 1 || before["1"] == "" {
		t.Fatalf("dev keyring before: versions %v", slices.Collect(maps.Keys(before)))
	}

	res := rotateKey(t, dataDir, nil)
	if res.ActiveVersion != 2 || res.PreviousVersion != 1 || res.NewKey != certvault.NewKeyGenerated || res.Keyring != certvault.KeyringInFile ||
		res.Rewrapped != 2 || !slices.Equal(res.KeyringVersions, []int{1, 2}) || len(res.VersionsInUse) != 1 || res.VersionsInUse[0] != (certvault.KEKUse{Version: 2, Records: 2}) {
		t.Fatalf("rotate-key: %+v", res)
	}
	mid := keyringLines(t, kekFile)
	if len(mid) != 2 || mid["1"] != before["1"] || mid["2"] == "" {
		t.Fatalf("keyring after rotate-key: versions %v", slices.Collect(maps.Keys(mid)))
	}

	// Text output: what happened, and what is left to retire.
	out, code = ferry(t, dataDir, "certvault", "rotate-key", "--finish")
	if code != 0 || !strings.Contains(out, "key-encryption key version 2 is active") || !strings.Contains(out, "rewrapped     0 records (2 were already on version 2)") ||
		!strings.Contains(out, "rotate-key --finish --retire") {
		t.Fatalf("rotate-key --finish: %d\n%s", code, out)
	}

	// Flags from the environment, like every other flag.
	res = rotateKey(t, dataDir, []string{"FERRY_FINISH=true", "FERRY_RETIRE=true"})
	if res.NewKey != certvault.NewKeyNone || !slices.Equal(res.Retired, []int{1}) || !slices.Equal(res.KeyringVersions, []int{2}) {
		t.Fatalf("rotate-key with FERRY_FINISH and FERRY_RETIRE: %+v", res)
	}
	after := keyringLines(t, kekFile)
	if len(after) != 1 || after["2"] != mid["2"] {
		t.Fatalf("keyring after retire: versions %v", slices.Collect(maps.Keys(after)))
	}
	if st, err := os.Stat(kekFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file mode %v, %v", st.Mode(), err)
	}

	// Not for users.
	bobDir := t.TempDir()
	if _, code := ferry(t, dataDir, "ca", "issue", "--role", "user", "--name", "bob", "--out", bobDir); code != 0 {
		t.Fatal("ca issue failed")
	}
	cmd := exec.Command(ferryBin, "certvault", "rotate-key", "--cert", filepath.Join(bobDir, "bob.pem"), "--key", filepath.Join(bobDir, "bob-key.pem"))
	cmd.Env = append(os.Environ(), "FERRY_DATA_DIR="+dataDir)
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "E_ACCESSDENIED") || !strings.Contains(string(msg), "admins") {
		t.Fatalf("rotate-key as a user: %v %s", err, msg)
	}
	if got := keyringLines(t, kekFile); len(got) != 1 || got["2"] != mid["2"] {
		t.Fatal("a refused rotate-key changed the keyring")
	}

	// The stack restarts on the rotated keyring (certvault checks that it
	// opens every record) and still lists both certificates.
	first := s
	first.stop(syscall.SIGTERM)
	s = startStack(t, dataDir, root, o.CAFile)
	out, code = ferry(t, dataDir, "cert", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, info.SHA1) {
		t.Fatalf("list after restart: %d %s", code, out)
	}

	// No key-encryption key in the dev stack's logs (debug level).
	s.stop(syscall.SIGTERM)
	log := first.stderr.String() + s.stderr.String()
	if !strings.Contains(log, "key-encryption key rotation") {
		t.Fatal("the ferry dev log does not show the rotation: is it the right log?")
	}
	for v, b64 := range map[string]string{"1": before["1"], "2": mid["2"]} {
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			t.Fatal(err)
		}
		for _, form := range []string{b64[:40], base64.URLEncoding.EncodeToString(raw)[:40], hex.EncodeToString(raw), string(raw)} {
			if strings.Contains(log, form) {
				t.Errorf("the ferry dev log holds key-encryption key version %s", v)
			}
		}
	}
}
