package coordinator_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

type env struct {
	t      *testing.T
	srv    *httptest.Server
	ca     *identity.CA
	client *http.Client // alice, a user
	svc    *coordinator.Service
	store  events.Store
	js     jetstream.JetStream
	vault  *certvault.Vault // nil unless made by newEnvWithVault
}

func newEnv(t *testing.T) *env { t.Helper(); return newEnvWith(t, false) }

// newEnvWithVault is newEnv with a real certvault on the same JetStream as
// the coordinator's certificate lookup.
func newEnvWithVault(t *testing.T) *env { t.Helper(); return newEnvWith(t, true) }

func newEnvWith(t *testing.T, withVault bool, tweak ...func(*coordinator.Config)) *env {
	t.Helper()
	_, _, js := eventstest.StartServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA("ferry.test")
	if err != nil {
		t.Fatal(err)
	}
	auth := &identity.Authenticator{Roots: ca.Pool(), Roles: identity.RoleMap{TrustDomain: "ferry.test"}}
	cfg := coordinator.Config{Auth: auth, ReconcileInterval: time.Hour}
	for _, f := range tweak {
		f(&cfg)
	}
	var vault *certvault.Vault
	if withVault {
		kek := make([]byte, 32)
		if _, err := rand.Read(kek); err != nil {
			t.Fatal(err)
		}
		keyring, err := certvault.NewKeyring(map[int][]byte{1: kek})
		if err != nil {
			t.Fatal(err)
		}
		if vault, err = certvault.New(ctx, js, store, keyring, zerolog.Nop()); err != nil {
			t.Fatal(err)
		}
		cfg.Certs, cfg.Headers = vault, vault
	}
	svc, err := coordinator.New(ctx, cfg, zerolog.Nop(), js, store)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = svc.Run(ctx) })
	srv := httptest.NewUnstartedServer(svc.Handler())
	srv.TLS = identity.ServerTLSConfig(issue(t, ca, identity.RoleService, "coordinator", "127.0.0.1"), ca.Pool())
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); cancel(); wg.Wait() })
	e := &env{t: t, srv: srv, svc: svc, store: store, js: js, ca: ca, vault: vault}
	e.client = e.as(identity.RoleUser, "alice")
	return e
}

