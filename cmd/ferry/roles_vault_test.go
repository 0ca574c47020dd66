package main

// The coordinator's certvault calls with certvault as a process of its own:
// `ferry job cert set --subject` and write-only custom headers through
// `ferry coordinator run` and `ferry certvault run`, the agent sending both
// to an origin that requires them.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/nats-io/nats.go"
)

// certTokenOrigin is an HTTPS origin that serves its file only to requests
// made with the client certificate whose SHA-1 it is given and carrying
// "X-Api-Key: <token>"; it counts both kinds.
type certTokenOrigin struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	sha1   string
	ok     int
	denied []string
}

func newCertTokenOrigin(t *testing.T, token string) *certTokenOrigin {
	t.Helper()
	ca := servicestest.NewCA(t, "roles vault origin CA")
	o := &certTokenOrigin{caFile: ca.File}
	body := bytes.Repeat([]byte("ferry certvault separate "), 1000)
	o.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var got string
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			sum := sha1.Sum(r.TLS.PeerCertificates[0].Raw)
			got = hex.EncodeToString(sum[:])
		}
		o.mu.Lock()
		why := ""
		switch {
		case got == "" || got != o.sha1:
			why = "client certificate " + got
		case !slices.Equal(r.Header.Values("X-Api-Key"), []string{token}):
			why = "no API key"
		}
		if why == "" {
			o.ok++
		} else {
			o.denied = append(o.denied, why)
		}
		o.mu.Unlock()
		if why != "" {
			http.Error(w, why, http.StatusForbidden)
			return
		}
		http.ServeContent(w, r, "file.bin", time.Unix(1700000000, 0), bytes.NewReader(body))
	}))
	o.srv.EnableHTTP2 = false
	o.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "localhost", x509.ExtKeyUsageServerAuth)},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}
	o.srv.StartTLS()
	t.Cleanup(o.srv.Close)
	return o
}

func (o *certTokenOrigin) expect(sha1 string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sha1 = sha1
}

func (o *certTokenOrigin) counts() (int, []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ok, slices.Clone(o.denied)
}

