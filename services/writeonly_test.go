package services_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/rs/zerolog"
)

// tokenOrigin is an HTTPS origin that serves its file only to requests
// carrying "X-Api-Key: <token>" and answers 401 otherwise. It counts both.
type tokenOrigin struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	ok     int
	denied int
}

func newTokenOrigin(t *testing.T, token string) *tokenOrigin {
	t.Helper()
	ca := servicestest.NewCA(t, "write-only origin CA")
	o := &tokenOrigin{caFile: ca.File}
	body := bytes.Repeat([]byte("ferry write-only "), 400)
	o.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		good := slices.Equal(r.Header.Values("X-Api-Key"), []string{token})
		if good {
			o.ok++
		} else {
			o.denied++
		}
		o.mu.Unlock()
		if !good {
			w.Header().Set("WWW-Authenticate", `ApiKey realm="ferry"`)
			http.Error(w, "an API key is required", http.StatusUnauthorized)
			return
		}
		http.ServeContent(w, r, "file.bin", time.Unix(1700000000, 0), bytes.NewReader(body))
	}))
	o.srv.EnableHTTP2 = false
	o.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "localhost", x509.ExtKeyUsageServerAuth)}, MinVersion: tls.VersionTLS12}
	o.srv.StartTLS()
	t.Cleanup(o.srv.Close)
	return o
}

func (o *tokenOrigin) counts() (ok, denied int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ok, o.denied
}

