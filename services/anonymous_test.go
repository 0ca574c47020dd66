package services_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// authOrigin is a loopback HTTPS origin (Go's TLS server) with one client
// authentication mode. It counts the TLS handshakes it began (ClientHellos)
// and the HTTP requests it served, with the number of client certificates
// each request's connection carried.
type authOrigin struct {
	srv      *httptest.Server
	hellos   atomic.Int32
	mu       sync.Mutex
	reqCerts []int // per HTTP request: len(r.TLS.PeerCertificates)
}

func newAuthOrigin(t *testing.T, ca *servicestest.CA, mode tls.ClientAuthType, version uint16, body []byte) *authOrigin {
	t.Helper()
	o := &authOrigin{}
	o.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.reqCerts = append(o.reqCerts, len(r.TLS.PeerCertificates))
		o.mu.Unlock()
		http.ServeContent(w, r, "file.bin", time.Unix(1700000000, 0), bytes.NewReader(body))
	}))
	o.srv.EnableHTTP2 = false
	// The handshakes the agent aborts are expected; keep them out of the log.
	o.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	o.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.Issue(t, "localhost", x509.ExtKeyUsageServerAuth)},
		ClientAuth:   mode,
		// No client certificate is ever presented in these tests; the pool
		// only has to exist for VerifyClientCertIfGiven.
		ClientCAs:  servicestest.NewCA(t, "anonymous test client CA").Pool,
		MinVersion: tls.VersionTLS12,
		MaxVersion: version,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			o.hellos.Add(1)
			return nil, nil
		},
	}
	o.srv.StartTLS()
	t.Cleanup(o.srv.Close)
	return o
}

func (o *authOrigin) url() string { return o.srv.URL + "/file.bin" }

func (o *authOrigin) requests() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]int(nil), o.reqCerts...)
}

