package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/services/servicestest"
)

// TestJobCertCLI: `ferry job create --cert-*`, `job cert show|set|remove`
// and `job take-ownership` against a real `ferry dev`.
func TestJobCertCLI(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	startStack(t, dataDir, root, o.CAFile)
	certPEM, keyPEM, _ := clientCertFiles(t, "alice@example.test", "unused")
	pemFile := filepath.Join(t.TempDir(), "alice.pem")
	if err := os.WriteFile(pemFile, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := ferry(t, dataDir, "cert", "import", "--pem", pemFile, "-o", "json")
	var info struct{ SHA1, Subject string }
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || len(info.SHA1) != 40 {
		t.Fatalf("import: %d %s", code, out)
	}
	dest := filepath.Join(root, "a.bin")

	// Created with a certificate (by thumbprint, openssl spelling).
	upper := strings.ToUpper(info.SHA1[:2]) + ":" + strings.ToUpper(info.SHA1[2:])
	out, code = ferry(t, dataDir, "job", "create", "--name", "c", "--cert-thumbprint", upper, o.URL(1024), dest)
	if code != 0 {
		t.Fatalf("create: %d", code)
	}
	id := strings.TrimSpace(out)
	out, code = ferry(t, dataDir, "job", "cert", "show", id, "-o", "json")
	var shown struct{ Location, Store, Thumbprint, Subject string }
	if code != 0 || json.Unmarshal([]byte(out), &shown) != nil ||
		shown.Location != "CURRENT_USER" || shown.Store != "MY" || shown.Thumbprint != info.SHA1 {
		t.Fatalf("cert show: %d %s", code, out)
	}
	if out, _ := ferry(t, dataDir, "job", "show", id); !strings.Contains(out, "Client certificate") || !strings.Contains(out, info.SHA1) {
		t.Fatalf("job show does not show the certificate:\n%s", out)
	}
	// By subject, BITS form.
	if out, code := ferry(t, dataDir, "job", "cert", "set", id, "--subject", "Example, alice@example.test", "--location", "0", "--store", "my"); code != 0 || !strings.Contains(out, "S_FALSE") {
		t.Fatalf("cert set by subject (same certificate): %d %s", code, out)
	}
	// Remove twice: S_OK, then S_FALSE; then show is RPC_X_BAD_STUB_DATA.
	if out, code := ferry(t, dataDir, "job", "cert", "remove", id); code != 0 || !strings.Contains(out, "S_OK") {
		t.Fatalf("cert remove: %d %s", code, out)
	}
	if out, code := ferry(t, dataDir, "job", "cert", "remove", id); code != 0 || !strings.Contains(out, "S_FALSE") {
		t.Fatalf("cert remove again: %d %s", code, out)
	}
	for _, tc := range []struct {
		args []string
		code string
	}{
		{[]string{"job", "cert", "show", id}, "RPC_X_BAD_STUB_DATA"},
		{[]string{"job", "cert", "set", id, "--thumbprint", "abcd"}, "RPC_X_BAD_STUB_DATA"},
		{[]string{"job", "cert", "set", id, "--thumbprint", info.SHA1, "--location", "8"}, "E_NOTIMPL"},
		{[]string{"job", "cert", "set", id, "--thumbprint", info.SHA1, "--store", "NOSUCH"}, "ERROR_FILE_NOT_FOUND"},
		{[]string{"job", "cert", "set", id, "--thumbprint", strings.Repeat("ab", 20)}, "CRYPT_E_NOT_FOUND"},
	} {
		cmd := exec.Command(ferryBin, tc.args...)
		cmd.Env = append(os.Environ(), "FERRY_DATA_DIR="+dataDir)
		msg, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(msg), tc.code) {
			t.Fatalf("ferry %v: %v %s; want %s", tc.args, err, msg, tc.code)
		}
	}
	// The dev identity is an administrator and already owns the job.
	if out, code := ferry(t, dataDir, "job", "take-ownership", id); code != 0 || !strings.Contains(out, "S_FALSE") {
		t.Fatalf("take-ownership: %d %s", code, out)
	}
}
