package coordinator_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
)

var vaultAdmin = certvault.Caller{Principal: "spiffe://ferry.test/admin/root", Role: certvault.RoleAdmin}

// vaultHeaderEvents returns the certvault events about job id's write-only
// headers.
func (e *env) vaultHeaderEvents(id string) []events.Event {
	e.t.Helper()
	evs, err := e.store.Load(context.Background(), events.Subject(events.KindVault, events.VaultHeadersID(id)), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

// rawGet is the body of GET path as alice, as it travels.
func (e *env) rawGet(path string) string {
	e.t.Helper()
	resp, err := e.client.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		e.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

func strs(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			out = append(out, x.(string))
		}
	}
	return out
}

func options(m map[string]any) map[string]any {
	j, _ := m["job"].(map[string]any)
	if j == nil {
		j = m
	}
	o, _ := j["options"].(map[string]any)
	return o
}

// TestWriteOnlyHeadersAPI: POST|DELETE /v1/jobs/{id}/custom-headers/write-only
// with their codes; the values go to certvault and appear in no answer and
// no event, the job shows the names only.
func TestWriteOnlyHeadersAPI(t *testing.T) {
	e := newEnvWithVault(t)
	const secret = "Bearer wo-8f1d2c3b4a5e6f70"
	const plainSecret = "plain-5a4b3c2d1e0f"
	id := e.create(`{"display_name":"wo","files":[` + goodFile + `],"options":{"custom_headers":["Authorization: ` + plainSecret + `","X-Trace: 1"]}}`)
	path := "/v1/jobs/" + id + "/custom-headers/write-only"
	bob := e.as(identity.RoleUser, "bob")
	admin := e.as(identity.RoleAdmin, "root")
	body := `{"headers":["X-Api-Key: ` + secret + `"]}`

	// Refusals change nothing, in the job or in certvault.
	for _, tc := range []struct {
		name   string
		as     *http.Client
		method string
		body   string
		status int
		code   string
	}{
		{"another user", bob, "POST", body, 403, "E_ACCESSDENIED"},
		{"an administrator is not the owner", admin, "POST", body, 403, "E_ACCESSDENIED"},
		{"another user clears", bob, "DELETE", "", 403, "E_ACCESSDENIED"},
		{"an administrator clears", admin, "DELETE", "", 403, "E_ACCESSDENIED"},
		{"an empty list", nil, "POST", `{"headers":[]}`, 400, "RPC_X_NULL_REF_POINTER"},
		{"no list", nil, "POST", `{}`, 400, "RPC_X_NULL_REF_POINTER"},
		{"not a header", nil, "POST", `{"headers":["X-Api-Key ` + secret + `"]}`, 400, "E_INVALIDARG"},
		{"a line break", nil, "POST", `{"headers":["X-A: a\r\nX-B: ` + secret + `"]}`, 400, "E_INVALIDARG"},
		{"a header of the transfer", nil, "POST", `{"headers":["Range: bytes=0-"]}`, 400, "E_INVALIDARG"},
		{"too long", nil, "POST", `{"headers":["X-Big: ` + strings.Repeat("v", 16384) + `"]}`, 400, "BG_E_STRING_TOO_LONG"},
		{"unknown field", nil, "POST", `{"headers":["X-A: a"],"plain":true}`, 400, "E_INVALIDARG"},
		{"not JSON", nil, "POST", `X-Api-Key: ` + secret, 400, "E_INVALIDARG"},
	} {
		n := e.eventCount(id)
		c := tc.as
		if c == nil {
			c = e.client
		}
		status, m, _ := e.doAs(c, tc.method, path, tc.body)
		if status != tc.status || m["code"] != tc.code {
			t.Fatalf("%s: %d %v, want %d %s", tc.name, status, m, tc.status, tc.code)
		}
		if b, _ := json.Marshal(m); strings.Contains(string(b), "wo-8f1d") {
			t.Fatalf("%s: the refusal quotes the value: %s", tc.name, b)
		}
		if e.eventCount(id) != n || len(e.vaultHeaderEvents(id)) != 0 {
			t.Fatalf("%s: refused, yet something changed", tc.name)
		}
	}

	// The owner gives a header: stored, named, plain headers untouched.
	status, m, _ := e.do("POST", path, body)
	if status != 200 || m["code"] != "S_OK" {
		t.Fatalf("write-only: %d %v", status, m)
	}
	o := options(m)
	if !slices.Equal(strs(o["write_only_headers"]), []string{"X-Api-Key"}) || len(strs(o["custom_headers"])) != 2 {
		t.Fatalf("options %v", o)
	}
	last := e.lastEvents(id, 1)[0]
	if last.Type != events.TypeJobModified {
		t.Fatalf("last event %s", last.Type)
	}
	vevs := e.vaultHeaderEvents(id)
	if len(vevs) != 1 || vevs[0].Type != events.TypeWriteOnlyHeadersStored || vevs[0].Actor != alice {
		t.Fatalf("vault events %v", vevs)
	}
	// The same again: the values are stored again (S_OK), the job is as it was.
	if status, m, _ = e.do("POST", path, body); status != 200 || m["code"] != "S_OK" || len(e.vaultHeaderEvents(id)) != 2 {
		t.Fatalf("again: %d %v", status, m)
	}

	// Without a body the plain headers move, replacing the write-only set.
	if status, m, _ = e.do("POST", path, ""); status != 200 || m["code"] != "S_OK" {
		t.Fatalf("move: %d %v", status, m)
	}
	o = options(m)
	if !slices.Equal(strs(o["write_only_headers"]), []string{"Authorization", "X-Trace"}) || o["custom_headers"] != nil {
		t.Fatalf("after the move: %v", o)
	}
	// Nothing plain left to move: S_FALSE, nothing stored.
	nv := len(e.vaultHeaderEvents(id))
	if status, m, _ = e.do("POST", path, ""); status != 200 || m["code"] != "S_FALSE" || len(e.vaultHeaderEvents(id)) != nv {
		t.Fatalf("move again: %d %v", status, m)
	}
	// Plain headers set later replace the plain ones only.
	if status, m, _ = e.do("PATCH", "/v1/jobs/"+id, `{"options":{"custom_headers":["X-Plain: p"]}}`); status != 200 {
		t.Fatalf("patch: %d %v", status, m)
	}
	o = options(m)
	if !slices.Equal(strs(o["custom_headers"]), []string{"X-Plain: p"}) || !slices.Equal(strs(o["write_only_headers"]), []string{"Authorization", "X-Trace"}) {
		t.Fatalf("after patch: %v", o)
	}

	// Reads show names only; the value given in the body is in no answer
	// and no event of the job or of certvault.
	get := e.rawGet("/v1/jobs/" + id)
	if strings.Contains(get, "wo-8f1d") || strings.Contains(get, plainSecret) || !strings.Contains(get, `"write_only_headers":["Authorization","X-Trace"]`) {
		t.Fatalf("GET: %s", get)
	}
	if l := e.rawGet("/v1/jobs?all=true"); strings.Contains(l, "wo-8f1d") || strings.Contains(l, plainSecret) {
		t.Fatalf("list: %s", l)
	}
	jobEvs, _ := e.store.Load(context.Background(), events.JobSubject(id), 0)
	for _, ev := range append(jobEvs, e.vaultHeaderEvents(id)...) {
		if strings.Contains(string(ev.Data), "wo-8f1d") {
			t.Fatalf("event %s holds the value: %s", ev.Type, ev.Data)
		}
	}

	// Clear: the job names none, certvault deleted the values.
	if status, m, _ = e.do("DELETE", path, ""); status != 200 || m["code"] != "S_OK" || options(m)["write_only_headers"] != nil {
		t.Fatalf("clear: %d %v", status, m)
	}
	vevs = e.vaultHeaderEvents(id)
	if l := vevs[len(vevs)-1]; l.Type != events.TypeWriteOnlyHeadersDeleted || !strings.Contains(string(l.Data), `"reason":"removed"`) {
		t.Fatalf("last vault event %s %s", l.Type, l.Data)
	}
	if status, m, _ = e.do("DELETE", path, ""); status != 200 || m["code"] != "S_FALSE" {
		t.Fatalf("clear again: %d %v", status, m)
	}

	// Take-ownership drops them, in the job and in certvault.
	if status, m, _ = e.do("POST", path, body); status != 200 {
		t.Fatalf("write-only again: %d %v", status, m)
	}
	if status, m, _ = e.doAs(admin, "POST", "/v1/jobs/"+id+"/take-ownership", ""); status != 200 || options(m)["write_only_headers"] != nil {
		t.Fatalf("take-ownership: %d %v", status, m)
	}
	vevs = e.vaultHeaderEvents(id)
	if l := vevs[len(vevs)-1]; l.Type != events.TypeWriteOnlyHeadersDeleted || !strings.Contains(string(l.Data), `"reason":"ownership-changed"`) || l.Actor != "spiffe://ferry.test/admin/root" {
		t.Fatalf("last vault event %s %s %s", l.Type, l.Actor, l.Data)
	}
	if ok, err := e.vault.DeleteHeaders(context.Background(), vaultAdmin, id, events.HeadersDeletedByOwner); ok || err != nil {
		t.Fatalf("certvault still has values after take-ownership: %v %v", ok, err)
	}
	// The previous owner may not see or change the job any more.
	if status, m, _ = e.do("POST", path, body); status != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("previous owner: %d %v", status, m)
	}

	// Final jobs: BG_E_INVALID_STATE, certvault untouched.
	cancelled := e.create(`{"display_name":"cancelled"}`)
	if st, m, _ := e.do("POST", "/v1/jobs/"+cancelled+"/cancel", ""); st != 200 {
		t.Fatalf("cancel: %d %v", st, m)
	}
	cpath := "/v1/jobs/" + cancelled + "/custom-headers/write-only"
	for _, method := range []string{"POST", "DELETE"} {
		b := ""
		if method == "POST" {
			b = body
		}
		if status, m, _ := e.do(method, cpath, b); status != 409 || m["code"] != "BG_E_INVALID_STATE" || m["hresult"] != "0x80200002" {
			t.Fatalf("%s on a cancelled job: %d %v", method, status, m)
		}
	}
	if n := len(e.vaultHeaderEvents(cancelled)); n != 0 {
		t.Fatalf("%d vault events for a cancelled job", n)
	}
	// No such job.
	if status, m, _ := e.do("POST", "/v1/jobs/nosuchjob/custom-headers/write-only", body); status != 404 || m["code"] != "BG_E_NOT_FOUND" {
		t.Fatalf("no such job: %d %v", status, m)
	}
}

// TestWriteOnlyHeadersWithoutVault: a coordinator without certvault says
// so.
func TestWriteOnlyHeadersWithoutVault(t *testing.T) {
	e := newEnv(t)
	id := e.create(`{"display_name":"wo"}`)
	for _, method := range []string{"POST", "DELETE"} {
		status, m, _ := e.do(method, "/v1/jobs/"+id+"/custom-headers/write-only", "")
		if status != 503 || m["code"] != "ERROR_SERVICE_UNAVAILABLE" {
			t.Fatalf("%s: %d %v", method, status, m)
		}
	}
}
