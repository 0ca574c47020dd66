package coordinator_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

const alice = "spiffe://ferry.test/user/alice"

// importCert makes a self-signed ECDSA client certificate (clientAuth EKU)
// for subject and imports it as alice into her CURRENT_USER store. It
// returns the certificate's info.
func (e *env) importCert(store string, subject pkix.Name) certvault.CertInfo {
	e.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		e.t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		e.t.Fatal(err)
	}
	data := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})...)
	info, err := e.vault.Import(context.Background(), certvault.Caller{Principal: alice, Role: certvault.RoleUser},
		certvault.CurrentUser, store, certvault.ImportRequest{PEM: data})
	if err != nil {
		e.t.Fatalf("import %s: %v", subject, err)
	}
	return info
}

// certBody is a PUT body by thumbprint.
func certBody(location any, store, thumbprint string) string {
	b, _ := json.Marshal(map[string]any{"location": location, "store": store, "thumbprint": thumbprint})
	return string(b)
}

// colons writes a thumbprint the way openssl prints it: "AB:CD:…".
func colons(sha1 string) string {
	var parts []string
	for i := 0; i < len(sha1); i += 2 {
		parts = append(parts, strings.ToUpper(sha1[i:i+2]))
	}
	return strings.Join(parts, ":")
}

