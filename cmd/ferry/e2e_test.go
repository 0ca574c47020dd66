package main

// End-to-end tests through the real binary: `ferry dev` as a separate
// process, the CLI as separate processes, an HTTPS origin with a throwaway CA
// in this test process.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"software.sslmate.com/src/go-pkcs12"
)

var ferryBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-e2e-bin")
	if err != nil {
		panic(err)
	}
	ferryBin = filepath.Join(dir, "ferry")
	build := exec.Command("go", "build", "-o", ferryBin, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building ferry:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// stack is a `ferry dev` process.
type stack struct {
	t       *testing.T
	dataDir string
	root    string
	cmd     *exec.Cmd
	info    services.DevInfo
	stderr  *bytes.Buffer
}

func startStack(t *testing.T, dataDir, root, originCA string, extra ...string) *stack {
	t.Helper()
	old, _ := services.ReadDevInfo(dataDir)
	args := append([]string{"dev", "--data-dir", dataDir, "--root", root, "--http", "127.0.0.1:0", "--vault", "127.0.0.1:0",
		"--nats-listen", "127.0.0.1:0", "--no-demo-origin", "--origin-ca", originCA, "--agent-id", "e2e",
		"--log-level", "debug"}, extra...)
	cmd := exec.Command(ferryBin, args...)
	s := &stack{t: t, dataDir: dataDir, root: root, cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stdout = io.Discard
	cmd.Stderr = &lockedWriter{w: s.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.stop(syscall.SIGKILL) })
	waitFor(t, 60*time.Second, "ferry dev to start", func() bool {
		info, err := services.ReadDevInfo(dataDir)
		if err != nil || info.PID != cmd.Process.Pid || info == old {
			return false
		}
		s.info = info
		return true
	})
	return s
}

func (s *stack) stop(sig syscall.Signal) {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	_ = s.cmd.Wait()
	if s.t.Failed() {
		s.t.Logf("ferry dev log:\n%s", tail(s.stderr.String(), 4000))
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// cliRun is one run of the ferry CLI.
type cliRun struct {
	stdout, stderr string
	code           int
}

// cliIdentity is what a CLI run presents: the dev stack's administrator
// (the default: <data-dir>/pki/admin.pem), or another identity chosen with
// FERRY_CERT/FERRY_KEY in the environment or with --cert/--key.
type cliIdentity struct {
	name  string
	env   []string
	flags []string
}

// runCLIAs runs the CLI against dataDir as w.
func runCLIAs(t *testing.T, dataDir string, w cliIdentity, args ...string) cliRun {
	t.Helper()
	cmd := exec.Command(ferryBin, append(append([]string(nil), args...), w.flags...)...)
	cmd.Env = append(append(os.Environ(), "FERRY_DATA_DIR="+dataDir), w.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliRun{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ferry %v: %v", args, err)
	}
	return r
}

// ferry runs the CLI against the stack's data directory.
func ferry(t *testing.T, dataDir string, args ...string) (string, int) {
	t.Helper()
	r := runCLIAs(t, dataDir, cliIdentity{}, args...)
	if r.code != 0 {
		t.Logf("ferry %v exited %d; stderr:\n%s", args, r.code, r.stderr)
	}
	return r.stdout, r.code
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not timing
	}
}

func showJob(t *testing.T, dataDir, id string) job.Job {
	t.Helper()
	out, code := ferry(t, dataDir, "job", "show", id, "-o", "json")
	if code != 0 {
		t.Fatalf("job show exited %d", code)
	}
	var j job.Job
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("job show output: %v\n%s", err, out)
	}
	return j
}

// TestTransferEndToEnd: `ferry dev` + `ferry transfer` of a 64 MiB file over
// HTTPS; the file is exact and the job's events tell its life in order.
func TestTransferEndToEnd(t *testing.T) {
	const size = 64 << 20
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	s := startStack(t, dataDir, root, o.CAFile)
	dest := filepath.Join(root, "downloads", "big.bin")

	out, code := ferry(t, dataDir, "transfer", o.URL(size), dest, "-o", "json")
	if code != 0 {
		t.Fatalf("transfer exited %d\n%s", code, out)
	}
	sum := servicestest.Sum(size)
	if got := servicestest.FileSum(t, dest); got != sum {
		t.Fatalf("sha256 %s, want %s", got, sum)
	}
	// The NDJSON stream of the transfer is the job's history.
	var lines []services.WatchLine
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l services.WatchLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad NDJSON line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		t.Fatal("no events printed")
	}
	id := lines[0].Event.AggregateID
	var types []string
	for _, l := range lines {
		if l.Event.Type != events.TypeFileProgressed {
			types = append(types, l.Event.Type)
		}
	}
	want := []string{"JobCreated", "FilesAdded", "JobQueued", "JobLeased", "JobConnecting", "JobTransferring",
		"FileTransferred", "JobTransferred", "JobCompleteRequested", "JobAcknowledged"}
	if diff := cmp.Diff(want, types); diff != "" {
		t.Fatalf("event order (-want +got):\n%s", diff)
	}
	j := showJob(t, dataDir, id)
	if j.State != job.Acknowledged || !j.Files[0].Completed || j.Files[0].SHA256 != sum {
		t.Fatalf("job after transfer: %+v", j)
	}
	// No temporary files are left next to the destination.
	entries, _ := os.ReadDir(filepath.Dir(dest))
	if len(entries) != 1 {
		t.Fatalf("destination directory holds %d entries, want only big.bin", len(entries))
	}
	assertReplayEqualsReadModel(t, s.info.NATSURL, id, j)

	// The CLI's errors for bad input carry the BITS symbols.
	if _, code := ferry(t, dataDir, "job", "show", "0000000000"); code != 1 {
		t.Fatalf("show of an unknown job exited %d", code)
	}
	out, code = ferry(t, dataDir, "job", "resume", id)
	if code != 1 {
		t.Fatalf("resume after ACKNOWLEDGED exited %d: %s", code, out)
	}
	s.stop(syscall.SIGTERM)
	if s.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("ferry dev exited %d after SIGTERM", s.cmd.ProcessState.ExitCode())
	}
}

