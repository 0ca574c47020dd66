package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/services/servicestest"
)

// TestJobHeadersCLI: `ferry job headers write-only` (from -H, from standard
// input, or moving the plain headers) and `clear-write-only` against a real
// `ferry dev`, in text and JSON; the values are never printed.
func TestJobHeadersCLI(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	startStack(t, dataDir, root, o.CAFile)
	admin := cliIdentity{name: "admin"}
	const secret = "Bearer cli-wo-5e4d3c2b1a"
	const plain = "plain-9a8b7c"

	r := runCLIAs(t, dataDir, admin, "job", "create", "--name", "h", "-H", "Authorization: "+plain, "-H", "X-Trace: 1", o.URL(1024), filepath.Join(root, "a.bin"))
	if r.code != 0 {
		t.Fatalf("create: %+v", r)
	}
	id := strings.TrimSpace(r.stdout)

	// Given on the command line, text output.
	r = runCLIAs(t, dataDir, admin, "job", "headers", "write-only", id, "-H", "X-Api-Key: "+secret)
	if r.code != 0 || r.stdout != "headers write-only "+id+": S_OK, job is SUSPENDED\n" {
		t.Fatalf("write-only: %+v", r)
	}
	// From standard input, JSON output.
	cmd := exec.Command(ferryBin, "job", "headers", "write-only", id, "--from-file", "-", "-o", "json")
	cmd.Env = append(os.Environ(), "FERRY_DATA_DIR="+dataDir)
	cmd.Stdin = strings.NewReader("# the API key\nX-Api-Key: " + secret + "\n\nX-Tenant: blue\n")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("--from-file -: %v %s", err, errb.String())
	}
	a := decodeAction(t, cliRun{stdout: out.String()})
	if a.Code != "S_OK" || !slices.Equal(a.Job.Options.WriteOnlyHeaders, []string{"X-Api-Key", "X-Tenant"}) ||
		!slices.Equal(a.Job.Options.CustomHeaders, []string{"Authorization: " + plain, "X-Trace: 1"}) {
		t.Fatalf("--from-file: %+v", a)
	}
	// job show names them, never shows them.
	for _, args := range [][]string{{"job", "show", id}, {"job", "show", id, "-o", "json"}, {"job", "list", "-o", "json"}} {
		r = runCLIAs(t, dataDir, admin, args...)
		if r.code != 0 || strings.Contains(r.stdout, "cli-wo-") || strings.Contains(r.stdout, "blue") {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	if r = runCLIAs(t, dataDir, admin, "job", "show", id); !strings.Contains(r.stdout, "write-only headers X-Api-Key, X-Tenant") {
		t.Fatalf("job show:\n%s", r.stdout)
	}
	// Without headers the plain ones move.
	a = decodeAction(t, runCLIAs(t, dataDir, admin, "job", "headers", "write-only", id, "-o", "json"))
	if a.Code != "S_OK" || !slices.Equal(a.Job.Options.WriteOnlyHeaders, []string{"Authorization", "X-Trace"}) || a.Job.Options.CustomHeaders != nil {
		t.Fatalf("move: %+v", a.Job.Options)
	}
	// Clear twice: S_OK, then S_FALSE.
	if r = runCLIAs(t, dataDir, admin, "job", "headers", "clear-write-only", id); r.code != 0 || r.stdout != "headers clear-write-only "+id+": S_OK, job is SUSPENDED\n" {
		t.Fatalf("clear: %+v", r)
	}
	a = decodeAction(t, runCLIAs(t, dataDir, admin, "job", "headers", "clear-write-only", id, "-o", "json"))
	if a.Code != "S_FALSE" || a.Job.Options.WriteOnlyHeaders != nil {
		t.Fatalf("clear again: %+v", a)
	}

	// Refusals: one line on stderr with the code, exit 1, the value not
	// echoed.
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("# nothing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r = runCLIAs(t, dataDir, admin, "job", "cancel", id); r.code != 0 {
		t.Fatalf("cancel: %+v", r)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"job", "headers", "write-only", id, "-H", "X-Api-Key: " + secret}, "ferry: BG_E_INVALID_STATE (0x80200002): "},
		{[]string{"job", "headers", "clear-write-only", id}, "ferry: BG_E_INVALID_STATE (0x80200002): "},
		{[]string{"job", "headers", "write-only", id, "-H", "X-Api-Key " + secret}, "ferry: E_INVALIDARG (0x80070057): "},
		{[]string{"job", "headers", "write-only", id, "--from-file", empty}, "holds no header lines"},
	} {
		r = runCLIAs(t, dataDir, admin, tc.args...)
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "cli-wo-") {
			t.Errorf("%v: %+v; want %q", tc.args[2:], r, tc.want)
		}
	}
	r = runCLIAs(t, dataDir, admin, "job", "headers", "write-only", id, "-H", "X-Api-Key: "+secret, "-o", "json")
	var p struct{ Code, HResult string }
	if r.code != 1 || json.Unmarshal([]byte(r.stderr), &p) != nil || p.Code != "BG_E_INVALID_STATE" || p.HResult != "0x80200002" {
		t.Fatalf("-o json refusal: %+v", r)
	}
}
