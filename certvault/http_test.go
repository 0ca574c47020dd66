package certvault

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/job"
	"software.sslmate.com/src/go-pkcs12"
)

// testAuth stands in for the identity layer: the caller comes from two
// headers. Without them the request is unauthenticated.
func testAuth(r *http.Request) (Caller, error) {
	p, role := r.Header.Get("X-Test-Principal"), r.Header.Get("X-Test-Role")
	switch {
	case p == "":
		return Caller{}, errors.New("no client certificate")
	case p == "revoked":
		return Caller{}, job.Errorf(job.E_ACCESSDENIED, "the certificate is revoked")
	}
	return Caller{Principal: p, Role: role}, nil
}

type httpEnv struct {
	*env
	srv *httptest.Server
}

func newHTTPEnv(t *testing.T) *httpEnv {
	e := newEnv(t)
	srv := httptest.NewServer(e.v.Handler(testAuth))
	t.Cleanup(srv.Close)
	return &httpEnv{env: e, srv: srv}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
	return m
}

func (h *httpEnv) do(t *testing.T, c Caller, method, path, contentType string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Principal != "" {
		req.Header.Set("X-Test-Principal", c.Principal)
		req.Header.Set("X-Test-Role", c.Role)
	}
	resp, err := http.DefaultClient.Do(req)
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

// wantProblem checks a problem+json answer: status, code, HRESULT and the
// full shape.
func wantProblem(t *testing.T, r response, status int, code, hr string) map[string]any {
	t.Helper()
	if r.status != status || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("got %d %s %s, want %d problem %s", r.status, r.header.Get("Content-Type"), r.body, status, code)
	}
	m := r.json(t)
	if m["code"] != code || m["hresult"] != hr || m["status"] != float64(status) || m["type"] != "about:blank" ||
		m["title"] == "" || m["detail"] == "" || m["instance"] == "" {
		t.Fatalf("problem %s, want %s %s", r.body, code, hr)
	}
	return m
}