// TestKillMidTransferAndRestart: kill the whole stack (SIGKILL, and SIGTERM
// for a graceful stop) while a file is half transferred, start it again on
// the same data directory, and see the job resume with a Range request and
// finish with an exact file and a read model equal to a fresh replay; jobs
// that were settled before show the same status after the restart.
func TestKillMidTransferAndRestart(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) { killAndRestart(t, sig) })
	}
}

func killAndRestart(t *testing.T, sig syscall.Signal) {
	const size, gate = 48 << 20, 20 << 20
	o := servicestest.NewOrigin(t)
	g := o.GateNext(size, gate)
	dataDir, root := t.TempDir(), t.TempDir()
	tuning := []string{"--checkpoint-interval", "50ms", "--ack-wait", "2s", "--reconcile-interval", "1s"}
	s := startStack(t, dataDir, root, o.CAFile, tuning...)
	dest := filepath.Join(root, "big.bin")

	// A settled job, to compare before and after the restart.
	out, code := ferry(t, dataDir, "job", "create", "--name", "settled", o.URL(size), filepath.Join(root, "other.bin"))
	if code != 0 {
		t.Fatal("create failed")
	}
	settled := strings.TrimSpace(out)
	if _, code := ferry(t, dataDir, "job", "cancel", settled); code != 0 {
		t.Fatal("cancel failed")
	}

	out, code = ferry(t, dataDir, "job", "create", "--name", "restart", "--resume", o.URL(size), dest)
	if code != 0 {
		t.Fatalf("create exited %d", code)
	}
	id := strings.TrimSpace(out)

	select {
	case <-g.Reached:
	case <-time.After(60 * time.Second):
		t.Fatal("the origin never sent the first part")
	}
	// Wait for a checkpoint that covers bytes staged durably.
	waitFor(t, 30*time.Second, "a progress checkpoint", func() bool {
		j := showJob(t, dataDir, id)
		return j.State == job.Transferring && j.Files[0].BytesTransferred > 0
	})
	before := showJob(t, dataDir, settled)
	s.stop(sig)
	if sig == syscall.SIGTERM && s.cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("ferry dev exited %d after SIGTERM", s.cmd.ProcessState.ExitCode())
	}
	g.Open()

	s2 := startStack(t, dataDir, root, o.CAFile, tuning...)
	if diff := cmp.Diff(before, showJob(t, dataDir, settled)); diff != "" {
		t.Fatalf("a settled job changed across the restart:\n%s", diff)
	}
	var j job.Job
	waitFor(t, 90*time.Second, "the job to be transferred after the restart", func() bool {
		j = showJob(t, dataDir, id)
		return j.State == job.Transferred || j.State == job.Errored
	})
	if j.State != job.Transferred {
		t.Fatalf("job after restart: %s %+v", j.State, j.Error)
	}
	if j.Attempt < 2 {
		t.Fatalf("attempt %d: the job should have been leased again after the restart", j.Attempt)
	}
	resumed := false
	for _, r := range o.Ranges()[1:] {
		if strings.HasPrefix(r, "bytes=") && r != "bytes=0-" {
			resumed = true
		}
	}
	if !resumed {
		t.Fatalf("no resumed Range request after the restart; requests had Range %q", o.Ranges())
	}
	if _, code := ferry(t, dataDir, "job", "complete", id); code != 0 {
		t.Fatal("complete failed")
	}
	waitFor(t, 30*time.Second, "ACKNOWLEDGED", func() bool {
		j = showJob(t, dataDir, id)
		return j.State == job.Acknowledged
	})
	if got := servicestest.FileSum(t, dest); got != servicestest.Sum(size) {
		t.Fatal("file differs from the origin's")
	}
	assertReplayEqualsReadModel(t, s2.info.NATSURL, id, j)
}

