package identity

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
)

var sessionFields = []string{
	"certificate", "chain", "sha1", "sha256", "subject", "issuer", "serial",
	"not_before", "not_after", "flags", "verified", "principal", "role", "denied_by_mapper",
}

// TestSessionHandlerFields checks every member of the report against the
// certificate the client sent and the connection it used.
func TestSessionHandlerFields(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			ids := newIdentities(t)
			ts := newServer(t, ids.ca, ids.authenticator(), tv.v, tls.RequestClientCert)
			cert := ids.certs["agent"]
			leaf := cert.Leaf
			c := newClient(t, cert, ids.ca, tv.v)

			// Without channel binding: exactly these members.
			resp, body, err := get(c, ts.URL+SessionPath)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%v %v %s", resp, err, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q", cc)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatal(err)
			}
			if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, slices.Sorted(slices.Values(sessionFields))) {
				t.Fatalf("members %v, want %v", got, slices.Sorted(slices.Values(sessionFields)))
			}
			str := func(k string) string {
				var s string
				if err := json.Unmarshal(m[k], &s); err != nil {
					t.Fatalf("%s: %v", k, err)
				}
				return s
			}
			s1, s256 := sha1.Sum(leaf.Raw), sha256.Sum256(leaf.Raw)
			want := map[string]string{
				"certificate": base64.StdEncoding.EncodeToString(leaf.Raw),
				"sha1":        hex.EncodeToString(s1[:]),
				"sha256":      hex.EncodeToString(s256[:]),
				"subject":     "CN=host-1,OU=agent,O=ferry",
				"issuer":      "CN=ferry CA test.ferry,O=ferry",
				"serial":      fmt.Sprintf("%x", leaf.SerialNumber),
				"not_before":  leaf.NotBefore.UTC().Format(time.RFC3339),
				"not_after":   leaf.NotAfter.UTC().Format(time.RFC3339),
				"principal":   "spiffe://test.ferry/agent/host-1",
				"role":        "agent",
			}
			for k, v := range want {
				if got := str(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			var chain []string
			var flags []string
			var verified, denied bool
			for k, p := range map[string]any{"chain": &chain, "flags": &flags, "verified": &verified, "denied_by_mapper": &denied} {
				if err := json.Unmarshal(m[k], p); err != nil {
					t.Fatalf("%s: %v", k, err)
				}
			}
			wantChain := []string{base64.StdEncoding.EncodeToString(leaf.Raw), base64.StdEncoding.EncodeToString(ids.ca.Cert.Raw)}
			if !slices.Equal(chain, wantChain) || !slices.Equal(flags, []string{"OK"}) || !verified || denied {
				t.Errorf("chain %d certs (ok=%v) flags %v verified %v denied %v", len(chain), slices.Equal(chain, wantChain), flags, verified, denied)
			}

			// With channel binding: the same plus the connection's
			// tls-exporter value, which the client computes itself.
			var reused []bool
			trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }}
			bindingOf := func(c *http.Client) (server, client string) {
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodGet, ts.URL+SessionPath+"?channel_binding=true", nil)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var info ClientCertInfo
				if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
					t.Fatal(err)
				}
				client, err = ChannelBinding(resp.TLS)
				if err != nil {
					t.Fatal(err)
				}
				ekm, err := resp.TLS.ExportKeyingMaterial("EXPORTER-Channel-Binding", nil, 32)
				if err != nil {
					t.Fatal(err)
				}
				if client != "tls-exporter="+base64.RawURLEncoding.EncodeToString(ekm) {
					t.Errorf("ChannelBinding %q is not tls-exporter= base64url of the exporter", client)
				}
				return info.ChannelBinding, client
			}
			srvA, cliA := bindingOf(c)
			if srvA == "" || srvA != cliA {
				t.Errorf("channel binding: server saw %q, client computed %q", srvA, cliA)
			}
			if strings.ContainsAny(strings.TrimPrefix(srvA, "tls-exporter="), "=+/") {
				t.Errorf("channel binding %q is not unpadded base64url", srvA)
			}
			srvA2, _ := bindingOf(c) // same connection (keep-alive, one connection per host)
			other := newClient(t, cert, ids.ca, tv.v)
			srvB, cliB := bindingOf(other) // a new connection
			if srvB != cliB {
				t.Errorf("second connection: server %q client %q", srvB, cliB)
			}
			if srvB == srvA {
				t.Error("two connections have the same channel binding")
			}
			if !slices.Equal(reused, []bool{true, true, false}) {
				t.Fatalf("connection reuse %v, want the first two requests on the first connection", reused)
			}
			if srvA2 != srvA {
				t.Error("one connection gave two channel bindings")
			}
			resp, body, err = get(c, ts.URL+SessionPath+"?channel_binding=false")
			if err != nil || resp.StatusCode != 200 || strings.Contains(string(body), "channel_binding") {
				t.Errorf("channel_binding=false: %v %s", err, body)
			}
		})
	}
}