func issue(t *testing.T, ca *identity.CA, role identity.Role, name string, ips ...string) tls.Certificate {
	t.Helper()
	req := identity.IssueRequest{Role: role, Name: name}
	for _, ip := range ips {
		req.IPs = append(req.IPs, net.ParseIP(ip))
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// as returns an HTTPS client presenting a certificate for role/name.
func (e *env) as(role identity.Role, name string) *http.Client {
	cfg := identity.ClientTLSConfig(issue(e.t, e.ca, role, name), e.ca.Pool())
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func (e *env) do(method, path, body string) (int, map[string]any, http.Header) {
	e.t.Helper()
	return e.doAs(e.client, method, path, body)
}

func (e *env) doAs(c *http.Client, method, path, body string) (int, map[string]any, http.Header) {
	e.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, r)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			e.t.Fatalf("%s %s: body %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode, m, resp.Header
}

func (e *env) create(body string) string {
	e.t.Helper()
	status, m, _ := e.do("POST", "/v1/jobs", body)
	if status != http.StatusCreated {
		e.t.Fatalf("create: %d %v", status, m)
	}
	return m["id"].(string)
}

func (e *env) eventCount(id string) int {
	e.t.Helper()
	evs, err := e.store.Load(context.Background(), events.JobSubject(id), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return len(evs)
}

const goodFile = `{"remote_url":"https://origin.test/a.bin","local_name":"/data/a.bin"}`

// TestBadInput: every malformed or illegal request gets a precise problem
// document with its BITS symbol and changes nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	empty := e.create(`{"display_name":"empty"}`)
	full := e.create(`{"display_name":"full","files":[` + goodFile + `]}`)
	done := e.create(`{"display_name":"done","files":[` + goodFile + `]}`)
	if st, m, _ := e.do("POST", "/v1/jobs/"+done+"/cancel", ""); st != 200 || m["code"] != "S_OK" {
		t.Fatalf("cancel: %d %v", st, m)
	}
	long := strings.Repeat("x", 257)
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
		job                      string // job whose events must not change
	}{
		{"unknown job", "GET", "/v1/jobs/01a20101-0000-7000-8000-000000000000", "", 404, "BG_E_NOT_FOUND", ""},
		{"unknown job action", "POST", "/v1/jobs/01a20101-0000-7000-8000-000000000000/resume", "", 404, "BG_E_NOT_FOUND", ""},
		{"bad job id", "GET", "/v1/jobs/a.b", "", 404, "BG_E_NOT_FOUND", ""},
		{"unknown action", "POST", "/v1/jobs/" + full + "/explode", "", 404, "ERROR_NOT_FOUND", full},
		{"malformed JSON", "POST", "/v1/jobs", `{"display_name":`, 400, "E_INVALIDARG", ""},
		{"not an object", "POST", "/v1/jobs", `[1,2]`, 400, "E_INVALIDARG", ""},
		{"trailing data", "POST", "/v1/jobs", `{} {}`, 400, "E_INVALIDARG", ""},
		{"empty body", "POST", "/v1/jobs", ``, 400, "E_INVALIDARG", ""},
		{"unknown field", "POST", "/v1/jobs", `{"display_name":"x","colour":"red"}`, 400, "E_INVALIDARG", ""},
		{"wrong type", "POST", "/v1/jobs", `{"display_name":7}`, 400, "E_INVALIDARG", ""},
		{"relative destination", "POST", "/v1/jobs", `{"files":[{"remote_url":"https://h/x","local_name":"x.bin"}]}`, 400, "E_INVALIDARG", ""},
		{"escaping destination", "POST", "/v1/jobs", `{"files":[{"remote_url":"https://h/x","local_name":"/data/../../etc/passwd"}]}`, 400, "E_INVALIDARG", ""},
		{"ftp scheme", "POST", "/v1/jobs", `{"files":[{"remote_url":"ftp://h/x","local_name":"/x"}]}`, 400, "ERROR_WINHTTP_UNRECOGNIZED_SCHEME", ""},
		{"file scheme", "POST", "/v1/jobs/" + full + "/files", `{"files":[{"remote_url":"file:///etc/shadow","local_name":"/x"}]}`, 400, "ERROR_WINHTTP_UNRECOGNIZED_SCHEME", full},
		{"display name too long", "POST", "/v1/jobs", `{"display_name":"` + long + `"}`, 400, "BG_E_STRING_TOO_LONG", ""},
		{"rename too long", "PATCH", "/v1/jobs/" + full, `{"display_name":"` + long + `"}`, 400, "BG_E_STRING_TOO_LONG", full},
		{"bad priority", "PATCH", "/v1/jobs/" + full, `{"priority":"URGENT"}`, 400, "E_INVALIDARG", full},
		{"empty file list", "POST", "/v1/jobs/" + full + "/files", `{"files":[]}`, 400, "RPC_X_NULL_REF_POINTER", full},
		{"resume without files", "POST", "/v1/jobs/" + empty + "/resume", "", 409, "BG_E_EMPTY", empty},
		{"create and resume without files", "POST", "/v1/jobs", `{"resume":true}`, 409, "BG_E_EMPTY", ""},
		{"resume after cancel", "POST", "/v1/jobs/" + done + "/resume", "", 409, "BG_E_INVALID_STATE", done},
		{"cancel after cancel", "POST", "/v1/jobs/" + done + "/cancel", "", 409, "BG_E_INVALID_STATE", done},
		{"add file after cancel", "POST", "/v1/jobs/" + done + "/files", `{"files":[` + goodFile + `]}`, 409, "BG_E_INVALID_STATE", done},
		{"set after cancel", "PATCH", "/v1/jobs/" + done, `{"priority":"HIGH"}`, 409, "BG_E_INVALID_STATE", done},
		{"bad state filter", "GET", "/v1/jobs?state=RUNNING", "", 400, "E_INVALIDARG", ""},
		{"action with a body", "POST", "/v1/jobs/" + full + "/suspend", `{"force":true}`, 400, "E_INVALIDARG", full},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := 0
			if tc.job != "" {
				before = e.eventCount(tc.job)
			}
			status, m, h := e.do(tc.method, tc.path, tc.body)
			if status != tc.status || m["code"] != tc.code {
				t.Fatalf("got %d %v, want %d %s", status, m, tc.status, tc.code)
			}
			if ct := h.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q", ct)
			}
			c, ok := job.LookupCode(tc.code)
			if !ok || m["hresult"] != c.HResultString() {
				t.Fatalf("hresult %v, want %s", m["hresult"], c.HResultString())
			}
			if m["detail"] == "" || m["title"] == "" || int(m["status"].(float64)) != tc.status {
				t.Fatalf("incomplete problem document %v", m)
			}
			if tc.job != "" && e.eventCount(tc.job) != before {
				t.Fatalf("a refused request changed job %s", tc.job)
			}
		})
	}
	// A refused create-and-resume still says which job it made.
	status, m, h := e.do("POST", "/v1/jobs", `{"resume":true}`)
	if status != 409 || m["job_id"] == nil || h.Get("Location") == "" {
		t.Fatalf("create+resume refusal: %d %v", status, m)
	}
}