// TestWriteOnlyHeadersStack: bob's job sends a write-only header the origin
// requires; the job transfers, and the header's value is in no log line
// (trace level), no message of FERRY_EVENTS and no API answer. After an
// administrator takes the job over, the header is gone: a resume gets the
// origin's 401 and the job ends in ERROR BG_E_HTTP_ERROR_401.
func TestWriteOnlyHeadersStack(t *testing.T) {
	ctx := context.Background()
	token := "wo-" + hex.EncodeToString(randomBytes(t, 16))
	origin := newTokenOrigin(t, token)
	logs := &lineBuffer{}
	log := zerolog.New(logs).Level(zerolog.TraceLevel).With().Timestamp().Logger()
	st := startStackWith(t, stackOptions{caFiles: []string{origin.caFile}, log: &log})
	d, root := st.dev, st.root
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stack log (last lines):\n%s", logs.tail(60))
		}
	})
	admin, err := services.Discover(services.ClientConfig{Addr: d.Info().CoordinatorURL, DataDir: d.Info().DataDir})
	if err != nil {
		t.Fatal(err)
	}
	// bob, a user, owns the job.
	creds := d.Info().CredentialsDir
	bobID, bobCert, err := services.IssueIdentity(services.IssueOptions{Dir: creds, Out: creds, Role: "user", Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := services.Discover(services.ClientConfig{Addr: d.Info().CoordinatorURL, DataDir: d.Info().DataDir,
		Cert: bobCert, Key: strings.TrimSuffix(bobCert, ".pem") + "-key.pem"})
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{t: t, dev: d, client: bob, root: root}
	secrets := newSecrets()
	secrets.addBytes("write-only header value", []byte(token))
	// The scanner must be able to fail.
	var planted bytes.Buffer
	pl := zerolog.New(&planted)
	pl.Info().Strs("header", []string{"X-Api-Key: " + token}).Msg("planted")
	if len(secrets.find("a planted line", planted.Bytes())) == 0 {
		t.Fatal("the scanner misses the value in a planted log line")
	}

	j, err := bob.Create(ctx, coordinator.CreateRequest{DisplayName: "write-only",
		Files: []events.FileSpec{{RemoteURL: origin.srv.URL + "/a.bin", LocalName: s.dest("a.bin")}}})
	if err != nil {
		t.Fatal(err)
	}
	if j.Owner != bobID {
		t.Fatalf("owner %s, want %s", j.Owner, bobID)
	}
	// Only the owner makes headers write-only, administrators included.
	if _, err := admin.MakeHeadersWriteOnly(ctx, j.ID, []string{"X-Api-Key: " + token}); !isCode(err, "E_ACCESSDENIED") {
		t.Fatalf("admin: %v", err)
	}
	r, err := bob.MakeHeadersWriteOnly(ctx, j.ID, []string{"x-api-key: " + token})
	if err != nil {
		t.Fatal(err)
	}
	if r.Code != "S_OK" || !slices.Equal(r.Job.Options.WriteOnlyHeaders, []string{"X-Api-Key"}) || len(r.Job.Options.CustomHeaders) != 0 {
		t.Fatalf("write-only: %+v %+v", r.Code, r.Job.Options)
	}
	s.action(j.ID, "resume")
	got := s.until(j.ID, "TRANSFERRED or ERROR", func(j *job.Job) bool { return j.State == job.Transferred || j.State == job.Errored })
	if got.State != job.Transferred {
		t.Fatalf("job %s %+v", got.State, got.Error)
	}
	if ok, denied := origin.counts(); ok == 0 || denied != 0 {
		t.Fatalf("origin: %d requests with the key, %d without", ok, denied)
	}

	// The API reads, as the wire carries them (bob's, before the takeover).
	var reads [][2]string
	read := func(c *services.Client, path string) {
		t.Helper()
		resp, err := c.HTTP.Get(c.BaseURL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		reads = append(reads, [2]string{"GET " + path, string(b)})
	}
	read(bob, "/v1/jobs/"+j.ID)
	read(bob, "/v1/jobs?all=true")
	if !strings.Contains(reads[0][1], `"write_only_headers":["X-Api-Key"]`) {
		t.Fatalf("GET does not name the write-only header: %s", reads[0][1])
	}

	// An administrator takes the job over and resumes it with another
	// file: the header went with the previous owner.
	if _, err := bob.AddFiles(ctx, j.ID, []events.FileSpec{{RemoteURL: origin.srv.URL + "/b.bin", LocalName: s.dest("b.bin")}}); err != nil {
		t.Fatal(err)
	}
	tr, err := admin.TakeOwnership(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Job.Options.WriteOnlyHeaders != nil {
		t.Fatalf("after take-ownership: %+v", tr.Job.Options)
	}
	s.client = admin
	s.action(j.ID, "resume")
	got = s.until(j.ID, "ERROR", func(j *job.Job) bool {
		return j.Attempt >= 2 && (j.State == job.Errored || j.State == job.Transferred)
	})
	if got.State != job.Errored || got.Error.Code != "BG_E_HTTP_ERROR_401" || got.Error.FileIndex != 1 {
		t.Fatalf("after take-ownership: %s %+v", got.State, got.Error)
	}
	if _, denied := origin.counts(); denied == 0 {
		t.Fatal("the origin saw no request without the key")
	}
	read(admin, "/v1/jobs/"+j.ID)
	read(admin, "/v1/jobs?all=true")

	// certvault's story, names only: stored, released, deleted with the
	// ownership change.
	evs := streamMessages(t, d.NATS().JS, events.StreamName)
	var vault []string
	for _, m := range evs {
		if strings.HasPrefix(m, events.Subject(events.KindVault, events.VaultHeadersID(j.ID))+"\n") {
			for _, typ := range []string{events.TypeWriteOnlyHeadersStored, events.TypeWriteOnlyHeadersReleased, events.TypeWriteOnlyHeadersDeleted, events.TypeWriteOnlyHeadersReleaseDenied} {
				if strings.Contains(m, `"type":"`+typ+`"`) {
					vault = append(vault, typ)
				}
			}
		}
	}
	if len(vault) < 3 || vault[0] != events.TypeWriteOnlyHeadersStored || vault[len(vault)-1] != events.TypeWriteOnlyHeadersDeleted ||
		!slices.Contains(vault, events.TypeWriteOnlyHeadersReleased) || slices.Contains(vault, events.TypeWriteOnlyHeadersReleaseDenied) {
		t.Fatalf("certvault events %v", vault)
	}

	// The scan: the value in no log line, no event, no API answer.
	lines := logs.lines()
	wantIn(t, "the log", strings.Join(lines, "\n"), `"message":"write-only headers released"`, `"level":"debug"`)
	wantIn(t, "the event stream", strings.Join(evs, "\n"), `"write_only_headers":["X-Api-Key"]`)
	for _, l := range secrets.scan(lines, evs, reads) {
		t.Error(l)
	}
	if _, err := os.Stat(filepath.Join(root, "b.bin")); err == nil {
		t.Error("b.bin exists")
	}
	t.Logf("scanned %d log lines, %d events and %d API answers", len(lines), len(evs), len(reads))
}

func isCode(err error, code string) bool {
	var apiErr *services.APIError
	return err != nil && errors.As(err, &apiErr) && apiErr.Code == code
}