func TestSessionHandlerErrors(t *testing.T) {
	ids := newIdentities(t)
	a := ids.authenticator()
	ts := newServer(t, ids.ca, a, 0, tls.RequestClientCert)
	user := newClient(t, ids.certs["user"], ids.ca, 0)
	anon := newClient(t, nil, ids.ca, 0)

	// No certificate: ERROR_NOT_FOUND, as HttpReceiveClientCertificate.
	resp, body, err := get(anon, ts.URL+SessionPath)
	if err != nil {
		t.Fatal(err)
	}
	if p := checkProblem(t, resp, body, 404, job.ERROR_NOT_FOUND); p.HResult != "0x80070490" {
		t.Errorf("hresult %s", p.HResult)
	}

	for _, q := range []string{"?verbose=1", "?channel_binding=maybe", "?channel_binding=true&channel_binding=false", "?channel_binding=%zz"} {
		resp, body, err := get(user, ts.URL+SessionPath+q)
		if err != nil {
			t.Fatal(err)
		}
		p := checkProblem(t, resp, body, 400, job.E_INVALIDARG)
		t.Logf("%s: %s", q, p.Detail)
	}
	if _, body, _ := get(user, ts.URL+SessionPath+"?verbose=1"); !strings.Contains(string(body), `\"verbose\"`) {
		t.Errorf("unknown parameter not named: %s", body)
	}

	req, _ := http.NewRequest(http.MethodPost, ts.URL+SessionPath, nil)
	resp, err = user.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}

	// Plain HTTP: no TLS, so no certificate.
	plain := httptest.NewServer(a.SessionHandler())
	t.Cleanup(plain.Close)
	t.Cleanup(plain.Client().CloseIdleConnections)
	resp, body, err = get(plain.Client(), plain.URL+SessionPath)
	if err != nil {
		t.Fatal(err)
	}
	checkProblem(t, resp, body, 404, job.ERROR_NOT_FOUND)

	// Middleware on plain HTTP: 401 E_UNAUTHENTICATED.
	mw := httptest.NewServer(a.Middleware(http.NotFoundHandler()))
	t.Cleanup(mw.Close)
	t.Cleanup(mw.Client().CloseIdleConnections)
	resp, body, err = get(mw.Client(), mw.URL+"/v1/jobs")
	if err != nil {
		t.Fatal(err)
	}
	checkProblem(t, resp, body, 401, job.E_UNAUTHENTICATED)
}

// TestSessionHandlerStandalone: without Middleware the handler
// authenticates by itself.
func TestSessionHandlerStandalone(t *testing.T) {
	ids := newIdentities(t)
	a := ids.authenticator()
	srvCert := issue(t, ids.ca, IssueRequest{Role: RoleService, Name: "s", DNSNames: []string{"localhost"}, IPs: loopbackIPs})
	ts := httptest.NewUnstartedServer(a.SessionHandler())
	ts.TLS = ServerTLSConfig(srvCert, ids.ca.Pool())
	ts.StartTLS()
	t.Cleanup(ts.Close)
	for name, want := range map[string]bool{"user": true, "expired": false} {
		resp, body, err := get(newClient(t, ids.certs[name], ids.ca, 0), ts.URL+SessionPath)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %s", name, err, body)
		}
		var info ClientCertInfo
		if err := json.Unmarshal(body, &info); err != nil {
			t.Fatal(err)
		}
		if info.Verified != want {
			t.Errorf("%s: verified %v", name, info.Verified)
		}
	}
}