// lastEvents returns the types and payloads of a job's last n events.
func (e *env) lastEvents(id string, n int) []events.Event {
	e.t.Helper()
	evs, err := e.store.Load(context.Background(), events.JobSubject(id), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(evs) < n {
		e.t.Fatalf("job %s has %d events, want at least %d", id, len(evs), n)
	}
	return evs[len(evs)-n:]
}

// TestSetClientCertificateResults: every row of DESIGN.md §1's
// SetClientCertificateByID table, through the HTTP API, with its exact
// symbol and HRESULT; a refused request changes nothing.
func TestSetClientCertificateResults(t *testing.T) {
	e := newEnvWithVault(t)
	cert := e.importCert("MY", pkix.Name{CommonName: "alice-a", Organization: []string{"ferry tests"}})
	id := e.create(`{"display_name":"cert","files":[` + goodFile + `]}`)
	cancelled := e.create(`{"display_name":"cancelled","files":[` + goodFile + `]}`)
	if st, m, _ := e.do("POST", "/v1/jobs/"+cancelled+"/cancel", ""); st != 200 {
		t.Fatalf("cancel: %d %v", st, m)
	}
	acked := e.create(`{"display_name":"acked"}`)
	if st, m, _ := e.do("POST", "/v1/jobs/"+acked+"/complete", ""); st != 200 || m["job"].(map[string]any)["state"] != "ACKNOWLEDGED" {
		t.Fatalf("complete: %d %v", st, m)
	}
	bob := e.as(identity.RoleUser, "bob")
	admin := e.as(identity.RoleAdmin, "root")
	unknown := strings.Repeat("ab", 20) // 20 bytes that no imported certificate has
	path := func(id string) string { return "/v1/jobs/" + id + "/client-certificate" }

	cases := []struct {
		name   string
		as     *httpClient
		job    string
		body   string
		status int
		code   string
		hr     string
	}{
		// caller may not use that store location / is not the job owner
		{"location of services only", nil, id, certBody("CURRENT_SERVICE", "MY", cert.SHA1), 403, "E_ACCESSDENIED", "0x80070005"},
		{"location of admins only", nil, id, certBody(4, `spiffe://ferry.test/user/bob\MY`, cert.SHA1), 403, "E_ACCESSDENIED", "0x80070005"},
		{"not the owner", bob, id, certBody("CURRENT_USER", "MY", cert.SHA1), 403, "E_ACCESSDENIED", "0x80070005"},
		{"admin is not the owner", admin, id, certBody("CURRENT_USER", "MY", cert.SHA1), 403, "E_ACCESSDENIED", "0x80070005"},
		// location not in the enum
		{"location 8", nil, id, certBody(8, "MY", cert.SHA1), 400, "E_NOTIMPL", "0x80004001"},
		{"location -1", nil, id, certBody(-1, "MY", cert.SHA1), 400, "E_NOTIMPL", "0x80004001"},
		{"location 1.5", nil, id, certBody(1.5, "MY", cert.SHA1), 400, "E_NOTIMPL", "0x80004001"},
		{"location name unknown", nil, id, certBody("NOWHERE", "MY", cert.SHA1), 400, "E_NOTIMPL", "0x80004001"},
		{"location absent", nil, id, `{"store":"MY","thumbprint":"` + cert.SHA1 + `"}`, 400, "E_NOTIMPL", "0x80004001"},
		// no store with that name
		{"no such store", nil, id, certBody("CURRENT_USER", "NOSUCH", cert.SHA1), 404, "ERROR_FILE_NOT_FOUND", "0x80070002"},
		// no certificate with that hash in the store
		{"no such certificate", nil, id, certBody("CURRENT_USER", "MY", unknown), 404, "CRYPT_E_NOT_FOUND", "0x80092004"},
		{"no such subject", nil, id, `{"location":0,"store":"MY","subject":"nobody"}`, 404, "CRYPT_E_NOT_FOUND", "0x80092004"},
		// store name or hash missing
		{"store missing", nil, id, certBody("CURRENT_USER", "", cert.SHA1), 400, "RPC_X_NULL_REF_POINTER", "0x800706F4"},
		{"hash missing", nil, id, `{"location":"CURRENT_USER","store":"MY"}`, 400, "RPC_X_NULL_REF_POINTER", "0x800706F4"},
		{"hash only separators", nil, id, certBody("CURRENT_USER", "MY", ": :"), 400, "RPC_X_NULL_REF_POINTER", "0x800706F4"},
		// hash not exactly 20 bytes
		{"hash 19 bytes", nil, id, certBody("CURRENT_USER", "MY", cert.SHA1[:38]), 400, "RPC_X_BAD_STUB_DATA", "0x800706F7"},
		{"hash 21 bytes", nil, id, certBody("CURRENT_USER", "MY", cert.SHA1+"00"), 400, "RPC_X_BAD_STUB_DATA", "0x800706F7"},
		{"hash 32 bytes", nil, id, certBody("CURRENT_USER", "MY", cert.SHA256), 400, "RPC_X_BAD_STUB_DATA", "0x800706F7"},
		// store name longer than 256
		{"store name 256", nil, id, certBody("CURRENT_USER", strings.Repeat("S", 256), cert.SHA1), 400, "BG_E_STRING_TOO_LONG", "0x80200021"},
		{"store name 257", nil, id, certBody("CURRENT_USER", strings.Repeat("S", 257), cert.SHA1), 400, "BG_E_STRING_TOO_LONG", "0x80200021"},
		// job CANCELLED or ACKNOWLEDGED
		{"cancelled job", nil, cancelled, certBody("CURRENT_USER", "MY", cert.SHA1), 409, "BG_E_INVALID_STATE", "0x80200002"},
		{"acknowledged job", nil, acked, certBody("CURRENT_USER", "MY", cert.SHA1), 409, "BG_E_INVALID_STATE", "0x80200002"},
		// order: the location is checked first, the job state last
		{"bad location and missing hash", nil, id, `{"location":9,"store":"MY"}`, 400, "E_NOTIMPL", "0x80004001"},
		{"missing store before bad hash", nil, id, certBody(0, "", "abcd"), 400, "RPC_X_NULL_REF_POINTER", "0x800706F4"},
		{"bad hash before long store", nil, id, certBody(0, strings.Repeat("S", 300), "abcd"), 400, "RPC_X_BAD_STUB_DATA", "0x800706F7"},
		{"argument before access", bob, id, certBody(8, "MY", cert.SHA1), 400, "E_NOTIMPL", "0x80004001"},
		// the request's shape
		{"thumbprint and subject", nil, id, `{"location":0,"store":"MY","thumbprint":"` + cert.SHA1 + `","subject":"alice-a"}`, 400, "E_INVALIDARG", "0x80070057"},
		{"location of another type", nil, id, `{"location":true,"store":"MY","thumbprint":"` + cert.SHA1 + `"}`, 400, "E_INVALIDARG", "0x80070057"},
		{"unknown job", nil, "01a20101-0000-7000-8000-000000000000", certBody(0, "MY", cert.SHA1), 404, "BG_E_NOT_FOUND", "0x80200001"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.client
			if tc.as != nil {
				c = tc.as
			}
			before := e.eventCount(tc.job)
			status, m, h := e.doAs(c, "PUT", path(tc.job), tc.body)
			if status != tc.status || m["code"] != tc.code || m["hresult"] != tc.hr {
				t.Fatalf("got %d %v, want %d %s (%s)", status, m, tc.status, tc.code, tc.hr)
			}
			if ct := h.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if c, ok := job.LookupCode(tc.code); !ok || c.HResultString() != tc.hr {
				t.Fatalf("the vocabulary disagrees: %v %v", c, ok)
			}
			if n := e.eventCount(tc.job); n != before {
				t.Fatalf("a refused request changed job %s: %d events, was %d", tc.job, n, before)
			}
		})
	}
	// None of it set a certificate.
	if st, m, _ := e.do("GET", path(id), ""); st != 404 || m["code"] != "RPC_X_BAD_STUB_DATA" {
		t.Fatalf("after refusals: %d %v", st, m)
	}
	// And the good request succeeds.
	if st, m, _ := e.do("PUT", path(id), certBody("CURRENT_USER", "MY", cert.SHA1)); st != 200 || m["code"] != "S_OK" {
		t.Fatalf("set: %d %v", st, m)
	}
}