func TestJobLifecycleAndDispatch(t *testing.T) {
	e := newEnv(t)
	id := e.create(`{"display_name":"d","priority":"high","files":[` + goodFile + `]}`)
	status, m, _ := e.do("GET", "/v1/jobs/"+id, "")
	if status != 200 || m["state"] != "SUSPENDED" || m["priority"] != "HIGH" || m["owner"] != "spiffe://ferry.test/user/alice" {
		t.Fatalf("new job: %d %v", status, m)
	}
	status, m, _ = e.do("POST", "/v1/jobs/"+id+"/resume", "")
	if status != 200 || m["code"] != "S_OK" {
		t.Fatalf("resume: %d %v", status, m)
	}
	// A second resume is an idempotent no-op: S_FALSE, no new event.
	n := e.eventCount(id)
	status, m, _ = e.do("POST", "/v1/jobs/"+id+"/resume", "")
	if status != 200 || m["code"] != "S_FALSE" || e.eventCount(id) != n {
		t.Fatalf("second resume: %d %v", status, m)
	}
	// The dispatch is waiting on the pool's subject.
	ctx := context.Background()
	msg, err := e.js.Stream(ctx, dispatch.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := msg.GetLastMsgForSubject(ctx, dispatch.PoolSubject("default", id))
	if err != nil {
		t.Fatalf("no dispatch published: %v", err)
	}
	var c dispatch.Command
	if err := json.Unmarshal(raw.Data, &c); err != nil || c.JobID != id || c.Kind != dispatch.KindTransfer || c.JobSeq == 0 {
		t.Fatalf("dispatch %+v %v", c, err)
	}
	// The read model catches up; list shows the job; suspend works.
	last, _ := e.store.LastSeq(ctx, events.JobSubject(id))
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.svc.Projector().WaitFor(wctx, last); err != nil {
		t.Fatal(err)
	}
	status, m, _ = e.do("GET", "/v1/jobs?state=QUEUED", "")
	if jobs := m["jobs"].([]any); status != 200 || len(jobs) != 1 || jobs[0].(map[string]any)["id"] != id {
		t.Fatalf("list: %d %v", status, m)
	}
	status, m, _ = e.do("POST", "/v1/jobs/"+id+"/suspend", "")
	if status != 200 || m["job"].(map[string]any)["state"] != "SUSPENDED" {
		t.Fatalf("suspend: %d %v", status, m)
	}
	// Complete with nothing staged acknowledges at once, partially.
	status, m, _ = e.do("POST", "/v1/jobs/"+id+"/complete", "")
	if status != 200 || m["code"] != "BG_S_PARTIAL_COMPLETE" || m["job"].(map[string]any)["state"] != "ACKNOWLEDGED" {
		t.Fatalf("complete: %d %v", status, m)
	}
	// ACKNOWLEDGED jobs are no longer listed unless asked for.
	last, _ = e.store.LastSeq(ctx, events.JobSubject(id))
	if err := e.svc.Projector().WaitFor(wctx, last); err != nil {
		t.Fatal(err)
	}
	_, m, _ = e.do("GET", "/v1/jobs", "")
	if len(m["jobs"].([]any)) != 0 {
		t.Fatalf("acknowledged job still listed: %v", m)
	}
	_, m, _ = e.do("GET", "/v1/jobs?all=true", "")
	if len(m["jobs"].([]any)) != 1 {
		t.Fatalf("--all: %v", m)
	}
}

// TestEventStreamResumes: the SSE stream carries each event once with its
// sequence as id, and Last-Event-ID resumes after it.
func TestEventStreamResumes(t *testing.T) {
	e := newEnv(t)
	id := e.create(`{"display_name":"sse","files":[` + goodFile + `]}`)
	read := func(lastID string, want int) []string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/v1/jobs/"+id+"/events", nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("content type %q", ct)
		}
		var ids []string
		buf := make([]byte, 64<<10)
		var acc string
		for len(ids) < want {
			n, err := resp.Body.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.Index(acc, "\n\n")
				if i < 0 {
					break
				}
				block := acc[:i]
				acc = acc[i+2:]
				for _, line := range strings.Split(block, "\n") {
					if v, ok := strings.CutPrefix(line, "id: "); ok {
						ids = append(ids, v)
					}
				}
			}
			if err != nil {
				t.Fatalf("stream ended after %v: %v", ids, err)
			}
		}
		return ids
	}
	first := read("", 2) // JobCreated, FilesAdded
	e.do("POST", "/v1/jobs/"+id+"/resume", "")
	next := read(first[1], 1) // only JobQueued, nothing seen twice
	if next[0] == first[0] || next[0] == first[1] {
		t.Fatalf("resumed stream repeated an event: %v then %v", first, next)
	}
	if status, m, _ := e.do("GET", "/v1/jobs/"+id+"/events?after=x", ""); status != 400 || m["code"] != "E_INVALIDARG" {
		t.Fatalf("bad after: %d %v", status, m)
	}
}

