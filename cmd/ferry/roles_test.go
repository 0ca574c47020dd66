package main

// The service roles as separate processes: `ferry certvault run` with an
// embedded NATS server (TLS with client certificates, users with
// passwords), `ferry coordinator run` and `ferry agent run` connected to it
// over TLS, and the CLI talking to that coordinator and certvault.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/nats-io/nats.go"
)

// roleProc is one `ferry <role> run` process.
type roleProc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
}

func (p *roleProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *roleProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// startRole runs `ferry args...` with env added to the test's environment.
func startRole(t *testing.T, name string, env []string, args ...string) *roleProc {
	t.Helper()
	p := &roleProc{t: t, name: name, cmd: exec.Command(ferryBin, args...)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = io.Discard, p
	dieWithTest(p.cmd)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, tail(p.logText(), 6000))
		}
	})
	return p
}

// waitLog waits for a JSON log line whose message is msg and returns it.
func (p *roleProc) waitLog(msg string, limit time.Duration) map[string]any {
	p.t.Helper()
	var found map[string]any
	waitFor(p.t, limit, p.name+" to log "+msg, func() bool {
		if p.cmd.ProcessState != nil {
			p.t.Fatalf("%s exited (%v) before logging %q:\n%s", p.name, p.cmd.ProcessState, msg, tail(p.logText(), 4000))
		}
		sc := bufio.NewScanner(strings.NewReader(p.logText()))
		for sc.Scan() {
			var line map[string]any
			if json.Unmarshal(sc.Bytes(), &line) == nil && line["message"] == msg {
				found = line
				return true
			}
		}
		return false
	})
	return found
}

// stop signals the process and returns its exit code and how long it took
// to exit.
func (p *roleProc) stop(sig syscall.Signal) (int, time.Duration) {
	start := time.Now()
	_ = p.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s did not exit within 30 s of %v", p.name, sig)
	}
	return p.cmd.ProcessState.ExitCode(), time.Since(start)
}

