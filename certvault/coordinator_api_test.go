package certvault

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/rs/zerolog"
)

// coordServer is the vault's Handler served like services/vault.go serves
// it: TLS 1.3, the identity middleware in front, the caller from the
// verified session.
func coordServer(t *testing.T, e *env, ca *identity.CA, overrides map[string]identity.Role) *httptest.Server {
	t.Helper()
	auth := &identity.Authenticator{Roots: ca.Pool(), Roles: identity.RoleMap{TrustDomain: releaseTD, Overrides: overrides}}
	callerOf := func(r *http.Request) (Caller, error) {
		s, ok := identity.SessionFrom(r.Context())
		if !ok {
			return Caller{}, errors.New("no session")
		}
		if err := s.Err(); err != nil {
			return Caller{}, err
		}
		return Caller{Principal: s.Principal, Role: string(s.Role)}, nil
	}
	mux := http.NewServeMux()
	mux.Handle("/", e.v.Handler(callerOf))
	srv := httptest.NewUnstartedServer(auth.Middleware(mux, identity.SessionPath))
	srv.TLS = identity.ServerTLSConfig(identityCert(t, ca, identity.IssueRequest{Role: identity.RoleService, Name: "certvault", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}), ca.Pool())
	srv.TLS.MinVersion = tls.VersionTLS13
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// tlsDo sends one request with the client identity cfg.
func tlsDo(t *testing.T, srv *httptest.Server, cfg *tls.Config, method, path string, body []byte) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return rawDo(t, cfg, req)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func deleteQuery(principal, role, reason string) string {
	return "?" + url.Values{"on_behalf_of": {principal}, "role": {role}, "reason": {reason}}.Encode()
}

func TestIsCoordinator(t *testing.T) {
	const coord = "spiffe://ferry.test/service/coordinator"
	for _, c := range []struct {
		caller Caller
		want   bool
	}{
		{Caller{coord, RoleService}, true},
		{Caller{coord, RoleAdmin}, true}, // the admin override of deployments
		{Caller{coord, RoleUser}, false}, // an override that demotes it
		{Caller{coord, ""}, false},       // denied by the role mapper
		{Caller{"spiffe://ferry.test/service/coordinator2", RoleService}, false},
		{Caller{"spiffe://ferry.test/service/certvault", RoleService}, false},
		{Caller{"spiffe://ferry.test/agent/coordinator", RoleAgent}, false},
		{Caller{"spiffe://ferry.test/admin/coordinator", RoleAdmin}, false},
		{Caller{"spiffe://ferry.test/service/coordinator/x", RoleService}, false},
		{Caller{"spiffe://ferry.test/service/Coordinator", RoleService}, false},
		{Caller{"x509:CN=coordinator", RoleService}, false},
	} {
		if got := IsCoordinator(c.caller); got != c.want {
			t.Errorf("IsCoordinator(%+v) = %v", c.caller, got)
		}
	}
}

// TestCoordinatorAPI: the coordinator's endpoints on a loopback TLS server
// with the identity middleware: the coordinator (role service, or admin by
// override) is served; agents, users, admins, other services and callers
// without a verified certificate are refused before anything happens; the
// owner's rights and the vault's own errors come back with their codes;
// header values are stored, never echoed, logged or put in events.
func TestCoordinatorAPI(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ca, err := identity.NewCA(releaseTD)
	if err != nil {
		t.Fatal(err)
	}
	srv := coordServer(t, e, ca, nil)
	coordPrincipal := "spiffe://" + releaseTD + "/service/coordinator"
	overridden := coordServer(t, e, ca, map[string]identity.Role{coordPrincipal: identity.RoleAdmin})
	client := func(role identity.Role, name string) *tls.Config {
		return identity.ClientTLSConfig(identityCert(t, ca, identity.IssueRequest{Role: role, Name: name}), ca.Pool())
	}
	coord := client(identity.RoleService, "coordinator")

	// alice's certificates: "Example, Ops, alice" and a renewal-free
	// namesake "Other, alice" with another subject.
	p := newPKI(t)
	req, leaf, _ := pemImport(t, p, leafOpts{subject: subjectOf("Example", []string{"Ops"}, "alice")})
	mine, err := e.v.Import(ctx, alice, CurrentUser, "MY", req)
	if err != nil {
		t.Fatal(err)
	}
	req2, _, _ := pemImport(t, p, leafOpts{subject: subjectOf("Other", nil, "alice")})
	if _, err := e.v.Import(ctx, alice, CurrentUser, "MY", req2); err != nil {
		t.Fatal(err)
	}
	lookup := func(owner Caller, loc, store, subject string) []byte {
		return mustJSON(t, SubjectLookupRequest{OnBehalfOf: OnBehalfOf{owner.Principal, owner.Role}, Location: loc, Store: store, Subject: subject})
	}

	// By subject, on behalf of the owner: as the owner named the store.
	for _, s := range []*httptest.Server{srv, overridden} {
		r := tlsDo(t, s, coord, "POST", CoordinatorLookupPath, lookup(alice, "CURRENT_USER", "my", "Ops, alice"))
		var info CertInfo
		if r.status != 200 || json.Unmarshal(r.body, &info) != nil || info.SHA1 != mine.SHA1 || info.Location != CurrentUser || info.Store != "MY" ||
			info.SHA1 != fmt.Sprintf("%x", sha1Of(leaf)) {
			t.Fatalf("lookup: %d %s", r.status, r.body)
		}
		if r.header.Get("Cache-Control") != "no-store" {
			t.Errorf("lookup answer headers %v", r.header)
		}
	}

	// The owner's rights and the vault's answers, with their codes.
	for _, c := range []struct {
		name       string
		body       []byte
		status     int
		code, hr   string
		detailWant string
	}{
		{"ambiguous name", lookup(alice, "0", "MY", "alice"), 400, "E_INVALIDARG", hrInvalidArg, "ambiguous"},
		{"another user's CURRENT_USER is theirs", lookup(bob, "CURRENT_USER", "MY", "Ops, alice"), 404, "CRYPT_E_NOT_FOUND", hrCryptNotFnd, ""},
		{"a user may not address USERS", lookup(alice, "USERS", bob.Principal+`\MY`, "alice"), 403, "E_ACCESSDENIED", hrAccessDenied, "for admins"},
		{"a user has no CURRENT_SERVICE", lookup(alice, "CURRENT_SERVICE", "MY", "alice"), 403, "E_ACCESSDENIED", hrAccessDenied, "CURRENT_SERVICE"},
		{"an owner without a role", lookup(Caller{alice.Principal, ""}, "CURRENT_USER", "MY", "alice"), 403, "E_ACCESSDENIED", hrAccessDenied, "no certvault role"},
		{"no store", lookup(alice, "CURRENT_USER", "NOPE", "alice"), 404, "ERROR_FILE_NOT_FOUND", hrFileNotFound, ""},
		{"location outside the enum", lookup(alice, "9", "MY", "alice"), 400, "E_NOTIMPL", hrNotImpl, ""},
		{"no subject", lookup(alice, "CURRENT_USER", "MY", ""), 400, "RPC_X_NULL_REF_POINTER", hrNullRef, ""},
		{"partial value", lookup(alice, "CURRENT_USER", "MY", "ali"), 404, "CRYPT_E_NOT_FOUND", hrCryptNotFnd, ""},
		{"nobody to act for", lookup(Caller{}, "CURRENT_USER", "MY", "alice"), 400, "RPC_X_NULL_REF_POINTER", hrNullRef, "on_behalf_of"},
		{"unknown field", []byte(`{"on_behalf_of": {"principal": "p", "role": "user"}, "sha1": "x"}`), 400, "E_INVALIDARG", hrInvalidArg, "unknown field"},
		{"not JSON", []byte(`{"on_behalf_of"`), 400, "E_INVALIDARG", hrInvalidArg, ""},
	} {
		r := tlsDo(t, srv, coord, "POST", CoordinatorLookupPath, c.body)
		m := wantProblem(t, r, c.status, c.code, c.hr)
		if !strings.Contains(m["detail"].(string), c.detailWant) {
			t.Errorf("%s: detail %q lacks %q", c.name, m["detail"], c.detailWant)
		}
	}

	// Write-only header values: stored for the owner, answered by name.
	sec := newHeaderSecret(t)
	put := func(owner Caller, lines ...string) []byte {
		return mustJSON(t, storeHeadersBody{OnBehalfOf: OnBehalfOf{owner.Principal, owner.Role}, Headers: lines})
	}
	r := tlsDo(t, srv, coord, "PUT", CoordinatorHeadersURL("j1"), put(alice, "authorization: "+sec.value, "X-Tenant: blue"))
	var stored HeadersStored
	if r.status != 200 || json.Unmarshal(r.body, &stored) != nil || stored.JobID != "j1" || !slices.Equal(stored.Names, []string{"Authorization", "X-Tenant"}) {
		t.Fatalf("store: %d %s", r.status, r.body)
	}
	scanFor(t, "the store answer", r.body, sec.forms)
	got, err := e.v.Headers(ctx, HeadersRequest{Job: "j1", Owner: alice.Principal, Names: stored.Names,
		Agent: agent.Principal, Lease: "1", GrantID: "g1"})
	if err != nil || !slices.Equal(got, []string{"Authorization: " + sec.value, "X-Tenant: blue"}) {
		t.Fatalf("the stored values do not come back: %v", err)
	}
	if evs := headerEvents(t, e, "j1"); len(evs) == 0 {
		t.Fatal("no audit event")
	} else if st, ok := evs[0].(*events.WriteOnlyHeadersStored); !ok || st.Owner != alice.Principal || !slices.Equal(st.Names, stored.Names) {
		t.Fatalf("first event %#v", evs[0])
	}

	// Bad input, refused with its code and without a trace of the value.
	for _, c := range []struct {
		name     string
		path     string
		body     []byte
		ct       string
		status   int
		code, hr string
	}{
		{"not a header line", CoordinatorHeadersURL("j1"), put(alice, "X-Api-Key "+sec.value), "", 400, "E_INVALIDARG", hrInvalidArg},
		{"a line break in the value", CoordinatorHeadersURL("j1"), put(alice, "X-Api-Key: "+sec.value+"\r\nX-Evil: 1"), "", 400, "E_INVALIDARG", hrInvalidArg},
		{"a reserved header", CoordinatorHeadersURL("j1"), put(alice, "Range: "+sec.value), "", 400, "E_INVALIDARG", hrInvalidArg},
		{"too long", CoordinatorHeadersURL("j1"), put(alice, "X-Api-Key: "+sec.value+strings.Repeat("x", 17000)), "", 400, "BG_E_STRING_TOO_LONG", hrTooLong},
		{"no headers", CoordinatorHeadersURL("j1"), put(alice), "", 400, "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"nobody to store for", CoordinatorHeadersURL("j1"), put(Caller{}, "X-Api-Key: "+sec.value), "", 400, "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"an owner without a role", CoordinatorHeadersURL("j1"), put(Caller{alice.Principal, "root"}, "X-Api-Key: "+sec.value), "", 403, "E_ACCESSDENIED", hrAccessDenied},
		{"a job ID that names nothing", CoordinatorHeadersURL("a.b"), put(alice, "X-Api-Key: "+sec.value), "", 400, "E_INVALIDARG", hrInvalidArg},
		{"unknown field", CoordinatorHeadersURL("j1"), []byte(`{"headers": ["X-Api-Key: ` + sec.value + `"], "values": 1}`), "", 400, "E_INVALIDARG", hrInvalidArg},
		{"syntax error", CoordinatorHeadersURL("j1"), []byte(`{"headers": ["X-Api-Key: ` + sec.value + `"`), "", 400, "E_INVALIDARG", hrInvalidArg},
		{"too large", CoordinatorHeadersURL("j1"), put(alice, "X-Api-Key: "+sec.value+strings.Repeat("<", 200<<10)), "", 413, "E_INVALIDARG", hrInvalidArg},
		{"not JSON", CoordinatorHeadersURL("j1"), put(alice, "X-Api-Key: "+sec.value), "text/plain", 415, "E_INVALIDARG", hrInvalidArg},
	} {
		req, _ := http.NewRequest("PUT", srv.URL+c.path, bytes.NewReader(c.body))
		req.Header.Set("Content-Type", cmpOr(c.ct, "application/json"))
		r := rawDo(t, coord, req)
		wantProblem(t, r, c.status, c.code, c.hr)
		scanFor(t, c.name+": the answer", r.body, sec.forms)
	}
	// The values stored earlier are still those.
	if got, err := e.v.Headers(ctx, HeadersRequest{Job: "j1", Owner: alice.Principal, Names: stored.Names, Agent: agent.Principal, Lease: "1", GrantID: "g2"}); err != nil || len(got) != 2 {
		t.Fatalf("after refused stores: %v", err)
	}

	// Everyone but the coordinator is refused, before anything is read or
	// changed; the overridden coordinator (admin) is served.
	others := map[string]*tls.Config{
		"agent":           client(identity.RoleAgent, "a1"),
		"user":            client(identity.RoleUser, "alice"),
		"admin":           client(identity.RoleAdmin, "root"),
		"another service": client(identity.RoleService, "certvault"),
		"a namesake":      client(identity.RoleService, "coordinator2"),
	}
	calls := []struct {
		method, path string
		body         []byte
	}{
		{"POST", CoordinatorLookupPath, lookup(alice, "CURRENT_USER", "MY", "Ops, alice")},
		{"PUT", CoordinatorHeadersURL("j2"), put(alice, "X-Api-Key: "+sec.value)},
		{"DELETE", CoordinatorHeadersURL("j1") + deleteQuery(alice.Principal, "user", events.HeadersDeletedByOwner), nil},
	}
	before := len(e.vaultEvents())
	for name, cfg := range others {
		for _, c := range calls {
			r := tlsDo(t, srv, cfg, c.method, c.path, c.body)
			m := wantProblem(t, r, 403, "E_ACCESSDENIED", hrAccessDenied)
			if !strings.Contains(m["detail"].(string), "service/coordinator") {
				t.Errorf("%s %s %s: detail %q", name, c.method, c.path, m["detail"])
			}
		}
	}
	// No client certificate; one from another CA.
	stranger, err := identity.NewCA(releaseTD)
	if err != nil {
		t.Fatal(err)
	}
	strangerCfg := identity.ClientTLSConfig(identityCert(t, stranger, identity.IssueRequest{Role: identity.RoleService, Name: "coordinator"}), ca.Pool())
	for _, c := range calls {
		wantProblem(t, tlsDo(t, srv, identity.ClientTLSConfig(tls.Certificate{}, ca.Pool()), c.method, c.path, c.body), 401, "E_UNAUTHENTICATED", "0x80090350")
		if r := tlsDo(t, srv, strangerCfg, c.method, c.path, c.body); r.status != 401 {
			t.Errorf("%s %s from another CA: %d %s", c.method, c.path, r.status, r.body)
		}
	}
	if after := len(e.vaultEvents()); after != before {
		t.Fatalf("refused calls appended %d vault events", after-before)
	}
	if rec, rev, err := e.v.headerRecord(ctx, "j2"); err != nil || rev != 0 {
		t.Fatalf("a refused store stored %+v (%v)", rec.Names, err)
	}

	// Methods.
	for _, c := range []struct{ method, path, allow string }{
		{"GET", CoordinatorLookupPath, "POST"},
		{"GET", CoordinatorHeadersURL("j1"), "PUT, DELETE"},
		{"POST", CoordinatorHeadersURL("j1"), "PUT, DELETE"},
	} {
		r := tlsDo(t, srv, coord, c.method, c.path, nil)
		wantProblem(t, r, 405, "E_NOTIMPL", hrNotImpl)
		if r.header.Get("Allow") != c.allow {
			t.Errorf("%s %s: Allow %q", c.method, c.path, r.header.Get("Allow"))
		}
	}

	// Deletion: bad queries, then twice (deleted, then nothing to delete).
	for _, c := range []struct {
		name, query string
		code, hr    string
	}{
		{"unknown reason", deleteQuery(alice.Principal, "user", "whim"), "E_INVALIDARG", hrInvalidArg},
		{"nobody", deleteQuery("", "user", events.HeadersDeletedByOwner), "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"unknown parameter", deleteQuery(alice.Principal, "user", events.HeadersDeletedByOwner) + "&force=1", "E_INVALIDARG", hrInvalidArg},
		{"a parameter twice", deleteQuery(alice.Principal, "user", events.HeadersDeletedByOwner) + "&role=admin", "E_INVALIDARG", hrInvalidArg},
	} {
		wantProblem(t, tlsDo(t, srv, coord, "DELETE", CoordinatorHeadersURL("j1")+c.query, nil), 400, c.code, c.hr)
	}
	for i, want := range []bool{true, false} {
		s := srv
		if i == 1 {
			s = overridden
		}
		r := tlsDo(t, s, coord, "DELETE", CoordinatorHeadersURL("j1")+deleteQuery(alice.Principal, "user", events.HeadersDeletedOwnershipMoved), nil)
		var del HeadersDeleted
		if r.status != 200 || json.Unmarshal(r.body, &del) != nil || del.JobID != "j1" || del.Deleted != want {
			t.Fatalf("delete %d: %d %s", i, r.status, r.body)
		}
	}
	evs := headerEvents(t, e, "j1")
	if d, ok := evs[len(evs)-1].(*events.WriteOnlyHeadersDeleted); !ok || d.Reason != events.HeadersDeletedOwnershipMoved {
		t.Fatalf("last event %#v", evs[len(evs)-1])
	}

	// The value is in no answer above, no event and no log line.
	e.scanAll(t, sec)
}

func (e *env) scanAll(t *testing.T, sec headerSecret) {
	t.Helper()
	scanFor(t, "the event stream", streamBytes(t, e.js, events.StreamName), sec.forms)
	scanFor(t, "the vault's log", e.log.Bytes(), sec.forms)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// rawDo sends req with the client identity cfg.
func rawDo(t *testing.T, cfg *tls.Config, req *http.Request) response {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

// TestStoreHeadersRequestRedacts: the request that carries header values
// shows names only, however it is printed; its wire form has the values.
func TestStoreHeadersRequestRedacts(t *testing.T) {
	sec := newHeaderSecret(t)
	r := StoreHeadersRequest{OnBehalfOf: OnBehalfOf{alice.Principal, RoleUser}, Headers: []string{"Authorization: " + sec.value}}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		fmt.Fprintf(&out, verb+"\n", r)
	}
	j, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(j)
	zl := zerolog.New(&out)
	zl.Info().Object("req", r).Interface("any", r).Msg("x")
	scanFor(t, "printed", out.Bytes(), sec.forms)
	if !strings.Contains(out.String(), "Authorization") || !strings.Contains(out.String(), alice.Principal) {
		t.Fatalf("printed forms name nothing:\n%s", out.String())
	}
	wire, err := EncodeStoreHeadersRequest(r)
	if err != nil || !bytes.Contains(wire, []byte(sec.value)) {
		t.Fatalf("wire form %s: %v", wire, err)
	}
	var back storeHeadersBody
	if err := json.Unmarshal(wire, &back); err != nil || !slices.Equal(back.Headers, r.Headers) || back.OnBehalfOf != r.OnBehalfOf {
		t.Fatalf("wire form does not decode: %v", err)
	}
}

// FuzzCoordinatorAPI: whatever the coordinator sends — bodies for the
// lookup and the header store, queries for the deletion — the answer is
// JSON with a status below 500 (a problem document with a code when it is
// a refusal), and never holds a header value of the request.
func FuzzCoordinatorAPI(f *testing.F) {
	ctx := context.Background()
	_, _, js := eventstest.StartServer(f)
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		f.Fatal(err)
	}
	st, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		f.Fatal(err)
	}
	v, err := New(ctx, js, st, testKeyring(f, map[int][]byte{1: testKEK(f)}), zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	// The coordinator, as the identity layer gives it.
	h := v.Handler(func(*http.Request) (Caller, error) { return service, nil })
	for _, s := range []struct {
		kind byte
		in   string
	}{
		{0, `{"on_behalf_of": {"principal": "spiffe://ferry.test/user/alice", "role": "user"}, "location": "0", "store": "MY", "subject": "alice"}`},
		{0, `{"on_behalf_of": {}, "location": "9"}`},
		{1, `{"on_behalf_of": {"principal": "spiffe://ferry.test/user/alice", "role": "user"}, "headers": ["X-Api-Key: s3cret-value"]}`},
		{1, `{"headers": ["X-Api-Key s3cret-value"]}`},
		{1, `{"headers": ["X-Api-Key: s3cret\u000avalue"], "on_behalf_of": {"principal": "p", "role": "user"}}`},
		{2, `on_behalf_of=spiffe%3A%2F%2Fferry.test%2Fuser%2Falice&role=user&reason=removed`},
		{2, `on_behalf_of=a&on_behalf_of=b&reason=%zz`},
	} {
		f.Add(s.kind, s.in)
	}
	f.Fuzz(func(t *testing.T, kind byte, in string) {
		var req *http.Request
		switch kind % 3 {
		case 0:
			req = httptest.NewRequest("POST", CoordinatorLookupPath, strings.NewReader(in))
		case 1:
			req = httptest.NewRequest("PUT", CoordinatorHeadersURL("fuzz"), strings.NewReader(in))
		default:
			req = httptest.NewRequest("DELETE", CoordinatorHeadersURL("fuzz"), nil)
			req.URL.RawQuery = in
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
		var m map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
			t.Fatalf("answer %q: %v", w.Body, err)
		}
		if w.Code >= 300 && (m["code"] == "" || m["code"] == nil) {
			t.Fatalf("refusal without a code: %s", w.Body)
		}
		if kind%3 == 1 {
			var body storeHeadersBody
			if json.Unmarshal([]byte(in), &body) == nil {
				for _, line := range body.Headers {
					_, v, _ := strings.Cut(line, ":")
					if v = strings.TrimSpace(v); len(v) >= 8 && strings.Contains(w.Body.String(), v) {
						t.Fatalf("the answer %s holds a header value", w.Body)
					}
				}
			}
		}
	})
}