// TestRolesVaultSeparate: certvault (hosting NATS), the coordinator and an
// agent as separate processes; the coordinator has no admin role in
// certvault. alice names her job's client certificate by subject name (an
// ambiguous name is refused with certvault's E_INVALIDARG, across both
// hops) and makes an API key header write-only; the agent transfers the
// file from an origin that requires both. The key's value reaches the
// origin and nothing else: no log line of any role (trace level), no event,
// no CLI output or API answer. Clearing write-only headers deletes the
// values in certvault.
func TestRolesVaultSeparate(t *testing.T) {
	dir, dataDir := t.TempDir(), t.TempDir()
	var outputs []string // every CLI output, for the scan
	run := func(w cliIdentity, args ...string) cliRun {
		t.Helper()
		r := runCLIAs(t, dataDir, w, args...)
		outputs = append(outputs, r.stdout, r.stderr)
		return r
	}
	must := func(w cliIdentity, args ...string) string {
		t.Helper()
		r := run(w, args...)
		if r.code != 0 {
			t.Fatalf("ferry %v exited %d: %s%s", args, r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}
	none := cliIdentity{name: "none"}
	pki := newRolePKI(t, dir, "rolesvault.test", func(args ...string) { must(none, args...) },
		"service/certvault", "service/coordinator", "service/nats", "agent/a1", "user/alice")
	file, identity, natsConf := pki.file, pki.identity, pki.natsConf
	// No roles.overrides: the coordinator is role service in certvault.
	vaultJSON := filepath.Join(dir, "certvault.json")
	if err := os.WriteFile(vaultJSON, []byte(`{"listen": "127.0.0.1:0"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	trace := "FERRY_LOG_LEVEL=trace"

	vault := startRole(t, "certvault", []string{trace, "FERRY_NATS_PASSWORD=pw-vault", "FERRY_VAULT_KEK=1:" + base64.StdEncoding.EncodeToString(kek)},
		append([]string{"certvault", "run", "--config", vaultJSON, "--id", "v1", "--data-dir", filepath.Join(dir, "vault"),
			"--nats-embedded", "--nats-server-config", natsConf, "--nats-listen", "127.0.0.1:0", "--nats-user", "certvault"},
			identity("certvault")...)...)
	natsAddr := strings.TrimPrefix(vault.waitLog("embedded nats server running", 30*time.Second)["url"].(string), "nats://")
	vaultURL := vault.waitLog("certvault API listening", 30*time.Second)["url"].(string)
	vault.waitLog("certvault running", 30*time.Second)
	natsURL := "tls://" + natsAddr
	natsClient := func(name string) []string {
		return []string{"--nats-url", natsURL, "--nats-ca", file("ca.pem"), "--nats-cert", file(name + ".pem"), "--nats-key", file(name + "-key.pem")}
	}
	coord := startRole(t, "coordinator", []string{trace, "FERRY_NATS_PASSWORD=pw-coord", "FERRY_NOTIFY_SECRET=0123456789abcdef-roles-vault"},
		append(append([]string{"coordinator", "run", "--id", "c1", "--listen", "127.0.0.1:0", "--certvault-url", vaultURL,
			"--nats-user", "coordinator"}, natsClient("coordinator")...), identity("coordinator")...)...)
	coordURL := coord.waitLog("coordinator API listening", 30*time.Second)["url"].(string)
	coord.waitLog("coordinator running", 30*time.Second)

	token := "wo-" + hex.EncodeToString(kek[:12]) // random, and nowhere else
	o := newCertTokenOrigin(t, token)
	root := filepath.Join(dir, "root")
	agent := startRole(t, "agent a1", []string{trace, "FERRY_NATS_PASSWORD=pw-agent", "FERRY_NATS_USER=agent", "FERRY_ROOT=" + root,
		"FERRY_ORIGIN_CA=" + o.caFile, "FERRY_CERTVAULT_URL=" + vaultURL},
		append(append([]string{"agent", "run", "--id", "a1"}, natsClient("a1")...), identity("a1")...)...)
	agent.waitLog("agent running", 30*time.Second)

	alice := cliIdentity{name: "alice", flags: append([]string{"--addr", coordURL}, identity("alice")...)}
	aliceVault := cliIdentity{name: "alice", flags: append([]string{"--vault-addr", vaultURL}, identity("alice")...)}

	// alice's certificates in her CURRENT_USER MY: "Example, roles-vault-
	// client" (the origin's) and "Example, roles-vault-other".
	var imported []string
	for _, cn := range []string{"roles-vault-client", "roles-vault-other"} {
		certPEM, keyPEM, _ := clientCertFiles(t, cn, "x")
		pemFile := filepath.Join(dir, cn+".pem")
		if err := os.WriteFile(pemFile, append(certPEM, keyPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		var info struct{ SHA1 string }
		if err := json.Unmarshal([]byte(must(aliceVault, "cert", "import", "--pem", pemFile, "-o", "json")), &info); err != nil || len(info.SHA1) != 40 {
			t.Fatalf("cert import: %v", err)
		}
		imported = append(imported, info.SHA1)
		blk, _ := pem.Decode(certPEM)
		if sum := sha1.Sum(blk.Bytes); hex.EncodeToString(sum[:]) != info.SHA1 {
			t.Fatalf("imported %s, not the certificate given", info.SHA1)
		}
	}
	o.expect(imported[0])

	id := strings.TrimSpace(must(alice, "job", "create", o.srv.URL+"/a.bin", filepath.Join(root, "a.bin")))

	// By subject name: ambiguous first (the coordinator answers with
	// certvault's code and its list of candidates), then exact.
	r := run(alice, "job", "cert", "set", id, "--subject", "Example")
	if r.code != 1 || !strings.Contains(r.stderr, "E_INVALIDARG") || !strings.Contains(r.stderr, "ambiguous") ||
		!strings.Contains(r.stderr, imported[0]) || !strings.Contains(r.stderr, imported[1]) {
		t.Fatalf("an ambiguous subject name: exit %d, stderr %q", r.code, r.stderr)
	}
	r = run(alice, "job", "cert", "set", id, "--subject", "Example, roles-vault-nobody", "-o", "json")
	if r.code != 1 || !strings.Contains(r.stderr, `"CRYPT_E_NOT_FOUND"`) || !strings.Contains(r.stderr, `"0x80092004"`) {
		t.Fatalf("a subject name that matches nothing: exit %d, stderr %q", r.code, r.stderr)
	}
	r = run(alice, "job", "cert", "set", id, "--subject", "Example, roles-vault-client", "--location", "LOCAL_MACHINE")
	if r.code != 1 || !strings.Contains(r.stderr, "CRYPT_E_NOT_FOUND") {
		t.Fatalf("a shared store without the certificate: exit %d, stderr %q", r.code, r.stderr)
	}
	must(alice, "job", "cert", "set", id, "--subject", "example,ROLES-VAULT-CLIENT")
	var shown struct{ Location, Store, Thumbprint, Subject string }
	if err := json.Unmarshal([]byte(must(alice, "job", "cert", "show", id, "-o", "json")), &shown); err != nil ||
		shown.Thumbprint != imported[0] || shown.Location != "CURRENT_USER" || shown.Store != "MY" || !strings.Contains(shown.Subject, "roles-vault-client") {
		t.Fatalf("job cert show: %+v %v", shown, err)
	}

	// The API key, write-only; then the transfer.
	a := decodeAction(t, run(alice, "job", "headers", "write-only", id, "-H", "x-api-key: "+token, "-o", "json"))
	if a.Code != "S_OK" || !slices.Equal(a.Job.Options.WriteOnlyHeaders, []string{"X-Api-Key"}) {
		t.Fatalf("write-only: %+v %+v", a.Code, a.Job.Options)
	}
	must(alice, "job", "resume", id)
	var j job.Job
	waitFor(t, 60*time.Second, "the job to transfer", func() bool {
		if err := json.Unmarshal([]byte(must(alice, "job", "show", id, "-o", "json")), &j); err != nil {
			t.Fatal(err)
		}
		return j.State == job.Transferred || j.State == job.Errored
	})
	if j.State != job.Transferred {
		ok, denied := o.counts()
		t.Fatalf("job %s %+v; origin: %d served, refused %q", j.State, j.Error, ok, denied)
	}
	if ok, denied := o.counts(); ok == 0 || len(denied) != 0 {
		t.Fatalf("origin: %d served, refused %q", ok, denied)
	}
	must(alice, "job", "complete", id)
	waitFor(t, 30*time.Second, "ACKNOWLEDGED", func() bool {
		if err := json.Unmarshal([]byte(must(alice, "job", "show", id, "-o", "json")), &j); err != nil {
			t.Fatal(err)
		}
		return j.State == job.Acknowledged
	})
	if b, err := os.ReadFile(filepath.Join(root, "a.bin")); err != nil || !bytes.HasPrefix(b, []byte("ferry certvault separate")) {
		t.Fatalf("the transferred file: %v", err)
	}

	// Another job: write-only headers set, then cleared — the values are
	// deleted in certvault.
	id2 := strings.TrimSpace(must(alice, "job", "create", o.srv.URL+"/b.bin", filepath.Join(root, "b.bin")))
	must(alice, "job", "headers", "write-only", id2, "-H", "X-Api-Key: "+token)
	must(alice, "job", "headers", "clear-write-only", id2)
	must(alice, "job", "cancel", id2)

	// API reads as the wire carries them.
	must(alice, "job", "show", id, "-o", "json")
	must(alice, "job", "list", "--all", "-o", "json")

	// certvault's story, from the event log: stored, released (with the
	// key), and for the second job stored then deleted by its owner.
	stream := eventstest.StreamText(t, connectJetStream(t, natsURL, nats.UserInfo("certvault", "pw-vault"),
		nats.ClientCert(file("certvault.pem"), file("certvault-key.pem")), nats.RootCAs(file("ca.pem"))))
	rolesVaultWant(t, "the event log", stream,
		events.Subject(events.KindVault, events.VaultHeadersID(id))+"\n",
		`"type":"`+events.TypeWriteOnlyHeadersStored+`"`, `"type":"`+events.TypeWriteOnlyHeadersReleased+`"`,
		`"type":"KeyReleased"`, events.Subject(events.KindVault, events.VaultHeadersID(id2))+"\n",
		`"type":"`+events.TypeWriteOnlyHeadersDeleted+`"`, `"reason":"removed"`, `"write_only_headers":["X-Api-Key"]`)
	if strings.Contains(stream, events.TypeWriteOnlyHeadersReleaseDenied) {
		t.Error("a header release was refused")
	}

	// The value reached the origin and nothing else.
	for _, p := range []*roleProc{vault, coord, agent} {
		if exit, _ := p.stop(syscall.SIGTERM); exit != 0 {
			t.Errorf("%s exited %d", p.name, exit)
		}
	}
	logs := map[string]string{"certvault's log": vault.logText(), "the coordinator's log": coord.logText(), "the agent's log": agent.logText()}
	rolesVaultWant(t, "certvault's log", logs["certvault's log"], `"message":"write-only headers stored"`, `"message":"write-only headers released"`, `"level":"debug"`)
	logs["the event log"] = stream
	logs["the CLI's output"] = strings.Join(outputs, "\n")
	for where, text := range logs {
		for form, v := range rolesVaultForms(token) {
			if strings.Contains(text, v) {
				t.Errorf("%s holds the header value (%s)", where, form)
			}
		}
	}
}

// rolesVaultForms are the ways a value could leak.
func rolesVaultForms(v string) map[string]string {
	forms := map[string]string{"plain": v, "hex": hex.EncodeToString([]byte(v)), "json-escaped": strings.Trim(rolesVaultJSON(v), `"`)}
	for k := range 3 {
		if enc := base64.StdEncoding.EncodeToString([]byte(v)[k:]); len(enc) > 8 {
			forms[fmt.Sprintf("base64@%d", k)] = enc[:len(enc)-4]
		}
	}
	return forms
}

func rolesVaultJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func rolesVaultWant(t *testing.T, where, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q", where, w)
		}
	}
}