// connectJetStream connects to the NATS server at url with opts, for a
// test that reads the stack's streams and buckets directly; the connection
// closes when the test ends.
func connectJetStream(t *testing.T, url string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// assertReplayEqualsReadModel replays the job's events straight from
// JetStream and compares the result with what the API served.
func assertReplayEqualsReadModel(t *testing.T, natsURL, id string, served job.Job) {
	t.Helper()
	js := connectJetStream(t, natsURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := store.Load(ctx, events.JobSubject(id), 0)
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := job.Replay(evs)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(replayed, served); diff != "" {
		t.Fatalf("read model differs from a fresh replay (-replay +served):\n%s", diff)
	}
}

// TestTransferWithoutStack: with no `ferry dev` running, `ferry transfer`
// starts an embedded stack in its own process for the one transfer, and the
// job's history stays in the data directory.
func TestTransferWithoutStack(t *testing.T) {
	const size = 3 << 20
	o := servicestest.NewOrigin(t)
	dataDir, dir := t.TempDir(), t.TempDir()
	dest := filepath.Join(dir, "sub", "f.bin")
	cmd := exec.Command(ferryBin, "transfer", o.URL(size), dest)
	// The embedded agent trusts the origin's CA through the system pool.
	cmd.Env = append(os.Environ(), "FERRY_DATA_DIR="+dataDir, "SSL_CERT_FILE="+o.CAFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("transfer: %v\n%s", err, out)
	}
	sum := servicestest.Sum(size)
	if !strings.Contains(string(out), sum+"  "+dest) {
		t.Fatalf("transfer output lacks the file's sha256:\n%s", out)
	}
	if got := servicestest.FileSum(t, dest); got != sum {
		t.Fatalf("sha256 %s, want %s", got, sum)
	}
	if _, err := os.Stat(filepath.Join(dataDir, services.DevInfoFile)); !os.IsNotExist(err) {
		t.Fatalf("the embedded stack left %s behind (%v)", services.DevInfoFile, err)
	}
}

// TestIdentities: the dev stack's CLI identity, whoami, and certificates
// made with `ferry ca` that the coordinator does not trust.
func TestIdentities(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	startStack(t, dataDir, root, o.CAFile)

	out, code := ferry(t, dataDir, "whoami", "--channel-binding", "-o", "json")
	if code != 0 {
		t.Fatalf("whoami exited %d", code)
	}
	var info struct {
		Principal, Role, SHA1, ChannelBinding string `json:",omitempty"`
		Flags                                 []string
		Verified                              bool
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.Principal, "spiffe://ferry.dev/admin/") || info.Role != "admin" || !info.Verified || len(info.SHA1) != 40 {
		t.Fatalf("whoami: %s", out)
	}
	if !strings.Contains(out, `"channel_binding": "tls-exporter=`) {
		t.Fatalf("whoami --channel-binding lacks the binding: %s", out)
	}

	// A user from another CA: the coordinator reports, but refuses.
	other := t.TempDir()
	if _, code := ferry(t, dataDir, "ca", "init", "--dir", other, "--trust-domain", "elsewhere.test"); code != 0 {
		t.Fatal("ca init failed")
	}
	if _, code := ferry(t, dataDir, "ca", "init", "--dir", other); code == 0 {
		t.Fatal("ca init overwrote an existing CA")
	}
	if _, code := ferry(t, dataDir, "ca", "issue", "--dir", other, "--role", "user", "--name", "bob"); code != 0 {
		t.Fatal("ca issue failed")
	}
	if _, code := ferry(t, dataDir, "ca", "issue", "--dir", other, "--role", "pirate", "--name", "x"); code == 0 {
		t.Fatal("ca issue accepted an unknown role")
	}
	bob := []string{"--cert", filepath.Join(other, "bob.pem"), "--key", filepath.Join(other, "bob-key.pem")}
	cmd := exec.Command(ferryBin, append([]string{"job", "list"}, bob...)...)
	cmd.Env = append(os.Environ(), "FERRY_DATA_DIR="+dataDir)
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "CERT_E_UNTRUSTEDROOT") {
		t.Fatalf("a foreign certificate was not refused with its verdict: %v %s", err, msg)
	}
	out, code = ferry(t, dataDir, append([]string{"whoami", "-o", "json"}, bob...)...)
	if code != 0 || !strings.Contains(out, `"verified": false`) || !strings.Contains(out, "CERT_E_UNTRUSTEDROOT") {
		t.Fatalf("whoami with a foreign certificate: %d %s", code, out)
	}
}

// TestCertStores: `ferry cert import|list|remove` against the dev stack's
// certvault, with PEM and PKCS#12 files and the BITS errors for bad input.
func TestCertStores(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	startStack(t, dataDir, root, o.CAFile)
	dir := t.TempDir()
	certPEM, keyPEM, pfx := clientCertFiles(t, "alice@example.test", "s3cret")
	pemFile := filepath.Join(dir, "alice.pem")
	pfxFile := filepath.Join(dir, "alice.pfx")
	passFile := filepath.Join(dir, "pass")
	wrongFile := filepath.Join(dir, "wrong")
	for name, b := range map[string][]byte{pemFile: append(certPEM, keyPEM...), pfxFile: pfx, passFile: []byte("s3cret\n"), wrongFile: []byte("nope")} {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, code := ferry(t, dataDir, "cert", "import", "--pem", pemFile, "-o", "json")
	if code != 0 {
		t.Fatalf("import pem: %d", code)
	}
	var info struct{ SHA1, Store string }
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.SHA1) != 40 || info.Store != "MY" {
		t.Fatalf("import answer %s: %v", out, err)
	}
	if _, code := ferry(t, dataDir, "cert", "import", "--store", "Apps", "--pfx", pfxFile, "--password-file", passFile); code != 0 {
		t.Fatal("import pfx failed")
	}
	for _, tc := range []struct {
		args []string
		code string
	}{
		{[]string{"cert", "import", "--store", "Apps", "--pfx", pfxFile, "--password-file", wrongFile}, "E_INVALIDARG"},
		{[]string{"cert", "list", "--location", "9"}, "E_NOTIMPL"},
		{[]string{"cert", "list", "--store", strings.Repeat("S", 300)}, "BG_E_STRING_TOO_LONG"},
		{[]string{"cert", "list", "--store", "NOSUCH"}, "ERROR_FILE_NOT_FOUND"},
		{[]string{"cert", "remove", strings.Repeat("ab", 20), "--store", "Apps"}, "CRYPT_E_NOT_FOUND"},
		{[]string{"cert", "remove", "abcd"}, "RPC_X_BAD_STUB_DATA"},
	} {
		cmd := exec.Command(ferryBin, tc.args...)
		cmd.Env = append(os.Environ(), "FERRY_DATA_DIR="+dataDir)
		msg, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(msg), tc.code) {
			t.Fatalf("ferry %v: %v %s; want %s", tc.args, err, msg, tc.code)
		}
	}
	out, code = ferry(t, dataDir, "cert", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, info.SHA1) {
		t.Fatalf("list: %d %s", code, out)
	}
	if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, string(keyPEM[40:80])) {
		t.Fatal("list shows key material")
	}
	if _, code := ferry(t, dataDir, "cert", "remove", info.SHA1); code != 0 {
		t.Fatal("remove failed")
	}
	out, _ = ferry(t, dataDir, "cert", "list", "-o", "json")
	if strings.Contains(out, info.SHA1) {
		t.Fatalf("removed certificate still listed: %s", out)
	}
}

// clientCertFiles makes a self-signed client-authentication certificate and
// returns it as PEM, its key as PEM, and both as a PKCS#12 file.
func clientCertFiles(t *testing.T, cn, password string) (certPEM, keyPEM, pfx []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: cn, Organization: []string{"Example"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pfx, err = pkcs12.Modern2023.Encode(key, cert, nil, password)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), pfx
}
