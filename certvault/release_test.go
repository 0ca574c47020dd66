package certvault

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/hpke"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

const releaseTD = "ferry.test"

// releaseEnv is a vault served like services/vault.go does: TLS 1.3 only,
// the identity middleware in front, POST /v1/releases mounted.
type releaseEnv struct {
	*env
	ca    *identity.CA
	repo  *jobstore.Repo
	srv   *httptest.Server
	cert  tls.Certificate // the imported client certificate
	key   crypto.Signer   // its private key
	ref   job.SetClientCertificate
	forms map[string][]byte
}

func newReleaseEnv(t *testing.T) *releaseEnv {
	t.Helper()
	e := newEnv(t)
	ca, err := identity.NewCA(releaseTD)
	if err != nil {
		t.Fatal(err)
	}
	auth := &identity.Authenticator{Roots: ca.Pool(), Roles: identity.RoleMap{TrustDomain: releaseTD}}
	repo := &jobstore.Repo{Store: e.store}
	mux := http.NewServeMux()
	mux.Handle("GET "+identity.SessionPath, auth.SessionHandler())
	mux.Handle(ReleasePath, e.v.ReleaseHandler(auth, repo))
	srv := httptest.NewUnstartedServer(auth.Middleware(mux, identity.SessionPath))
	srvCert := identityCert(t, ca, identity.IssueRequest{Role: identity.RoleService, Name: "certvault", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	srv.TLS = identity.ServerTLSConfig(srvCert, ca.Pool())
	srv.TLS.MinVersion = tls.VersionTLS13
	srv.StartTLS()
	t.Cleanup(srv.Close)

	req, leaf, key := pemImport(t, newPKI(t), leafOpts{})
	info, err := e.v.Import(context.Background(), alice, CurrentUser, "MY", req)
	if err != nil {
		t.Fatal(err)
	}
	return &releaseEnv{env: e, ca: ca, repo: repo, srv: srv,
		cert: tls.Certificate{Certificate: [][]byte{leaf.Raw}, Leaf: leaf}, key: key,
		ref: job.SetClientCertificate{Location: int(CurrentUser), LocationName: info.Location.String(), Store: info.Store,
			SHA1: info.SHA1, By: job.CertByID, CallerPrincipal: alice.Principal},
		forms: secretForms(t, key)}
}

func identityCert(t *testing.T, ca *identity.CA, req identity.IssueRequest) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// client is the TLS configuration of an identity of the test CA.
func (re *releaseEnv) client(t *testing.T, role identity.Role, name string) *tls.Config {
	t.Helper()
	return identity.ClientTLSConfig(identityCert(t, re.ca, identity.IssueRequest{Role: role, Name: name}), re.ca.Pool())
}

// run executes job commands, failing the test on an error.
func (re *releaseEnv) run(t *testing.T, id string, cmds ...job.Command) {
	t.Helper()
	for _, c := range cmds {
		if _, err := re.repo.Execute(context.Background(), id, c, events.Meta{Actor: alice.Principal}, nil); err != nil {
			t.Fatalf("%s %s: %v", job.CommandName(c), id, err)
		}
	}
}

var releaseFile = events.FileSpec{RemoteURL: "https://origin.test/f", LocalName: "/data/f"}

// connectingJob is a job with the client certificate, leased by agent and
// CONNECTING.
func (re *releaseEnv) connectingJob(t *testing.T, id, agent string) {
	t.Helper()
	re.run(t, id, job.Create{JobID: id, Owner: alice.Principal, Files: []events.FileSpec{releaseFile}}, re.ref,
		job.Resume{}, job.Lease{Agent: agent}, job.StartConnecting{Agent: agent})
}

// rawRelease sends POST /v1/releases on a connection of its own with the
// Channel-Binding header header(that connection's state) ("" for none).
func (re *releaseEnv) rawRelease(t *testing.T, cfg *tls.Config, header func(*tls.ConnectionState) string, body []byte) (int, []byte, *tls.ConnectionState) {
	t.Helper()
	return re.rawReleaseTo(t, ReleasePath, cfg, header, body)
}

// rawReleaseTo is rawRelease to another path (HeadersReleasePath).
func (re *releaseEnv) rawReleaseTo(t *testing.T, path string, cfg *tls.Config, header func(*tls.ConnectionState) string, body []byte) (int, []byte, *tls.ConnectionState) {
	t.Helper()
	u, _ := url.Parse(re.srv.URL)
	c := cfg.Clone()
	c.ServerName = u.Hostname()
	c.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", u.Host, c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	req, _ := http.NewRequest(http.MethodPost, re.srv.URL+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if h := header(&cs); h != "" {
		req.Header.Set(identity.ChannelBindingHeader, h)
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, &cs
}

func ownBinding(t *testing.T) func(*tls.ConnectionState) string {
	return func(cs *tls.ConnectionState) string {
		cb, err := identity.ChannelBinding(cs)
		if err != nil {
			t.Fatal(err)
		}
		return cb
	}
}

func releaseBody(t *testing.T, jobID string, pub []byte) []byte {
	t.Helper()
	b, err := json.Marshal(ReleaseRequest{JobID: jobID, HPKEPublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newHPKEKey(t *testing.T) hpke.PrivateKey {
	t.Helper()
	k, err := releaseKEM.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// allVaultEvents reads every event of the log up to its last sequence and
// keeps the vault's (env.vaultEvents waits for a vault event to be last).
func (re *releaseEnv) allVaultEvents(t *testing.T) []events.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	last, err := re.lastSeq(ctx)
	if err != nil || last == 0 {
		t.Fatalf("last sequence %d: %v", last, err)
	}
	var out []events.Event
	err = re.store.Subscribe(ctx, events.SubjectPrefix+">", 0, func(ev events.Event) error {
		if ev.Kind == events.KindVault {
			out = append(out, ev)
		}
		if ev.Seq >= last {
			cancel()
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	return out
}

// denials returns the KeyReleaseDenied events of the log.
func (re *releaseEnv) denials(t *testing.T) []*events.KeyReleaseDenied {
	t.Helper()
	var out []*events.KeyReleaseDenied
	for _, ev := range re.allVaultEvents(t) {
		if ev.Type != events.TypeKeyReleaseDenied {
			continue
		}
		p, err := ev.Payload()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p.(*events.KeyReleaseDenied))
	}
	return out
}

func (re *releaseEnv) countReleased(t *testing.T) int {
	t.Helper()
	n := 0
	for _, ev := range re.allVaultEvents(t) {
		if ev.Type == events.TypeKeyReleased {
			n++
		}
	}
	return n
}

// scanAll fails if the key shows up in the event stream or the vault's log.
func (re *releaseEnv) scanAll(t *testing.T) {
	t.Helper()
	scanFor(t, "the event stream", streamBytes(t, re.js, events.StreamName), re.forms)
	scanFor(t, "the vault's log", re.log.Bytes(), re.forms)
}

func TestReleaseFetch(t *testing.T) {
	re := newReleaseEnv(t)
	re.connectingJob(t, "j1", "a1")
	cert, err := Fetch(context.Background(), re.client(t, identity.RoleAgent, "a1"), re.srv.URL, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.Certificate[0], re.cert.Certificate[0]) {
		t.Fatal("Fetch returned another certificate")
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok || !re.cert.Leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(signer.Public()) {
		t.Fatal("the released private key does not match the imported certificate")
	}
	var released []*events.KeyReleased
	for _, ev := range re.allVaultEvents(t) {
		if ev.Type == events.TypeKeyReleased {
			p, _ := ev.Payload()
			released = append(released, p.(*events.KeyReleased))
		}
	}
	if len(released) != 1 {
		t.Fatalf("%d KeyReleased events, want 1", len(released))
	}
	r := released[0]
	if r.Agent != "spiffe://"+releaseTD+"/agent/a1" || r.Job != "j1" || r.Lease != "1" || r.GrantID == "" || r.Owner != alice.Principal || r.SHA1 != re.ref.SHA1 {
		t.Errorf("KeyReleased %+v", r)
	}

	// A transferring job releases too.
	re.run(t, "j1", job.StartTransferring{Agent: "a1", BytesTotal: 10})
	if _, err := Fetch(context.Background(), re.client(t, identity.RoleAgent, "a1"), re.srv.URL, "j1"); err != nil {
		t.Fatalf("TRANSFERRING: %v", err)
	}
	re.scanAll(t)
}

// TestReleaseSealedToTheConnection: the answer is sealed to the request's
// key with the connection's channel binding and the grant in the info; no
// other binding or grant opens it, and the answer holds no key bytes.
func TestReleaseSealedToTheConnection(t *testing.T) {
	re := newReleaseEnv(t)
	re.connectingJob(t, "j1", "a1")
	cfg := re.client(t, identity.RoleAgent, "a1")
	k := newHPKEKey(t)
	status, body, cs := re.rawRelease(t, cfg, ownBinding(t), releaseBody(t, "j1", k.PublicKey().Bytes()))
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	scanFor(t, "the release answer", body, re.forms)
	var rel Release
	if err := json.Unmarshal(body, &rel); err != nil {
		t.Fatal(err)
	}
	if rel.Suite != ReleaseSuite || rel.SHA1 != re.ref.SHA1 || len(rel.Chain) != 1 || rel.NotAfter.IsZero() || len(rel.SHA256) != 64 {
		t.Errorf("answer %+v", rel)
	}
	cb := ownBinding(t)(cs)
	der, err := hpke.Open(k, releaseKDF, releaseAEAD, releaseInfo(cb, rel.GrantID), rel.SealedKey)
	if err != nil {
		t.Fatalf("open with the right info: %v", err)
	}
	if !bytes.Equal(der, pkcs8(t, re.key)) {
		t.Fatal("the sealed key is not the imported key")
	}
	// Another connection's binding, another grant, another key: no.
	_, _, other := re.rawRelease(t, cfg, func(*tls.ConnectionState) string { return "" }, nil)
	for name, open := range map[string]func() error{
		"other binding": func() error {
			_, err := hpke.Open(k, releaseKDF, releaseAEAD, releaseInfo(ownBinding(t)(other), rel.GrantID), rel.SealedKey)
			return err
		},
		"other grant": func() error {
			_, err := hpke.Open(k, releaseKDF, releaseAEAD, releaseInfo(cb, rel.GrantID+"0"), rel.SealedKey)
			return err
		},
		"other key": func() error {
			_, err := hpke.Open(newHPKEKey(t), releaseKDF, releaseAEAD, releaseInfo(cb, rel.GrantID), rel.SealedKey)
			return err
		},
	} {
		if open() == nil {
			t.Errorf("%s opens the sealed key", name)
		}
	}
}

func TestReleaseRefusals(t *testing.T) {
	re := newReleaseEnv(t)
	ctx := context.Background()
	agentA1 := "spiffe://" + releaseTD + "/agent/a1"

	re.connectingJob(t, "ok", "a1")
	// queued: resumed, never leased. leasedq: leased, not yet connecting.
	re.run(t, "queued", job.Create{JobID: "queued", Owner: alice.Principal, Files: []events.FileSpec{releaseFile}}, re.ref, job.Resume{})
	re.run(t, "leasedq", job.Create{JobID: "leasedq", Owner: alice.Principal, Files: []events.FileSpec{releaseFile}}, re.ref, job.Resume{}, job.Lease{Agent: "a1"})
	re.connectingJob(t, "cancelled", "a1")
	re.run(t, "cancelled", job.Cancel{})
	re.run(t, "nocert", job.Create{JobID: "nocert", Owner: alice.Principal, Files: []events.FileSpec{releaseFile}},
		job.Resume{}, job.Lease{Agent: "a1"}, job.StartConnecting{Agent: "a1"})

	a1 := re.client(t, identity.RoleAgent, "a1")
	a2 := re.client(t, identity.RoleAgent, "a2")
	user := re.client(t, identity.RoleUser, "alice")
	pub := newHPKEKey(t).PublicKey().Bytes()

	// A's binding, taken from a connection of its own.
	var copied string
	re.rawRelease(t, a1, func(cs *tls.ConnectionState) string { copied = ownBinding(t)(cs); return "" }, nil)

	for _, tc := range []struct {
		name    string
		cfg     *tls.Config
		header  func(*tls.ConnectionState) string
		job     string
		status  int
		code    string
		hr      string
		reason  string
		audited bool
	}{
		{"no lease", a1, ownBinding(t), "queued", 403, "E_ACCESSDENIED", hrAccessDenied, "the agent does not hold the job's lease", true},
		{"another agent", a2, ownBinding(t), "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "the agent does not hold the job's lease", true},
		{"copied binding", a1, func(*tls.ConnectionState) string { return copied }, "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "does not match this TLS connection", true},
		{"missing binding", a1, func(*tls.ConnectionState) string { return "" }, "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "has no Channel-Binding header", true},
		{"cancelled", a1, ownBinding(t), "cancelled", 403, "E_ACCESSDENIED", hrAccessDenied, "the agent does not hold the job's lease", true},
		{"not connecting", a1, ownBinding(t), "leasedq", 409, "BG_E_INVALID_STATE", "", "keys are released only while it is CONNECTING or TRANSFERRING", true},
		{"user principal", user, ownBinding(t), "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "this needs agent", true},
		{"no certificate", a1, ownBinding(t), "nocert", 404, "CRYPT_E_NOT_FOUND", hrCryptNotFnd, "the job has no client certificate", true},
		{"no such job", a1, ownBinding(t), "nosuchjob", 404, "BG_E_NOT_FOUND", "", "not found", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(re.denials(t))
			status, body, _ := re.rawRelease(t, tc.cfg, tc.header, releaseBody(t, tc.job, pub))
			scanFor(t, "the refusal", body, re.forms)
			var p Problem
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("status %d: %s", status, body)
			}
			if p.Code != tc.code || (tc.hr != "" && p.HResult != tc.hr) || !strings.Contains(p.Detail, tc.reason) {
				t.Fatalf("status %d, problem %+v; want %s %q", status, p, tc.code, tc.reason)
			}
			if tc.status != 0 && status != tc.status {
				t.Errorf("status %d, want %d", status, tc.status)
			}
			if strings.Contains(string(body), "sealed_key") {
				t.Error("a refusal carries a sealed key")
			}
			ds := re.denials(t)
			if !tc.audited {
				return
			}
			if len(ds) != before+1 {
				t.Fatalf("%d new KeyReleaseDenied events, want 1", len(ds)-before)
			}
			d := ds[len(ds)-1]
			if d.Code != tc.code || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("KeyReleaseDenied %+v", d)
			}
			// Once the job is read, the denial names its certificate.
			if tc.code == "BG_E_INVALID_STATE" || strings.Contains(tc.reason, "lease") {
				if d.SHA1 != re.ref.SHA1 || d.Owner != alice.Principal || d.Job != tc.job {
					t.Errorf("KeyReleaseDenied %+v does not name the job's certificate", d)
				}
			}
		})
	}
	if n := re.countReleased(t); n != 0 {
		t.Errorf("%d KeyReleased events after refusals only", n)
	}
	// Fetch reports a refusal as the job error.
	_, err := Fetch(ctx, a2, re.srv.URL, "ok")
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	_, err = Fetch(ctx, a1, re.srv.URL, "nocert")
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
	if ds := re.denials(t); ds[len(ds)-1].Agent != agentA1 || ds[len(ds)-1].Job != "nocert" {
		t.Errorf("KeyReleaseDenied %+v", ds[len(ds)-1])
	}
	re.scanAll(t)
}

func TestReleaseBadRequests(t *testing.T) {
	re := newReleaseEnv(t)
	re.connectingJob(t, "ok", "a1")
	a1 := re.client(t, identity.RoleAgent, "a1")
	for name, tc := range map[string]struct {
		body string
		code string
	}{
		"unknown field": {`{"job_id":"ok","hpke_public_key":"` + strings.Repeat("A", 43) + `=","x":1}`, "E_INVALIDARG"},
		"short key":     {`{"job_id":"ok","hpke_public_key":"AAAA"}`, "E_INVALIDARG"},
		"no key":        {`{"job_id":"ok"}`, "RPC_X_NULL_REF_POINTER"},
		"no job":        {`{"hpke_public_key":"` + strings.Repeat("A", 43) + `="}`, "RPC_X_NULL_REF_POINTER"},
		"too big":       {`{"job_id":"` + strings.Repeat("a", 5000) + `"}`, "E_INVALIDARG"},
	} {
		status, body, _ := re.rawRelease(t, a1, ownBinding(t), []byte(tc.body))
		var p Problem
		_ = json.Unmarshal(body, &p)
		if status < 400 || p.Code != tc.code {
			t.Errorf("%s: status %d, %s; want %s", name, status, body, tc.code)
		}
	}
	if n := re.countReleased(t); n != 0 {
		t.Errorf("%d KeyReleased events", n)
	}
}

// TestReleaseAuditUnwritable: no audit event, no key.
func TestReleaseAuditUnwritable(t *testing.T) {
	re := newReleaseEnv(t)
	re.connectingJob(t, "j1", "a1")
	a1 := re.client(t, identity.RoleAgent, "a1")
	re.store.fail.Store(true)
	status, body, _ := re.rawRelease(t, a1, ownBinding(t), releaseBody(t, "j1", newHPKEKey(t).PublicKey().Bytes()))
	if status != http.StatusServiceUnavailable || strings.Contains(string(body), "sealed_key") {
		t.Fatalf("status %d: %s", status, body)
	}
	var p Problem
	if err := json.Unmarshal(body, &p); err != nil || p.Code != "ERROR_SERVICE_UNAVAILABLE" || !strings.Contains(p.Detail, "the key was not released") {
		t.Fatalf("problem %+v (%v)", p, err)
	}
	scanFor(t, "the refusal", body, re.forms)
	_, err := Fetch(context.Background(), a1, re.srv.URL, "j1")
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	re.store.fail.Store(false)
	if n := re.countReleased(t); n != 0 {
		t.Errorf("%d KeyReleased events", n)
	}
	re.scanAll(t)
}

func TestReleaseMethodAndAuth(t *testing.T) {
	re := newReleaseEnv(t)
	c := re.srv.Client()
	resp, err := c.Get(re.srv.URL + ReleasePath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized { // no client certificate: the middleware refuses
		t.Errorf("GET without a certificate: %d", resp.StatusCode)
	}
	// A handler without its dependencies refuses.
	h := re.v.ReleaseHandler(nil, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, ReleasePath, strings.NewReader("{}")))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "sealed_key") {
		t.Errorf("unconfigured handler: %d %s", rec.Code, rec.Body)
	}
	// GET with an agent certificate: 405.
	a1 := re.client(t, identity.RoleAgent, "a1")
	a1.RootCAs = re.ca.Pool()
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: a1}}
	defer cl.CloseIdleConnections()
	resp, err = cl.Get(re.srv.URL + ReleasePath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}