// TestClientCertificateLifecycle: set, get, replace, remove, and the
// events that record each.
func TestClientCertificateLifecycle(t *testing.T) {
	e := newEnvWithVault(t)
	a := e.importCert("MY", pkix.Name{CommonName: "alice-a", Organization: []string{"ferry tests"}})
	b := e.importCert("MY", pkix.Name{CommonName: "alice-b", Organization: []string{"ferry tests"}})
	id := e.create(`{"display_name":"cert","files":[` + goodFile + `]}`)
	path := "/v1/jobs/" + id + "/client-certificate"

	// GET before any set: RPC_X_BAD_STUB_DATA, 404.
	if st, m, _ := e.do("GET", path, ""); st != 404 || m["code"] != "RPC_X_BAD_STUB_DATA" || m["hresult"] != "0x800706F7" {
		t.Fatalf("get none: %d %v", st, m)
	}
	// Set by thumbprint as openssl prints it, location as a number string.
	st, m, _ := e.do("PUT", path, certBody("0", "my", colons(a.SHA1)))
	if st != 200 || m["code"] != "S_OK" {
		t.Fatalf("set: %d %v", st, m)
	}
	cc := m["job"].(map[string]any)["client_certificate"].(map[string]any)
	if cc["location"] != "CURRENT_USER" || cc["store"] != "MY" || cc["sha1"] != a.SHA1 || cc["subject"] != a.Subject {
		t.Fatalf("job's certificate %v", cc)
	}
	ev := e.lastEvents(id, 1)[0]
	if ev.Type != events.TypeClientCertificateSet || ev.Actor != alice {
		t.Fatalf("event %s by %s", ev.Type, ev.Actor)
	}
	var data map[string]any
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"location": "CURRENT_USER", "store": "MY", "sha1": a.SHA1, "subject": a.Subject, "by": "id"}
	if len(data) != len(want) {
		t.Fatalf("event data %v, want exactly %v", data, want)
	}
	for k, v := range want {
		if data[k] != v {
			t.Fatalf("event data %v, want %v", data, want)
		}
	}
	// GET shows it.
	st, m, _ = e.do("GET", path, "")
	if st != 200 || m["location"] != "CURRENT_USER" || m["store"] != "MY" || m["thumbprint"] != a.SHA1 || m["subject"] != a.Subject {
		t.Fatalf("get: %d %v", st, m)
	}
	// The same certificate again: nothing to do.
	n := e.eventCount(id)
	if st, m, _ := e.do("PUT", path, certBody(0, "MY", a.SHA1)); st != 200 || m["code"] != "S_FALSE" || e.eventCount(id) != n {
		t.Fatalf("set again: %d %v", st, m)
	}
	// By subject name (BITS form: RDN values in encoding order).
	if st, m, _ := e.do("PUT", path, `{"location":"CURRENT_USER","store":"MY","subject":"ferry tests, alice-b"}`); st != 200 || m["code"] != "S_OK" {
		t.Fatalf("set by subject: %d %v", st, m)
	}
	if err := json.Unmarshal(e.lastEvents(id, 1)[0].Data, &data); err != nil || data["sha1"] != b.SHA1 || data["by"] != "name" {
		t.Fatalf("set by subject: event %v %v", data, err)
	}
	// An ambiguous subject is refused and changes nothing.
	n = e.eventCount(id)
	if st, m, _ := e.do("PUT", path, `{"location":"CURRENT_USER","store":"MY","subject":"ferry tests"}`); st != 400 || m["code"] != "E_INVALIDARG" || !strings.Contains(m["detail"].(string), "ambiguous") {
		t.Fatalf("ambiguous subject: %d %v", st, m)
	}
	if e.eventCount(id) != n {
		t.Fatal("an ambiguous subject changed the job")
	}
	// Others may neither set nor remove it; admins neither.
	for _, c := range []*httpClient{e.as(identity.RoleUser, "bob"), e.as(identity.RoleAdmin, "root")} {
		for _, r := range []struct{ method, body string }{{"PUT", certBody(0, "MY", a.SHA1)}, {"DELETE", ""}} {
			n := e.eventCount(id)
			if st, m, _ := e.doAs(c, r.method, path, r.body); st != 403 || m["code"] != "E_ACCESSDENIED" || m["hresult"] != "0x80070005" {
				t.Fatalf("%s by another: %d %v", r.method, st, m)
			}
			if e.eventCount(id) != n {
				t.Fatalf("a refused %s changed the job", r.method)
			}
		}
	}
	// Remove: S_OK, then S_FALSE.
	if st, m, _ := e.do("DELETE", path, ""); st != 200 || m["code"] != "S_OK" || m["job"].(map[string]any)["client_certificate"] != nil {
		t.Fatalf("remove: %d %v", st, m)
	}
	if err := json.Unmarshal(e.lastEvents(id, 1)[0].Data, &data); err != nil || data["reason"] != "removed" {
		t.Fatalf("remove event %v %v", data, err)
	}
	n = e.eventCount(id)
	if st, m, _ := e.do("DELETE", path, ""); st != 200 || m["code"] != "S_FALSE" || e.eventCount(id) != n {
		t.Fatalf("remove again: %d %v", st, m)
	}
	if st, m, _ := e.do("GET", path, ""); st != 404 || m["code"] != "RPC_X_BAD_STUB_DATA" {
		t.Fatalf("get after remove: %d %v", st, m)
	}
}