// apiGetJSON answers GET path on the coordinator as a generic JSON object.
func apiGetJSON(t *testing.T, s *stack, path string) map[string]any {
	t.Helper()
	resp, err := s.client.HTTP.Get(s.client.BaseURL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return m
}

// jobOptions is the "options" member of GET /v1/jobs/{id} once the read
// model has caught up with version (queries read the projection, which
// follows the event log).
func jobOptions(t *testing.T, s *stack, id string, version uint64) map[string]any {
	t.Helper()
	var m map[string]any
	deadline := time.Now().Add(15 * time.Second)
	for {
		m = apiGetJSON(t, s, "/v1/jobs/"+id)
		if v, _ := m["version"].(float64); uint64(v) >= version {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /v1/jobs/%s stayed at version %v, want %d", id, m["version"], version)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not timing
	}
	opts, ok := m["options"].(map[string]any)
	if !ok {
		t.Fatalf("GET /v1/jobs/%s has no options object: %v", id, m)
	}
	return opts
}

func transferSettled(j *job.Job) bool {
	return j.State == job.Transferred || j.State == job.Errored || j.State == job.TransientError
}

// TestAnonymousClientAuth: the anonymous_client_auth job option against Go
// TLS origins. An origin whose client authentication is optional
// (VerifyClientCertIfGiven) fails a job without the option with
// ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED before any HTTP request (BITS);
// the option, set by PATCH, lets the same job download with no certificate.
// An origin that requires one (RequireAnyClientCert) still refuses a job
// that has the option.
func TestAnonymousClientAuth(t *testing.T) {
	ca := servicestest.NewCA(t, "anonymous test origin CA")
	base := startStack(t, ca.File)
	ctx := context.Background()
	content := make([]byte, 300_000)
	if _, err := rand.Read(content); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	wantSHA := hex.EncodeToString(sum[:])

	t.Run("optional client auth", func(t *testing.T) {
		s := &stack{t: t, dev: base.dev, client: base.client, root: base.root}
		o := newAuthOrigin(t, ca, tls.VerifyClientCertIfGiven, tls.VersionTLS13, content)
		dest := s.dest("optional/file.bin")
		id := s.create(events.FileSpec{RemoteURL: o.url(), LocalName: dest})

		j := s.until(id, "the job to settle", transferSettled)
		if j.State != job.Errored {
			t.Fatalf("job without anonymous_client_auth: %s %+v, want ERROR", j.State, j.Error)
		}
		if e := j.Error; e == nil || e.Context != job.ContextRemoteFile || e.Code != "ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED" || e.HResult != "0x80072F0C" ||
			e.FileIndex != 0 || !strings.Contains(e.Description, "asked for a TLS client certificate and the job has none") {
			t.Fatalf("error %+v, want ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED (0x80072F0C) in %s, file 0", j.Error, job.ContextRemoteFile)
		}
		if n := o.hellos.Load(); n < 1 {
			t.Fatalf("the origin saw %d TLS handshakes: the agent never reached it", n)
		}
		if r := o.requests(); len(r) != 0 {
			t.Fatalf("the origin served %d HTTP requests; the job must fail before any", len(r))
		}
		if _, err := os.Stat(dest); !os.IsNotExist(err) {
			t.Fatalf("the destination exists after the failure: %v", err)
		}
		if v, ok := jobOptions(t, s, id, j.Version)["anonymous_client_auth"]; ok {
			t.Fatalf("options.anonymous_client_auth is %v before it was set; want it absent", v)
		}

		// PATCH the option on the failed job, as a program would.
		req, err := http.NewRequestWithContext(ctx, http.MethodPatch, s.client.BaseURL+"/v1/jobs/"+id,
			strings.NewReader(`{"options": {"anonymous_client_auth": true}}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := s.client.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var patched coordinator.ActionResponse
		err = json.NewDecoder(resp.Body).Decode(&patched)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || patched.Code != "S_OK" || !patched.Job.Options.AnonymousClientAuth || patched.Job.State != job.Errored {
			t.Fatalf("PATCH anonymous_client_auth: %d %v %+v", resp.StatusCode, err, patched)
		}
		if v := jobOptions(t, s, id, patched.Job.Version)["anonymous_client_auth"]; v != true {
			t.Fatalf("GET /v1/jobs/%s: options.anonymous_client_auth = %v, want true", id, v)
		}

		s.action(id, "resume")
		j = s.until(id, "the job to settle after the resume", func(j *job.Job) bool { return j.Attempt >= 2 && transferSettled(j) })
		if j.State != job.Transferred {
			t.Fatalf("job with anonymous_client_auth: %s %+v, want TRANSFERRED", j.State, j.Error)
		}
		if f := j.Files[0]; !f.Transferred || f.SHA256 != wantSHA || f.BytesTransferred != int64(len(content)) {
			t.Fatalf("file after the transfer: %+v, want sha256 %s and %d bytes", f, wantSHA, len(content))
		}
		reqs := o.requests()
		if len(reqs) == 0 {
			t.Fatal("the origin served no request for the transfer")
		}
		for i, n := range reqs {
			if n != 0 {
				t.Fatalf("request %d carried %d client certificates; anonymous client auth sends none", i, n)
			}
		}
		s.action(id, "complete")
		s.until(id, "ACKNOWLEDGED", state(job.Acknowledged))
		if b, err := os.ReadFile(dest); err != nil || !bytes.Equal(b, content) {
			t.Fatalf("the file differs from the origin's (%d bytes, %v)", len(b), err)
		}
	})

	// An origin that requires a certificate: the option does not help.
	for _, v := range []struct {
		name    string
		version uint16
		detail  string
	}{
		{"required client auth/TLS1.2", tls.VersionTLS12, "answered its certificate request with no certificate"},
		{"required client auth/TLS1.3", tls.VersionTLS13, "requires a TLS client certificate and none was sent"},
	} {
		t.Run(v.name, func(t *testing.T) {
			s := &stack{t: t, dev: base.dev, client: base.client, root: base.root}
			o := newAuthOrigin(t, ca, tls.RequireAnyClientCert, v.version, content)
			yes := true
			j, err := s.client.Create(ctx, coordinator.CreateRequest{DisplayName: t.Name(), Resume: true,
				Files:   []events.FileSpec{{RemoteURL: o.url(), LocalName: s.dest("required.bin")}},
				Options: &job.OptionsPatch{AnonymousClientAuth: &yes}})
			if err != nil {
				t.Fatal(err)
			}
			got := s.until(j.ID, "the job to settle", transferSettled)
			if got.State != job.Errored {
				t.Fatalf("job with anonymous_client_auth against a required-certificate origin: %s %+v, want ERROR", got.State, got.Error)
			}
			// The engine answers ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED here
			// too (download.clientAuthAlert: the origin needs a certificate
			// and none was sent); the description tells it from the case of
			// a job without the option, which never sent anything.
			if e := got.Error; e.Context != job.ContextRemoteFile || e.Code != "ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED" || e.HResult != "0x80072F0C" ||
				e.FileIndex != 0 || !strings.Contains(e.Description, v.detail) || strings.Contains(e.Description, "the job has none") {
				t.Fatalf("error %+v, want ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED (0x80072F0C) in %s saying %q",
					e, job.ContextRemoteFile, v.detail)
			}
			if v := jobOptions(t, s, j.ID, got.Version)["anonymous_client_auth"]; v != true {
				t.Fatalf("GET /v1/jobs/%s: options.anonymous_client_auth = %v, want true", j.ID, v)
			}
			if n := o.hellos.Load(); n < 1 {
				t.Fatalf("the origin saw %d TLS handshakes", n)
			}
			if r := o.requests(); len(r) != 0 {
				t.Fatalf("the origin served %d HTTP requests", len(r))
			}
		})
	}
}