func healthz(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// rolePKI is what the roles tests start their processes with: a CA made by
// `ferry ca` in <dir>/pki with the identities issued by it, and
// <dir>/nats.conf, an embedded NATS server's configuration that requires
// client certificates of that CA and has the users certvault (pw-vault),
// coordinator (pw-coord) and agent (pw-agent, which may not publish
// commands).
type rolePKI struct {
	dir      string // the CA's directory
	natsConf string
}

// newRolePKI makes a rolePKI with trust domain td, issuing every identity
// of ids ("role/name"; services also for 127.0.0.1 and localhost). run runs
// the ferry CLI and fails the test if it fails.
func newRolePKI(t *testing.T, dir, td string, run func(args ...string), ids ...string) rolePKI {
	t.Helper()
	p := rolePKI{dir: filepath.Join(dir, "pki"), natsConf: filepath.Join(dir, "nats.conf")}
	run("ca", "init", "--dir", p.dir, "--trust-domain", td)
	for _, id := range ids {
		role, name, _ := strings.Cut(id, "/")
		args := []string{"ca", "issue", "--dir", p.dir, "--role", role, "--name", name}
		if role == "service" {
			args = append(args, "--host", "127.0.0.1", "--host", "localhost")
		}
		run(args...)
	}
	conf := fmt.Sprintf(`tls {
  cert_file: %q
  key_file: %q
  ca_file: %q
  verify: true
}
authorization {
  users: [
    {user: certvault, password: pw-vault}
    {user: coordinator, password: pw-coord}
    {user: agent, password: pw-agent, permissions: {publish: {deny: ["ferry.cmd.>"]}}}
  ]
}
`, p.file("nats.pem"), p.file("nats-key.pem"), p.file("ca.pem"))
	if err := os.WriteFile(p.natsConf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// file is a file of the CA's directory: ca.pem, <name>.pem, <name>-key.pem.
func (p rolePKI) file(name string) string { return filepath.Join(p.dir, name) }

// identity is the flags that present name's certificate.
func (p rolePKI) identity(name string) []string {
	return []string{"--cert", p.file(name + ".pem"), "--key", p.file(name + "-key.pem"), "--ca-cert", p.file("ca.pem")}
}

// TestRolesAsProcesses: certvault (hosting NATS), a coordinator and agents as
// separate processes over NATS with TLS and passwords; a transfer through
// the coordinator; a job certificate checked in the remote certvault; an
// agent drained by SIGTERM mid-transfer whose job another agent resumes.
func TestRolesAsProcesses(t *testing.T) {
	dir, dataDir := t.TempDir(), t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		out, code := ferry(t, dataDir, args...)
		if code != 0 {
			t.Fatalf("ferry %v exited %d", args, code)
		}
		return out
	}
	pki := newRolePKI(t, dir, "roles.test", func(args ...string) { run(args...) },
		"service/certvault", "service/coordinator", "service/nats", "agent/a1", "agent/a2", "admin/root")
	file, identity, natsConf := pki.file, pki.identity, pki.natsConf
	// certvault's file config: the coordinator may read owners' stores.
	vaultJSON := filepath.Join(dir, "certvault.json")
	if err := os.WriteFile(vaultJSON, []byte(`{"roles": {"overrides": {"spiffe://roles.test/service/coordinator": "admin"}},
		"listen": "127.0.0.1:0", "health_addr": "127.0.0.1:0", "log": {"level": "debug"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)

	vault := startRole(t, "certvault", []string{"FERRY_NATS_PASSWORD=pw-vault", "FERRY_VAULT_KEK=1:" + base64.StdEncoding.EncodeToString(kek)},
		append([]string{"certvault", "run", "--config", vaultJSON, "--id", "v1", "--data-dir", filepath.Join(dir, "vault"),
			"--nats-embedded", "--nats-server-config", natsConf, "--nats-listen", "127.0.0.1:0", "--nats-user", "certvault"},
			identity("certvault")...)...)
	natsAddr := strings.TrimPrefix(vault.waitLog("embedded nats server running", 30*time.Second)["url"].(string), "nats://")
	vaultURL := vault.waitLog("certvault API listening", 30*time.Second)["url"].(string)
	vaultHealth := vault.waitLog("health listener running", 30*time.Second)["addr"].(string)
	vault.waitLog("certvault running", 30*time.Second)
	natsURL := "tls://" + natsAddr
	natsClient := func(name string) []string {
		return []string{"--nats-url", natsURL, "--nats-ca", file("ca.pem"), "--nats-cert", file(name + ".pem"), "--nats-key", file(name + "-key.pem")}
	}

	coord := startRole(t, "coordinator", []string{"FERRY_NATS_PASSWORD=pw-coord", "FERRY_NOTIFY_SECRET=0123456789abcdef-roles-test"},
		append(append([]string{"coordinator", "run", "--id", "c1", "--listen", "127.0.0.1:0", "--certvault-url", vaultURL,
			"--nats-user", "coordinator", "--reconcile-interval", "1s", "--health-addr", "127.0.0.1:0"},
			natsClient("coordinator")...), identity("coordinator")...)...)
	coordURL := coord.waitLog("coordinator API listening", 30*time.Second)["url"].(string)
	coordHealth := coord.waitLog("health listener running", 30*time.Second)["addr"].(string)
	coord.waitLog("coordinator running", 30*time.Second)

	o := servicestest.NewOrigin(t)
	root := filepath.Join(dir, "root")
	// The agent takes most settings from the environment.
	startAgent := func(id string) (*roleProc, string) {
		env := []string{"FERRY_NATS_PASSWORD=pw-agent", "FERRY_NATS_USER=agent", "FERRY_ROOT=" + root,
			"FERRY_ORIGIN_CA=" + o.CAFile, "FERRY_CERTVAULT_URL=" + vaultURL, "FERRY_CHECKPOINT_INTERVAL=50ms", "FERRY_CHECKPOINT_BYTES=1048576",
			"FERRY_ACK_WAIT=5s", "FERRY_HEALTH_ADDR=127.0.0.1:0"}
		p := startRole(t, "agent "+id, env, append(append([]string{"agent", "run", "--id", id, "--drain-timeout", "10s"},
			natsClient(id)...), identity(id)...)...)
		health := p.waitLog("health listener running", 30*time.Second)["addr"].(string)
		p.waitLog("agent running", 30*time.Second)
		return p, health
	}
	a1, a1Health := startAgent("a1")

	for _, h := range []string{vaultHealth, coordHealth, a1Health} {
		if code, body := healthz(t, h); code != 200 || !strings.Contains(body, `"status":"ok"`) {
			t.Fatalf("healthz %s: %d %s", h, code, body)
		}
	}
	resp, err := http.Get("http://" + a1Health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `ferry_up{role="agent",id="a1"} 1`) {
		t.Fatalf("agent metrics:\n%s", metrics)
	}

	cli := func(args ...string) (string, int) {
		t.Helper()
		return ferry(t, dataDir, append(append(args, "--addr", coordURL), identity("root")...)...)
	}

	// 1. A transfer through the coordinator, done by the agent.
	const small = 3 << 20
	dest := filepath.Join(root, "small.bin")
	if out, code := cli("transfer", o.URL(small), dest); code != 0 {
		t.Fatalf("transfer exited %d:\n%s", code, out)
	}
	if got := servicestest.FileSum(t, dest); got != servicestest.Sum(small) {
		t.Fatalf("transferred file sha256 %s, want %s", got, servicestest.Sum(small))
	}

	// 2. A job certificate, checked in the remote certvault as the owner
	// sees it (CURRENT_USER of the admin "root").
	certPEM, keyPEM, _ := clientCertFiles(t, "root@example.test", "x")
	pemFile := filepath.Join(dir, "client.pem")
	if err := os.WriteFile(pemFile, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := ferry(t, dataDir, append([]string{"cert", "import", "--pem", pemFile, "--vault-addr", vaultURL, "-o", "json"}, identity("root")...)...)
	if code != 0 {
		t.Fatalf("cert import exited %d", code)
	}
	var imported struct{ SHA1 string }
	if err := json.Unmarshal([]byte(out), &imported); err != nil || len(imported.SHA1) != 40 {
		t.Fatalf("cert import answer %s: %v", out, err)
	}
	out, code = cli("job", "create", o.URL(small), filepath.Join(root, "certjob.bin"))
	if code != 0 {
		t.Fatal("job create failed")
	}
	certJob := strings.TrimSpace(out)
	if out, code := cli("job", "cert", "set", certJob, "--thumbprint", imported.SHA1); code != 0 {
		t.Fatalf("job cert set exited %d: %s", code, out)
	}
	out, code = cli("job", "cert", "show", certJob, "-o", "json")
	if code != 0 || !strings.Contains(out, imported.SHA1) || !strings.Contains(out, `"CURRENT_USER"`) || !strings.Contains(out, `"store": "MY"`) {
		t.Fatalf("job cert show: %d %s", code, out)
	}
	if _, code := cli("job", "cert", "set", certJob, "--thumbprint", strings.Repeat("ab", 20)); code != 1 {
		t.Fatalf("an unknown thumbprint was accepted")
	}
	cli("job", "cancel", certJob)

	// 3. An agent drained by SIGTERM mid-transfer; another resumes the job.
	const size, gate = 24 << 20, 8 << 20
	g := o.GateNext(size, gate)
	t.Cleanup(g.Open) // before the origin closes, which waits for the gated response
	bigDest := filepath.Join(root, "big.bin")
	out, code = cli("job", "create", "--resume", o.URL(size), bigDest)
	if code != 0 {
		t.Fatal("job create failed")
	}
	id := strings.TrimSpace(out)
	select {
	case <-g.Reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the origin never sent the first part")
	}
	show := func() job.Job {
		out, code := cli("job", "show", id, "-o", "json")
		if code != 0 {
			t.Fatalf("job show exited %d", code)
		}
		var j job.Job
		if err := json.Unmarshal([]byte(out), &j); err != nil {
			t.Fatalf("job show: %v\n%s", err, out)
		}
		return j
	}
	waitFor(t, 30*time.Second, "a progress checkpoint", func() bool {
		j := show()
		return j.State == job.Transferring && j.Files[0].BytesTransferred > 0
	})
	exit, took := a1.stop(syscall.SIGTERM)
	if exit != 0 || took > 10*time.Second {
		t.Fatalf("agent a1 after SIGTERM: exit %d after %s", exit, took)
	}
	if !strings.Contains(a1.logText(), "job handed back at its last checkpoint") {
		t.Fatalf("a1 did not hand the job back:\n%s", tail(a1.logText(), 3000))
	}
	t.Logf("agent a1 drained in %s", took.Round(time.Millisecond))
	g.Open()
	a2, _ := startAgent("a2")
	var j job.Job
	waitFor(t, 60*time.Second, "agent a2 to finish the job", func() bool {
		j = show()
		return j.State == job.Transferred || j.State == job.Errored
	})
	if j.State != job.Transferred || j.Attempt < 2 {
		t.Fatalf("job after the drain: %s attempt %d %+v", j.State, j.Attempt, j.Error)
	}
	resumed := false
	for _, r := range o.Ranges() {
		resumed = resumed || strings.HasPrefix(r, "bytes=") && r != "bytes=0-"
	}
	if !resumed {
		t.Fatalf("a2 did not resume with a Range request; requests had %q", o.Ranges())
	}
	if _, code := cli("job", "complete", id); code != 0 {
		t.Fatal("complete failed")
	}
	waitFor(t, 30*time.Second, "ACKNOWLEDGED", func() bool { return show().State == job.Acknowledged })
	if got := servicestest.FileSum(t, bigDest); got != servicestest.Sum(size) {
		t.Fatal("the resumed file differs from the origin's")
	}

	// 4. The agents' NATS user may not publish commands.
	if err := publishAs(natsURL, "agent", "pw-agent", file("a2.pem"), file("a2-key.pem"), file("ca.pem"), "ferry.cmd.pool.default.x"); err == nil ||
		!strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		t.Fatalf("an agent published a command: %v", err)
	}

	// Every role stops cleanly on SIGTERM.
	for _, p := range []*roleProc{a2, coord, vault} {
		if exit, took := p.stop(syscall.SIGTERM); exit != 0 {
			t.Fatalf("%s exited %d after SIGTERM (%s)", p.name, exit, took)
		}
	}
}

// publishAs publishes to subject as a NATS user and reports the server's
// refusal.
func publishAs(url, user, password, certFile, keyFile, caFile, subject string) error {
	errc := make(chan error, 1)
	nc, err := nats.Connect(url, nats.UserInfo(user, password), nats.ClientCert(certFile, keyFile), nats.RootCAs(caFile),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errc <- err:
			default:
			}
		}))
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := nc.Publish(subject, []byte("{}")); err != nil {
		return err
	}
	_ = nc.Flush()
	select {
	case err := <-errc:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("published without a refusal")
	}
}

// TestRoleStartupErrors: bad configuration and unreachable NATS end the
// process with status 1 and say why, every problem at once.
func TestRoleStartupErrors(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(ferryBin, "coordinator", "run", "--listen", "nowhere", "--cert", filepath.Join(dir, "c.pem"),
		"--key", filepath.Join(dir, "k.pem"), "--nats-url", "http://x", "--nats-replicas", "9")
	cmd.Env = append(os.Environ(), "FERRY_NOTIFY_SECRET=short")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("bad config: %v\n%s", err, out)
	}
	for _, want := range []string{"invalid configuration (", "listen \"nowhere\"", "tls.cert_file", "tls.ca_file", "nats.url", "nats.replicas 9", "notify secret"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bad config: the report lacks %q:\n%s", want, out)
		}
	}
	start := time.Now()
	cmd = exec.Command(ferryBin, "agent", "run", "--nats-url", "nats://127.0.0.1:1", "--nats-connect-timeout", "500ms",
		"--root", filepath.Join(dir, "root"), "--data-dir", dir)
	out, err = cmd.CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "could be reached within 500ms") {
		t.Fatalf("NATS unreachable: %v\n%s", err, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("NATS unreachable: took %s", d)
	}
}