// TestTakeOwnership: only administrators take ownership; the new owner gets
// the job without the previous owner's certificate, in one decision.
func TestTakeOwnership(t *testing.T) {
	e := newEnvWithVault(t)
	a := e.importCert("MY", pkix.Name{CommonName: "alice-a"})
	id := e.create(`{"display_name":"owned","files":[` + goodFile + `]}`)
	if st, m, _ := e.do("PUT", "/v1/jobs/"+id+"/client-certificate", certBody("CURRENT_USER", "MY", a.SHA1)); st != 200 {
		t.Fatalf("set: %d %v", st, m)
	}
	bob := e.as(identity.RoleUser, "bob")
	admin := e.as(identity.RoleAdmin, "root")
	for name, c := range map[string]*httpClient{"bob": bob, "the owner": e.client} {
		n := e.eventCount(id)
		if st, m, _ := e.doAs(c, "POST", "/v1/jobs/"+id+"/take-ownership", ""); st != 403 || m["code"] != "E_ACCESSDENIED" {
			t.Fatalf("take-ownership by %s: %d %v", name, st, m)
		}
		if e.eventCount(id) != n {
			t.Fatalf("a refused take-ownership by %s changed the job", name)
		}
	}
	st, m, _ := e.doAs(admin, "POST", "/v1/jobs/"+id+"/take-ownership", "")
	if st != 200 || m["code"] != "S_OK" {
		t.Fatalf("take-ownership: %d %v", st, m)
	}
	j := m["job"].(map[string]any)
	if j["owner"] != "spiffe://ferry.test/admin/root" && !strings.HasSuffix(j["owner"].(string), "/root") {
		t.Fatalf("owner %v", j["owner"])
	}
	if j["client_certificate"] != nil {
		t.Fatalf("the certificate survived the change of owner: %v", j["client_certificate"])
	}
	evs := e.lastEvents(id, 2)
	if evs[0].Type != events.TypeJobOwnerChanged || evs[1].Type != events.TypeClientCertificateRemoved {
		t.Fatalf("events %s, %s", evs[0].Type, evs[1].Type)
	}
	var changed events.JobOwnerChanged
	var removed events.ClientCertificateRemoved
	if err := json.Unmarshal(evs[0].Data, &changed); err != nil || changed.From != alice || changed.To != j["owner"] {
		t.Fatalf("owner change %+v %v", changed, err)
	}
	if err := json.Unmarshal(evs[1].Data, &removed); err != nil || removed.Reason != "ownership-changed" {
		t.Fatalf("removal %+v %v", removed, err)
	}
	if evs[0].Seq+1 != evs[1].Seq {
		t.Fatalf("the two events are not one decision: seqs %d, %d", evs[0].Seq, evs[1].Seq)
	}
	// Taking it again is a no-op; alice no longer sees the job.
	if st, m, _ := e.doAs(admin, "POST", "/v1/jobs/"+id+"/take-ownership", ""); st != 200 || m["code"] != "S_FALSE" {
		t.Fatalf("take again: %d %v", st, m)
	}
	if st, m, _ := e.do("GET", "/v1/jobs/"+id+"/client-certificate", ""); st != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("alice after losing the job: %d %v", st, m)
	}
	// The new owner may now set a certificate of its own (its own store is
	// empty: no such certificate).
	if st, m, _ := e.doAs(admin, "PUT", "/v1/jobs/"+id+"/client-certificate", certBody("CURRENT_USER", "MY", a.SHA1)); st != 404 || m["code"] != "CRYPT_E_NOT_FOUND" {
		t.Fatalf("admin sets alice's certificate: %d %v", st, m)
	}
}

// TestClientCertificateWithoutVault: a coordinator without certvault
// cannot set certificates.
func TestClientCertificateWithoutVault(t *testing.T) {
	e := newEnv(t)
	id := e.create(`{"display_name":"x"}`)
	st, m, _ := e.do("PUT", "/v1/jobs/"+id+"/client-certificate", certBody(0, "MY", strings.Repeat("ab", 20)))
	if st != 503 || m["code"] != "ERROR_SERVICE_UNAVAILABLE" {
		t.Fatalf("set without a vault: %d %v", st, m)
	}
	if st, m, _ := e.do("DELETE", "/v1/jobs/"+id+"/client-certificate", ""); st != 200 || m["code"] != "S_FALSE" {
		t.Fatalf("remove without a vault: %d %v", st, m)
	}
}

type httpClient = http.Client
