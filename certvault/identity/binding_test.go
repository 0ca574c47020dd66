package identity

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/job"
)

// TestChannelBinding: a bound request passes; a value copied from another
// connection, a missing, malformed or doubled header do not.
func TestChannelBinding(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			ids := newIdentities(t)
			ts := newServer(t, ids.ca, ids.authenticator(), tv.v, tls.RequestClientCert)
			cert := ids.certs["agent"]
			cfg := ClientTLSConfig(*cert, ids.ca.Pool())
			cfg.MinVersion, cfg.MaxVersion = tv.v, tv.v

			// DoBound: one connection, its own binding.
			req, _ := http.NewRequest(http.MethodGet, ts.URL+"/v1/bound", nil)
			resp, err := DoBound(t.Context(), cfg, req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if err := resp.Body.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("bound request: %d %s", resp.StatusCode, body)
			}
			if resp.TLS == nil || resp.TLS.Version != tv.v {
				t.Errorf("resp.TLS = %+v", resp.TLS)
			}
			if req.Header.Get(ChannelBindingHeader) != "" {
				t.Error("DoBound modified the caller's request")
			}

			// The server reports the same value DoBound sent.
			req, _ = http.NewRequest(http.MethodGet, ts.URL+SessionPath+"?channel_binding=true", nil)
			resp, err = DoBound(t.Context(), cfg, req)
			if err != nil {
				t.Fatal(err)
			}
			var info ClientCertInfo
			err = json.NewDecoder(resp.Body).Decode(&info)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			sent, _ := ChannelBinding(resp.TLS)
			if info.ChannelBinding == "" || info.ChannelBinding != sent {
				t.Errorf("server saw %q, DoBound sent %q", info.ChannelBinding, sent)
			}

			// A value taken from connection A, replayed on connection B.
			a := newClient(t, cert, ids.ca, tv.v)
			resp, body, err = get(a, ts.URL+SessionPath+"?channel_binding=true")
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(body, &info); err != nil {
				t.Fatal(err)
			}
			fromA := info.ChannelBinding
			// It is accepted on A itself (same connection: keep-alive) …
			resp, body, err = get(a, ts.URL+"/v1/bound", ChannelBindingHeader, fromA)
			if err != nil || resp.StatusCode != http.StatusNoContent {
				t.Fatalf("own value on its own connection: %v %s", err, body)
			}
			// … and refused on B.
			b := newClient(t, cert, ids.ca, tv.v)
			resp, body, err = get(b, ts.URL+"/v1/bound", ChannelBindingHeader, fromA)
			if err != nil {
				t.Fatal(err)
			}
			if p := checkProblem(t, resp, body, 403, job.E_ACCESSDENIED); !strings.Contains(p.Detail, "another connection") {
				t.Errorf("detail %q", p.Detail)
			}

			zero := "tls-exporter=" + base64.RawURLEncoding.EncodeToString(make([]byte, 32))
			for name, hdr := range map[string][]string{
				"missing":     nil,
				"two headers": {ChannelBindingHeader, fromA, ChannelBindingHeader, fromA},
				"other type":  {ChannelBindingHeader, strings.Replace(fromA, "tls-exporter", "tls-unique", 1)},
				"no type":     {ChannelBindingHeader, strings.TrimPrefix(fromA, "tls-exporter=")},
				"padded":      {ChannelBindingHeader, "tls-exporter=" + base64.URLEncoding.EncodeToString(make([]byte, 32))},
				"std base64":  {ChannelBindingHeader, "tls-exporter=" + base64.RawStdEncoding.EncodeToString([]byte(strings.Repeat("\xff", 32)))},
				"short":       {ChannelBindingHeader, "tls-exporter=" + base64.RawURLEncoding.EncodeToString(make([]byte, 16))},
				"wrong value": {ChannelBindingHeader, zero},
				"empty value": {ChannelBindingHeader, "tls-exporter="},
			} {
				resp, body, err := get(b, ts.URL+"/v1/bound", hdr...)
				if err != nil {
					t.Fatal(err)
				}
				p := checkProblem(t, resp, body, 403, job.E_ACCESSDENIED)
				t.Logf("%s: %s", name, p.Detail)
			}
		})
	}
}

func TestChannelBindingWithoutTLS(t *testing.T) {
	if _, err := ChannelBinding(nil); err == nil {
		t.Error("ChannelBinding(nil) succeeded")
	}
	if _, err := ChannelBinding(&tls.ConnectionState{}); err == nil {
		t.Error("ChannelBinding of an unfinished handshake succeeded")
	}
	r, _ := http.NewRequest(http.MethodGet, "http://example.invalid/", nil)
	r.Header.Set(ChannelBindingHeader, "tls-exporter="+base64.RawURLEncoding.EncodeToString(make([]byte, 32)))
	if err := CheckChannelBinding(r); job.CodeOf(err) != job.E_ACCESSDENIED {
		t.Errorf("CheckChannelBinding without TLS = %v", err)
	}
}

func TestDoBoundErrors(t *testing.T) {
	ids := newIdentities(t)
	ts := newServer(t, ids.ca, ids.authenticator(), 0, tls.RequestClientCert)
	cfg := ClientTLSConfig(*ids.certs["agent"], ids.ca.Pool())

	req, _ := http.NewRequest(http.MethodGet, strings.Replace(ts.URL, "https", "http", 1)+"/v1/bound", nil)
	if _, err := DoBound(t.Context(), cfg, req); err == nil {
		t.Error("DoBound sent a request over http")
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	req, _ = http.NewRequest(http.MethodGet, ts.URL+"/v1/bound", nil)
	if _, err := DoBound(ctx, cfg, req); err == nil {
		t.Error("DoBound with a cancelled context succeeded")
	}

	// A server the client does not trust.
	untrusting := ClientTLSConfig(*ids.certs["agent"], ids.other.Pool())
	if _, err := DoBound(t.Context(), untrusting, req); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("DoBound to an untrusted server: %v", err)
	}

	// A request body is sent on the bound connection.
	post, _ := http.NewRequest(http.MethodPost, ts.URL+"/v1/bound", strings.NewReader(`{"grant":"x"}`))
	resp, err := DoBound(t.Context(), cfg, post)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("bound POST: %d", resp.StatusCode)
	}
}