// TestOwnershipAndIdentity: every call needs a verified certificate; a job
// is visible and changeable only by its owner and administrators.
func TestOwnershipAndIdentity(t *testing.T) {
	e := newEnv(t)
	id := e.create(`{"display_name":"alice's","files":[` + goodFile + `]}`)
	bob := e.as(identity.RoleUser, "bob")
	admin := e.as(identity.RoleAdmin, "root")
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/v1/jobs/" + id, ""},
		{"POST", "/v1/jobs/" + id + "/cancel", ""},
		{"PATCH", "/v1/jobs/" + id, `{"priority":"LOW"}`},
		{"POST", "/v1/jobs/" + id + "/files", `{"files":[` + goodFile + `]}`},
		{"GET", "/v1/jobs/" + id + "/events", ""},
	} {
		n := e.eventCount(id)
		status, m, _ := e.doAs(bob, tc.method, tc.path, tc.body)
		if status != 403 || m["code"] != "E_ACCESSDENIED" || m["hresult"] != "0x80070005" {
			t.Fatalf("bob %s %s: %d %v", tc.method, tc.path, status, m)
		}
		if e.eventCount(id) != n {
			t.Fatalf("bob's refused %s changed the job", tc.path)
		}
	}
	last, _ := e.store.LastSeq(context.Background(), events.JobSubject(id))
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.svc.Projector().WaitFor(wctx, last); err != nil {
		t.Fatal(err)
	}
	if _, m, _ := e.doAs(bob, "GET", "/v1/jobs", ""); len(m["jobs"].([]any)) != 0 {
		t.Fatalf("bob lists alice's job: %v", m)
	}
	if _, m, _ := e.doAs(admin, "GET", "/v1/jobs", ""); len(m["jobs"].([]any)) != 1 {
		t.Fatalf("admin does not list alice's job: %v", m)
	}
	if status, m, _ := e.doAs(admin, "POST", "/v1/jobs/"+id+"/suspend", ""); status != 200 {
		t.Fatalf("admin suspend: %d %v", status, m)
	}

	// No certificate: 401 everywhere, but the session endpoint says 404
	// ERROR_NOT_FOUND (nothing was received).
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.ca.Pool()}}}
	if status, m, _ := e.doAs(anon, "GET", "/v1/jobs", ""); status != 401 || m["code"] != "E_UNAUTHENTICATED" {
		t.Fatalf("anonymous list: %d %v", status, m)
	}
	if status, m, _ := e.doAs(anon, "GET", identity.SessionPath, ""); status != 404 || m["code"] != "ERROR_NOT_FOUND" || m["hresult"] != "0x80070490" {
		t.Fatalf("anonymous whoami: %d %v", status, m)
	}
	// A certificate from another CA is reported, not trusted.
	other, err := identity.NewCA("ferry.test")
	if err != nil {
		t.Fatal(err)
	}
	mallory := &http.Client{Transport: &http.Transport{TLSClientConfig: identity.ClientTLSConfig(issue(t, other, identity.RoleAdmin, "mallory"), e.ca.Pool())}}
	if status, m, _ := e.doAs(mallory, "GET", "/v1/jobs/"+id, ""); status != 401 {
		t.Fatalf("foreign CA: %d %v", status, m)
	}
	status, m, _ := e.doAs(mallory, "GET", identity.SessionPath, "")
	if status != 200 || m["verified"] != false || m["principal"] != "" {
		t.Fatalf("foreign CA whoami: %d %v", status, m)
	}
	// Agents and services have no business on the job API.
	agent := e.as(identity.RoleAgent, "a1")
	if status, m, _ := e.doAs(agent, "POST", "/v1/jobs", `{}`); status != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("agent creating a job: %d %v", status, m)
	}
	status, m, _ = e.do("GET", identity.SessionPath, "")
	if status != 200 || m["principal"] != "spiffe://ferry.test/user/alice" || m["role"] != "user" {
		t.Fatalf("alice whoami: %d %v", status, m)
	}
}
