package certvault

import (
	"context"
	"crypto/hpke"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
)

const hrNotFound = "0x80070490"

// headerSecret is a header value that must appear nowhere but in the
// released lines, with the forms in which it could leak.
type headerSecret struct {
	value string
	forms map[string][]byte
}

func newHeaderSecret(t *testing.T) headerSecret {
	t.Helper()
	v := "Bearer wo-" + hex.EncodeToString(testKEK(t)[:16])
	forms := map[string][]byte{"value": []byte(v), "token": []byte(v[len("Bearer "):])}
	for k := range 3 {
		if enc := base64.StdEncoding.EncodeToString([]byte(v)[k:]); len(enc) > 8 {
			forms[fmt.Sprintf("value base64@%d", k)] = []byte(enc[:len(enc)-4])
		}
	}
	forms["value hex"] = []byte(hex.EncodeToString([]byte(v)))
	return headerSecret{value: v, forms: forms}
}

// headerEvents returns the payloads of the vault events of job id's
// write-only headers.
func headerEvents(t *testing.T, e *env, id string) []events.Payload {
	t.Helper()
	evs, err := e.store.Load(context.Background(), events.Subject(events.KindVault, events.VaultHeadersID(id)), 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Payload
	for i := range evs {
		p, err := evs[i].Payload()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func TestStoreAndDeleteHeaders(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	sec := newHeaderSecret(t)
	names, err := e.v.StoreHeaders(ctx, alice, "j1", []string{"authorization: " + sec.value, "X-Tenant: blue"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"Authorization", "X-Tenant"}) {
		t.Fatalf("names %q", names)
	}
	// Encrypted at rest: the record holds names and an envelope only.
	ent, err := e.v.kv.Get(ctx, headerKey("j1"))
	if err != nil {
		t.Fatal(err)
	}
	scanFor(t, "the stored record", ent.Value(), sec.forms)
	if strings.Contains(string(ent.Value()), "blue") {
		t.Error("the stored record holds a header value in the clear")
	}
	var rec headerRecord
	if err := json.Unmarshal(ent.Value(), &rec); err != nil || rec.Owner != alice.Principal || rec.Values.KEK != 1 || rec.StoreEvent == "" {
		t.Fatalf("record %+v (%v)", rec, err)
	}

	// Replace; then the audit trail says so, by name.
	if _, err := e.v.StoreHeaders(ctx, alice, "j1", []string{"X-Api-Key: k2"}); err != nil {
		t.Fatal(err)
	}
	ps := headerEvents(t, e, "j1")
	if len(ps) != 2 {
		t.Fatalf("%d events", len(ps))
	}
	if s := ps[0].(*events.WriteOnlyHeadersStored); s.Job != "j1" || s.Owner != alice.Principal || !slices.Equal(s.Names, names) || s.Replaced || s.KEKVersion != 1 {
		t.Errorf("first %+v", s)
	}
	if s := ps[1].(*events.WriteOnlyHeadersStored); !slices.Equal(s.Names, []string{"X-Api-Key"}) || !s.Replaced {
		t.Errorf("second %+v", s)
	}

	// Refusals change nothing.
	for _, tc := range []struct {
		name    string
		caller  Caller
		job     string
		headers []string
		code    string
		hr      string
	}{
		{"no headers", alice, "j1", nil, "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"not a header", alice, "j1", []string{"no colon"}, "E_INVALIDARG", hrInvalidArg},
		{"a line break", alice, "j1", []string{"X-A: a\r\nX-B: b"}, "E_INVALIDARG", hrInvalidArg},
		{"reserved", alice, "j1", []string{"Host: h"}, "E_INVALIDARG", hrInvalidArg},
		{"too long", alice, "j1", []string{"X-Big: " + strings.Repeat("v", job.MaxCustomHeaders)}, "BG_E_STRING_TOO_LONG", hrTooLong},
		{"no caller", Caller{}, "j1", []string{"X-A: a"}, "E_ACCESSDENIED", hrAccessDenied},
		{"no job", alice, "", []string{"X-A: a"}, "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"bad job", alice, "a.b", []string{"X-A: a"}, "E_INVALIDARG", hrInvalidArg},
		{"job too long for its subject", alice, strings.Repeat("j", 125), []string{"X-A: a"}, "E_INVALIDARG", hrInvalidArg},
	} {
		_, err := e.v.StoreHeaders(ctx, tc.caller, tc.job, tc.headers)
		wantCode(t, err, tc.code, tc.hr)
		if err != nil && strings.Contains(err.Error(), "v v v") {
			t.Errorf("%s: the error quotes the value", tc.name)
		}
	}
	if n := len(headerEvents(t, e, "j1")); n != 2 {
		t.Fatalf("%d events after refusals", n)
	}

	// Fail closed: no audit, nothing stored, nothing deleted.
	e.store.fail.Store(true)
	_, err = e.v.StoreHeaders(ctx, alice, "j2", []string{"X-A: a"})
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	_, err = e.v.DeleteHeaders(ctx, alice, "j1", events.HeadersDeletedByOwner)
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	e.store.fail.Store(false)
	if _, err := e.v.kv.Get(ctx, headerKey("j2")); err != jetstream.ErrKeyNotFound {
		t.Fatalf("j2 stored without its audit event: %v", err)
	}
	if _, err := e.v.kv.Get(ctx, headerKey("j1")); err != nil {
		t.Fatalf("j1 deleted without its audit event: %v", err)
	}

	// Delete: audited, purged; a second delete has nothing to do.
	if ok, err := e.v.DeleteHeaders(ctx, admin, "j1", events.HeadersDeletedOwnershipMoved); err != nil || !ok {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if _, err := e.v.kv.Get(ctx, headerKey("j1")); err != jetstream.ErrKeyNotFound {
		t.Fatalf("record after delete: %v", err)
	}
	if ok, err := e.v.DeleteHeaders(ctx, admin, "j1", events.HeadersDeletedByOwner); err != nil || ok {
		t.Fatalf("second delete: %v %v", ok, err)
	}
	ps = headerEvents(t, e, "j1")
	if len(ps) != 3 {
		t.Fatalf("%d events", len(ps))
	}
	if d := ps[2].(*events.WriteOnlyHeadersDeleted); d.Job != "j1" || !slices.Equal(d.Names, []string{"X-Api-Key"}) || d.Reason != "ownership-changed" {
		t.Errorf("deleted %+v", d)
	}
	scanFor(t, "the event stream", streamBytes(t, e.js, events.StreamName), sec.forms)
	scanFor(t, "the vault's log", e.log.Bytes(), sec.forms)
	if !strings.Contains(string(e.log.Bytes()), "write-only headers stored") {
		t.Error("the log does not say the headers were stored")
	}
}

// headersJob makes job id (owner alice) with the write-only header lines
// stored in the vault and named in the job's events, leased by agent and
// CONNECTING.
func (re *releaseEnv) headersJob(t *testing.T, id, agent string, lines ...string) {
	t.Helper()
	names, err := re.v.StoreHeaders(context.Background(), alice, id, lines)
	if err != nil {
		t.Fatal(err)
	}
	re.run(t, id, job.Create{JobID: id, Owner: alice.Principal, Files: []events.FileSpec{releaseFile}},
		job.MakeHeadersWriteOnly{Names: names, CallerPrincipal: alice.Principal},
		job.Resume{}, job.Lease{Agent: agent}, job.StartConnecting{Agent: agent})
}

func (re *releaseEnv) headerDenials(t *testing.T, id string) []*events.WriteOnlyHeadersReleaseDenied {
	t.Helper()
	var out []*events.WriteOnlyHeadersReleaseDenied
	for _, p := range headerEvents(t, re.env, id) {
		if d, ok := p.(*events.WriteOnlyHeadersReleaseDenied); ok {
			out = append(out, d)
		}
	}
	return out
}

func (re *releaseEnv) headerReleases(t *testing.T, id string) []*events.WriteOnlyHeadersReleased {
	t.Helper()
	var out []*events.WriteOnlyHeadersReleased
	for _, p := range headerEvents(t, re.env, id) {
		if d, ok := p.(*events.WriteOnlyHeadersReleased); ok {
			out = append(out, d)
		}
	}
	return out
}

// newHeadersEnv is newReleaseEnv with the header release mounted.
func newHeadersEnv(t *testing.T) *releaseEnv {
	t.Helper()
	re := newReleaseEnv(t)
	auth := &identity.Authenticator{Roots: re.ca.Pool(), Roles: identity.RoleMap{TrustDomain: releaseTD}}
	mux := http.NewServeMux()
	mux.Handle(ReleasePath, re.v.ReleaseHandler(auth, re.repo))
	mux.Handle(HeadersReleasePath, re.v.HeadersReleaseHandler(auth, re.repo))
	re.srv.Config.Handler = auth.Middleware(mux, identity.SessionPath)
	return re
}

func TestHeadersRelease(t *testing.T) {
	re := newHeadersEnv(t)
	ctx := context.Background()
	sec := newHeaderSecret(t)
	re.headersJob(t, "j1", "a1", "Authorization: "+sec.value, "X-Tenant: blue")
	a1 := re.client(t, identity.RoleAgent, "a1")
	lines, err := FetchHeaders(ctx, a1, re.srv.URL, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lines, []string{"Authorization: " + sec.value, "X-Tenant: blue"}) {
		t.Fatal("FetchHeaders returned other lines")
	}
	rs := re.headerReleases(t, "j1")
	if len(rs) != 1 {
		t.Fatalf("%d WriteOnlyHeadersReleased events", len(rs))
	}
	if r := rs[0]; r.Agent != "spiffe://"+releaseTD+"/agent/a1" || r.Job != "j1" || r.Lease != "1" || r.GrantID == "" ||
		r.Owner != alice.Principal || !slices.Equal(r.Names, []string{"Authorization", "X-Tenant"}) {
		t.Errorf("released %+v", r)
	}
	// TRANSFERRING releases too.
	re.run(t, "j1", job.StartTransferring{Agent: "a1", BytesTotal: 10})
	if _, err := FetchHeaders(ctx, a1, re.srv.URL, "j1"); err != nil {
		t.Fatalf("TRANSFERRING: %v", err)
	}

	// The answer is sealed to the connection: no other binding, grant or
	// key opens it, nor the key release's info; and it names, never shows.
	k := newHPKEKey(t)
	status, body, cs := re.rawReleaseTo(t, HeadersReleasePath, a1, ownBinding(t), releaseBody(t, "j1", k.PublicKey().Bytes()))
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	scanFor(t, "the release answer", body, sec.forms)
	var rel HeadersRelease
	if err := json.Unmarshal(body, &rel); err != nil || rel.Suite != ReleaseSuite || rel.JobID != "j1" {
		t.Fatalf("answer %+v (%v)", rel, err)
	}
	cb := ownBinding(t)(cs)
	if _, err := hpke.Open(k, releaseKDF, releaseAEAD, headersInfo(cb, rel.GrantID), rel.SealedHeaders); err != nil {
		t.Fatalf("open with the right info: %v", err)
	}
	for name, info := range map[string][]byte{
		"key release info": releaseInfo(cb, rel.GrantID),
		"other grant":      headersInfo(cb, rel.GrantID+"0"),
		"other binding":    headersInfo(cb+"x", rel.GrantID),
	} {
		if _, err := hpke.Open(k, releaseKDF, releaseAEAD, info, rel.SealedHeaders); err == nil {
			t.Errorf("%s opens the sealed headers", name)
		}
	}
	re.scanHeaders(t, sec)
}

func (re *releaseEnv) scanHeaders(t *testing.T, sec headerSecret) {
	t.Helper()
	scanFor(t, "the event stream", streamBytes(t, re.js, events.StreamName), sec.forms)
	scanFor(t, "the vault's log", re.log.Bytes(), sec.forms)
}

func TestHeadersReleaseRefusals(t *testing.T) {
	re := newHeadersEnv(t)
	ctx := context.Background()
	sec := newHeaderSecret(t)
	line := "Authorization: " + sec.value
	run := func(id string, cmds ...job.Command) { re.run(t, id, cmds...) }
	create := func(id string) job.Create {
		return job.Create{JobID: id, Owner: alice.Principal, Files: []events.FileSpec{releaseFile}}
	}
	names := []string{"Authorization"}
	store := func(id string, owner Caller) {
		if _, err := re.v.StoreHeaders(ctx, owner, id, []string{line}); err != nil {
			t.Fatal(err)
		}
	}

	re.headersJob(t, "ok", "a1", line)
	// queued: never leased; leasedq: leased, not connecting yet.
	store("queued", alice)
	run("queued", create("queued"), job.MakeHeadersWriteOnly{Names: names, CallerPrincipal: alice.Principal}, job.Resume{})
	store("leasedq", alice)
	run("leasedq", create("leasedq"), job.MakeHeadersWriteOnly{Names: names, CallerPrincipal: alice.Principal}, job.Resume{}, job.Lease{Agent: "a1"})
	// none: the job lists no write-only headers (and certvault has none).
	run("none", create("none"), job.Resume{}, job.Lease{Agent: "a1"}, job.StartConnecting{Agent: "a1"})
	// taken: an admin took ownership; the record stayed behind (the
	// coordinator's deletion is best effort) and the job lists none.
	re.headersJob(t, "taken", "a1", line)
	run("taken", job.TakeOwnership{NewOwner: admin.Principal})
	run("taken", job.Resume{}, job.Lease{Agent: "a1"}, job.StartConnecting{Agent: "a1"})
	// retaken: the same, and the new owner named the same header without
	// storing a value: the record is the earlier owner's.
	re.headersJob(t, "retaken", "a1", line)
	run("retaken", job.TakeOwnership{NewOwner: admin.Principal},
		job.MakeHeadersWriteOnly{Names: names, CallerPrincipal: admin.Principal},
		job.Resume{}, job.Lease{Agent: "a1"}, job.StartConnecting{Agent: "a1"})
	// stale: the job names other headers than the record has.
	re.headersJob(t, "stale", "a1", line)
	run("stale", job.MakeHeadersWriteOnly{Names: []string{"X-Other"}, CallerPrincipal: alice.Principal})
	// gone: the job names headers certvault has no values for.
	run("gone", create("gone"), job.MakeHeadersWriteOnly{Names: names, CallerPrincipal: alice.Principal},
		job.Resume{}, job.Lease{Agent: "a1"}, job.StartConnecting{Agent: "a1"})

	a1 := re.client(t, identity.RoleAgent, "a1")
	a2 := re.client(t, identity.RoleAgent, "a2")
	user := re.client(t, identity.RoleUser, "alice")
	pub := newHPKEKey(t).PublicKey().Bytes()
	var copied string
	re.rawReleaseTo(t, HeadersReleasePath, a1, func(cs *tls.ConnectionState) string { copied = ownBinding(t)(cs); return "" }, nil)

	for _, tc := range []struct {
		name   string
		cfg    *tls.Config
		header func(*tls.ConnectionState) string
		job    string
		status int
		code   string
		hr     string
		reason string
	}{
		{"no lease", a1, ownBinding(t), "queued", 403, "E_ACCESSDENIED", hrAccessDenied, "the agent does not hold the job's lease"},
		{"another agent", a2, ownBinding(t), "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "the agent does not hold the job's lease"},
		{"copied binding", a1, func(*tls.ConnectionState) string { return copied }, "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "does not match this TLS connection"},
		{"missing binding", a1, func(*tls.ConnectionState) string { return "" }, "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "has no Channel-Binding header"},
		{"not connecting", a1, ownBinding(t), "leasedq", 409, "BG_E_INVALID_STATE", "", "write-only headers are released only while it is CONNECTING or TRANSFERRING"},
		{"user principal", user, ownBinding(t), "ok", 403, "E_ACCESSDENIED", hrAccessDenied, "this needs agent"},
		{"no write-only headers", a1, ownBinding(t), "none", 404, "ERROR_NOT_FOUND", hrNotFound, "the job has no write-only custom headers"},
		{"after take-ownership", a1, ownBinding(t), "taken", 404, "ERROR_NOT_FOUND", hrNotFound, "the job has no write-only custom headers"},
		{"the earlier owner's values", a1, ownBinding(t), "retaken", 403, "E_ACCESSDENIED", hrAccessDenied, "stored by an earlier owner"},
		{"stale values", a1, ownBinding(t), "stale", 404, "ERROR_NOT_FOUND", hrNotFound, "stale values are never released"},
		{"no values", a1, ownBinding(t), "gone", 404, "ERROR_NOT_FOUND", hrNotFound, "certvault holds no write-only header values"},
		{"no such job", a1, ownBinding(t), "nosuchjob", 404, "BG_E_NOT_FOUND", "", "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Refusals before the body is read name no job.
			audJob := tc.job
			if slices.Contains([]string{"copied binding", "missing binding", "user principal"}, tc.name) {
				audJob = ""
			}
			before := len(re.headerDenials(t, audJob))
			status, body, _ := re.rawReleaseTo(t, HeadersReleasePath, tc.cfg, tc.header, releaseBody(t, tc.job, pub))
			scanFor(t, "the refusal", body, sec.forms)
			var p Problem
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("status %d: %s", status, body)
			}
			if p.Code != tc.code || (tc.hr != "" && p.HResult != tc.hr) || !strings.Contains(p.Detail, tc.reason) || status != tc.status {
				t.Fatalf("status %d, problem %+v; want %d %s %q", status, p, tc.status, tc.code, tc.reason)
			}
			if strings.Contains(string(body), "sealed_headers") {
				t.Error("a refusal carries sealed headers")
			}
			ds := re.headerDenials(t, audJob)
			if len(ds) != before+1 {
				t.Fatalf("%d new WriteOnlyHeadersReleaseDenied events, want 1", len(ds)-before)
			}
			if d := ds[len(ds)-1]; d.Code != tc.code || !strings.Contains(d.Reason, tc.reason) || d.Job != audJob || d.Agent == "" {
				t.Errorf("denied %+v", d)
			}
		})
	}
	for _, id := range []string{"ok", "queued", "leasedq", "taken", "retaken", "stale", "gone"} {
		if n := len(re.headerReleases(t, id)); n != 0 {
			t.Errorf("job %s: %d WriteOnlyHeadersReleased events after refusals only", id, n)
		}
	}
	// FetchHeaders reports a refusal as the job error.
	_, err := FetchHeaders(ctx, a1, re.srv.URL, "taken")
	wantCode(t, err, "ERROR_NOT_FOUND", hrNotFound)
	_, err = FetchHeaders(ctx, a2, re.srv.URL, "ok")
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	// A key release of a job without a certificate is still that.
	_, err = Fetch(ctx, a1, re.srv.URL, "ok")
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)

	// Audit log unwritable: no event, no values.
	re.store.fail.Store(true)
	status, body, _ := re.rawReleaseTo(t, HeadersReleasePath, a1, ownBinding(t), releaseBody(t, "ok", pub))
	re.store.fail.Store(false)
	var p Problem
	if err := json.Unmarshal(body, &p); err != nil || status != http.StatusServiceUnavailable || p.Code != "ERROR_SERVICE_UNAVAILABLE" ||
		!strings.Contains(p.Detail, "the headers were not released") || strings.Contains(string(body), "sealed_headers") {
		t.Fatalf("audit unwritable: %d %s", status, body)
	}
	if n := len(re.headerReleases(t, "ok")); n != 0 {
		t.Errorf("%d WriteOnlyHeadersReleased events", n)
	}
	re.scanHeaders(t, sec)
}

// TestHeadersRotate: key-encryption key rotation rewraps header records as
// it does certificates; after retiring the old version they still open,
// and a keyring that does not open them is refused at start.
func TestHeadersRotate(t *testing.T) {
	e, path := newFileEnv(t)
	ctx := context.Background()
	if _, err := e.v.StoreHeaders(ctx, alice, "j1", []string{"X-Api-Key: one"}); err != nil {
		t.Fatal(err)
	}
	if use, err := e.v.KEKVersionsInUse(ctx); err != nil || use[1] != 1 {
		t.Fatalf("in use %v (%v)", use, err)
	}
	res, err := e.v.RotateKey(ctx, admin, RotateKeyOptions{Retire: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.ActiveVersion != 2 || res.Rewrapped != 1 || !slices.Equal(res.Retired, []int{1}) {
		t.Fatalf("rotation %+v", res)
	}
	lines, err := e.v.openHeaders(ctx, e.v.keyring(), HeadersRequest{Job: "j1", Owner: alice.Principal, Names: []string{"X-Api-Key"}, Agent: agent.Principal})
	if err != nil || !slices.Equal(lines, []string{"X-Api-Key: one"}) {
		t.Fatalf("after rotation: %q %v", lines, err)
	}
	// A vault started with the retired key alone does not open the record.
	if _, err := New(ctx, e.js, e.store, testKeyring(t, map[int][]byte{2: e.kek}), e.v.log); err == nil ||
		!strings.Contains(err.Error(), "does not open the records wrapped with version 2") {
		t.Fatalf("a wrong keyring: %v", err)
	}
	_ = path
}