func importJSON(t *testing.T, v map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHTTPRoutes(t *testing.T) {
	h := newHTTPEnv(t)
	p := newPKI(t)
	req, c, _ := pemImport(t, p, leafOpts{})
	sum := sha1Hex(c)
	base := "/v1/stores/CURRENT_USER/My/certificates"

	// Import PEM.
	r := h.do(t, alice, "POST", base, "application/json", importJSON(t, map[string]any{"pem": string(req.PEM)}))
	if r.status != http.StatusCreated || r.header.Get("Location") != base+"/"+sum {
		t.Fatalf("POST pem: %d %s %v", r.status, r.body, r.header)
	}
	var info CertInfo
	if err := json.Unmarshal(r.body, &info); err != nil || info.SHA1 != sum || info.Store != "MY" || info.Location != CurrentUser || !info.HasKey {
		t.Fatalf("POST pem answer %s: %v", r.body, err)
	}
	if m := r.json(t); m["location"] != "CURRENT_USER" || m["sha256"] == nil || m["not_after"] == nil || m["key_algorithm"] != "ECDSA-P256" {
		t.Errorf("CertInfo JSON %s", r.body)
	}

	// Import PFX, by location number, with a password.
	c2, k2 := p.issue(t, leafOpts{})
	pfxBytes := pfx(t, pkcs12.LegacyDES, k2, c2, []*x509.Certificate{p.cert}, "hunter2-pfx")
	r = h.do(t, alice, "POST", "/v1/stores/0/MY/certificates", "application/json; charset=utf-8",
		importJSON(t, map[string]any{"pfx": base64.StdEncoding.EncodeToString(pfxBytes), "password": "hunter2-pfx"}))
	if r.status != http.StatusCreated {
		t.Fatalf("POST pfx: %d %s", r.status, r.body)
	}

	// List.
	r = h.do(t, alice, "GET", "/v1/stores/bg_cert_store_location_current_user/my/certificates", "", nil)
	var list struct{ Certificates []CertInfo }
	if err := json.Unmarshal(r.body, &list); r.status != 200 || err != nil || len(list.Certificates) != 2 {
		t.Fatalf("GET list: %d %s", r.status, r.body)
	}
	// One.
	r = h.do(t, alice, "GET", base+"/"+strings.ToUpper(sum), "", nil)
	if r.status != 200 || !bytes.Contains(r.body, []byte(sum)) {
		t.Fatalf("GET one: %d %s", r.status, r.body)
	}
	// Delete, twice.
	if r = h.do(t, alice, "DELETE", base+"/"+sum, "", nil); r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	wantProblem(t, h.do(t, alice, "DELETE", base+"/"+sum, "", nil), 404, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
	wantProblem(t, h.do(t, alice, "GET", base+"/"+sum, "", nil), 404, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)

	// USERS with a percent-encoded principal and backslash.
	path := "/v1/stores/USERS/" + url.PathEscape(alice.Principal+`\MY`) + "/certificates"
	r = h.do(t, admin, "GET", path, "", nil)
	if err := json.Unmarshal(r.body, &list); r.status != 200 || err != nil || len(list.Certificates) != 1 || list.Certificates[0].Store != alice.Principal+`\MY` {
		t.Fatalf("GET USERS: %d %s", r.status, r.body)
	}
	wantProblem(t, h.do(t, bob, "GET", path, "", nil), 403, "E_ACCESSDENIED", hrAccessDenied)

	// The log holds neither the password nor the key.
	forms := secretForms(t, k2)
	forms["password"] = []byte("hunter2-pfx")
	scanFor(t, "the log", h.log.Bytes(), forms)
}

func TestHTTPErrors(t *testing.T) {
	h := newHTTPEnv(t)
	p := newPKI(t)
	c, k := p.issue(t, leafOpts{})
	goodPFX := pfx(t, pkcs12.Modern2023, k, c, nil, "right-password")
	pemReq, _, _ := pemImport(t, p, leafOpts{})
	base := "/v1/stores/CURRENT_USER/MY/certificates"
	long := strings.Repeat("s", 256)

	cases := []struct {
		name         string
		caller       Caller
		method, path string
		ctype        string
		body         []byte
		status       int
		code, hr     string
	}{
		{"unauthenticated", Caller{}, "GET", base, "", nil, 401, "E_UNAUTHENTICATED", "0x80090350"},
		{"auth refusal keeps its code", Caller{Principal: "revoked"}, "GET", base, "", nil, 403, "E_ACCESSDENIED", hrAccessDenied},
		{"no role", Caller{Principal: "p"}, "GET", base, "", nil, 403, "E_ACCESSDENIED", hrAccessDenied},
		{"location 8", alice, "GET", "/v1/stores/8/MY/certificates", "", nil, 400, "E_NOTIMPL", hrNotImpl},
		{"location name", alice, "GET", "/v1/stores/HKEY_CURRENT_USER/MY/certificates", "", nil, 400, "E_NOTIMPL", hrNotImpl},
		{"store too long", alice, "GET", "/v1/stores/0/" + long + "/certificates", "", nil, 400, "BG_E_STRING_TOO_LONG", hrTooLong},
		{"store with slash", alice, "GET", "/v1/stores/0/a%2Fb/certificates", "", nil, 400, "E_INVALIDARG", hrInvalidArg},
		{"unknown store", alice, "GET", "/v1/stores/0/Nope/certificates", "", nil, 404, "ERROR_FILE_NOT_FOUND", hrFileNotFound},
		{"user writes LOCAL_MACHINE", alice, "POST", "/v1/stores/LOCAL_MACHINE/MY/certificates", "application/json", importJSON(t, map[string]any{"pem": string(pemReq.PEM)}), 403, "E_ACCESSDENIED", hrAccessDenied},
		{"sha1 too short", alice, "DELETE", base + "/abcd", "", nil, 400, "RPC_X_BAD_STUB_DATA", hrBadStub},
		{"sha256 for sha1", alice, "GET", base + "/" + strings.Repeat("ab", 32), "", nil, 400, "RPC_X_BAD_STUB_DATA", hrBadStub},
		{"sha1 not hex", alice, "GET", base + "/" + strings.Repeat("zz", 20), "", nil, 400, "E_INVALIDARG", hrInvalidArg},
		{"empty body", alice, "POST", base, "application/json", nil, 400, "E_INVALIDARG", hrInvalidArg},
		{"not JSON", alice, "POST", base, "application/json", []byte("pem=x"), 400, "E_INVALIDARG", hrInvalidArg},
		{"wrong content type", alice, "POST", base, "text/plain", []byte(`{"pem":"x"}`), 415, "E_INVALIDARG", hrInvalidArg},
		{"unknown field", alice, "POST", base, "application/json", []byte(`{"pem":"x","pfx_b64":"y"}`), 400, "E_INVALIDARG", hrInvalidArg},
		{"trailing data", alice, "POST", base, "application/json", []byte(`{"pem":"x"} {}`), 400, "E_INVALIDARG", hrInvalidArg},
		{"no certificate", alice, "POST", base, "application/json", []byte(`{}`), 400, "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"empty pem", alice, "POST", base, "application/json", []byte(`{"pem":""}`), 400, "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"both", alice, "POST", base, "application/json", []byte(`{"pem":"x","pfx":"eA=="}`), 400, "E_INVALIDARG", hrInvalidArg},
		{"pem with password", alice, "POST", base, "application/json", []byte(`{"pem":"x","password":"pw-for-pem"}`), 400, "E_INVALIDARG", hrInvalidArg},
		{"pfx not base64", alice, "POST", base, "application/json", []byte(`{"pfx":"***","password":"x"}`), 400, "E_INVALIDARG", hrInvalidArg},
		{"pfx a number", alice, "POST", base, "application/json", []byte(`{"pfx":7}`), 400, "E_INVALIDARG", hrInvalidArg},
		{"wrong password", alice, "POST", base, "application/json", importJSON(t, map[string]any{"pfx": goodPFX, "password": "guess-Tr0ub4dor"}), 400, "E_INVALIDARG", hrInvalidArg},
		{"garbage pem", alice, "POST", base, "application/json", []byte(`{"pem":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}`), 400, "E_INVALIDARG", hrInvalidArg},
		{"too large", alice, "POST", base, "application/json", append([]byte(`{"pem":"`), bytes.Repeat([]byte("a"), MaxBody)...), 413, "E_INVALIDARG", hrInvalidArg},
		{"PUT", alice, "PUT", base, "", nil, 405, "E_NOTIMPL", hrNotImpl},
		{"POST on one", alice, "POST", base + "/" + strings.Repeat("ab", 20), "", nil, 405, "E_NOTIMPL", hrNotImpl},
		{"unknown path", alice, "GET", "/v1/certs", "", nil, 404, "ERROR_NOT_FOUND", "0x80070490"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.do(t, c.caller, c.method, c.path, c.ctype, c.body)
			m := wantProblem(t, r, c.status, c.code, c.hr)
			if c.status == 405 && r.header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			for _, secret := range []string{"guess-Tr0ub4dor", "pw-for-pem", "right-password"} {
				if bytes.Contains(r.body, []byte(secret)) {
					t.Errorf("the answer echoes %q: %s", secret, r.body)
				}
			}
			_ = m
		})
	}
	if b := h.log.Bytes(); bytes.Contains(b, []byte("guess-Tr0ub4dor")) || bytes.Contains(b, []byte("pw-for-pem")) {
		t.Errorf("the log holds a password: %s", b)
	}
}

func TestHTTPAuditFailureIs503(t *testing.T) {
	h := newHTTPEnv(t)
	req, _, _ := pemImport(t, newPKI(t), leafOpts{})
	h.store.fail.Store(true)
	r := h.do(t, alice, "POST", "/v1/stores/0/MY/certificates", "application/json", importJSON(t, map[string]any{"pem": string(req.PEM)}))
	m := wantProblem(t, r, 503, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	if !strings.Contains(m["detail"].(string), "audit") || strings.Contains(string(r.body), "audit log unavailable") {
		t.Errorf("detail %q (the internal cause must stay internal)", m["detail"])
	}
	if !bytes.Contains(h.log.Bytes(), []byte("audit log unavailable")) {
		t.Error("the cause was not logged")
	}
}

func TestHandlerWithoutAuthRefuses(t *testing.T) {
	e := newEnv(t)
	srv := httptest.NewServer(e.v.Handler(nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/stores/0/MY/certificates")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("nil auth: %d", resp.StatusCode)
	}
}

func TestDecodeImportRequest(t *testing.T) {
	req, err := DecodeImportRequest([]byte(`{"pfx":"AQID","password":"pw"}`))
	if err != nil || !bytes.Equal(req.PFX, []byte{1, 2, 3}) || string(req.Password) != "pw" || req.PEM != nil {
		t.Fatalf("pfx: %v, %v", req, err)
	}
	req, err = DecodeImportRequest([]byte(` {"pem":"PEM TEXT"} `))
	if err != nil || string(req.PEM) != "PEM TEXT" {
		t.Fatalf("pem: %v, %v", req, err)
	}
	// A password-less PKCS#12 file: no password field at all.
	if req, err = DecodeImportRequest([]byte(`{"pfx":"AQID"}`)); err != nil || req.Password != nil {
		t.Fatalf("pfx without password: %v, %v", req, err)
	}
}

func TestHTTPRequestIDCorrelates(t *testing.T) {
	h := newHTTPEnv(t)
	req, _, _ := pemImport(t, newPKI(t), leafOpts{})
	for _, id := range []string{"req-7f3a", "bad id\twith tab"} {
		hr, _ := http.NewRequest("POST", h.srv.URL+"/v1/stores/0/MY/certificates", bytes.NewReader(importJSON(t, map[string]any{"pem": string(req.PEM)})))
		hr.Header.Set("X-Test-Principal", alice.Principal)
		hr.Header.Set("X-Test-Role", alice.Role)
		hr.Header.Set("X-Request-Id", id)
		resp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	evs := h.vaultEvents()
	if len(evs) != 2 || evs[0].CorrelationID != "req-7f3a" || evs[1].CorrelationID != "" {
		t.Fatalf("correlation IDs %q, %q", evs[0].CorrelationID, evs[1].CorrelationID)
	}
}
