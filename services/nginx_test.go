package services_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// nginxOrigin starts nginx (skipping without it) serving one random file,
// file.bin, with client authentication by a fresh client CA.
func nginxOrigin(t *testing.T) (*servicestest.Nginx, *servicestest.CA, []byte) {
	t.Helper()
	content := make([]byte, 300<<10)
	if _, err := rand.Read(content); err != nil {
		t.Fatal(err)
	}
	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "file.bin"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	clientCA := servicestest.NewCA(t, "nginx client CA")
	n := servicestest.StartNginx(t, servicestest.NginxOptions{Root: www, ClientCAFile: clientCA.File})
	return n, clientCA, content
}

// TestNginxJobWithoutCertificateFails: a job with no client certificate
// against nginx with "ssl_verify_client on" and "optional" fails with
// ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED (0x80072F0C) before any HTTP exchange
// (nginx logged no request), like BITS, even where the certificate is
// optional.
func TestNginxJobWithoutCertificateFails(t *testing.T) {
	n, _, _ := nginxOrigin(t)
	s := startStack(t, n.CAFile)

	for _, tc := range []struct{ name, url string }{
		{"verify on", n.OnURL + "/file.bin"},
		{"verify optional", n.OptionalURL + "/file.bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.t = t
			id := s.create(events.FileSpec{RemoteURL: tc.url, LocalName: s.dest(strings.ReplaceAll(tc.name, " ", "-") + ".bin")})
			j := s.until(id, "ERROR", state(job.Errored))
			e := j.Error
			if e == nil || e.Code != "ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED" || e.HResult != "0x80072F0C" ||
				e.Context != job.ContextRemoteFile || e.FileIndex != 0 || !strings.Contains(e.Description, "client certificate") {
				t.Fatalf("error %+v", e)
			}
			t.Logf("job error: %s %s: %s", e.Code, e.HResult, e.Description)
		})
	}
	if reqs := n.Requests(t); len(reqs) != 0 {
		t.Fatalf("nginx logged requests %+v: the jobs must fail before any HTTP exchange", reqs)
	}
}

// TestNginxClientCertificates runs the download engine against nginx with
// per-transfer providers: a certificate signed by the client CA downloads the
// file byte-exact and nginx logs its SHA-1 fingerprint; an untrusted one and
// the anonymous opt-in fail with client-authentication errors carrying
// nginx's words.
func TestNginxClientCertificates(t *testing.T) {
	n, clientCA, content := nginxOrigin(t)
	trusted := clientCA.Issue(t, "ferry job", x509.ExtKeyUsageClientAuth)
	untrusted := servicestest.NewCA(t, "someone else's CA").Issue(t, "intruder", x509.ExtKeyUsageClientAuth)
	static := func(c tls.Certificate) download.ClientCertProvider {
		return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })

	fetch := func(t *testing.T, ctx context.Context, url, temp string) error {
		client := download.NewClient(download.ClientOptions{RootCAs: n.CA.Pool})
		defer client.CloseIdleConnections()
		_, err := download.Fetch(ctx, download.Request{URL: url, Root: root, TempName: temp, Client: client})
		return err
	}
	// lastLogged waits for nginx to log the request after the first
	// before (it logs once the response is sent) and returns the last one.
	lastLogged := func(t *testing.T, before int) servicestest.NginxRequest {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			reqs := n.Requests(t)
			if len(reqs) > before {
				return reqs[len(reqs)-1]
			}
			if time.Now().After(deadline) {
				t.Fatal("nginx logged no request")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	t.Run("trusted certificate", func(t *testing.T) {
		for _, u := range []string{n.OnURL, n.OptionalURL} {
			temp := "trusted-" + strings.TrimPrefix(u, "https://127.0.0.1:") + ".part"
			before := len(n.Requests(t))
			if err := fetch(t, download.WithClientCertificate(t.Context(), static(trusted)), u+"/file.bin", temp); err != nil {
				t.Fatalf("%s: %v\n%s", u, err, n.ErrorLog())
			}
			got, err := root.ReadFile(temp)
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("%s: staged %d bytes (%v), want the %d bytes served", u, len(got), err, len(content))
			}
			sum := sha1.Sum(trusted.Certificate[0])
			r := lastLogged(t, before)
			if r.Fingerprint != hex.EncodeToString(sum[:]) || r.Verify != "SUCCESS" || r.Status != 200 {
				t.Fatalf("%s: nginx logged %+v, want fingerprint %x with SUCCESS", u, r, sum)
			}
		}
	})

	t.Run("untrusted certificate", func(t *testing.T) {
		for _, u := range []string{n.OnURL, n.OptionalURL} {
			before := len(n.Requests(t))
			err := fetch(t, download.WithClientCertificate(t.Context(), static(untrusted)), u+"/file.bin", "untrusted.part")
			var f *download.Failure
			if !errors.As(err, &f) {
				t.Fatalf("%s: want a failure, got %v", u, err)
			}
			t.Logf("%s: %s: %s", u, f.Code.Symbol, f.Description)
			if f.Code != job.ERROR_WINHTTP_SECURE_FAILURE || f.Transient || f.Context != job.ContextRemoteFile ||
				!strings.Contains(f.Description, "rejected the job's TLS client certificate") || !strings.Contains(f.Description, "The SSL certificate error") {
				t.Fatalf("%s: got %+v", u, f)
			}
			if r := lastLogged(t, before); r.Status != 400 || !strings.HasPrefix(r.Verify, "FAILED") {
				t.Fatalf("%s: nginx logged %+v", u, r)
			}
		}
	})

	t.Run("anonymous opt-in", func(t *testing.T) {
		before := len(n.Requests(t))
		err := fetch(t, download.WithAnonymousClientAuth(t.Context()), n.OnURL+"/file.bin", "anon-on.part")
		var f *download.Failure
		if !errors.As(err, &f) || f.Code != job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED || f.Code.HResult != 0x80072F0C ||
			!strings.Contains(f.Description, "No required SSL certificate was sent") {
			t.Fatalf("on: got %v", err)
		}
		t.Logf("on: %s: %s", f.Code.Symbol, f.Description)
		if r := lastLogged(t, before); r.Status != 400 || r.Verify != "NONE" {
			t.Fatalf("on: nginx logged %+v", r)
		}
		// Optional client authentication with the explicit opt-in: allowed.
		before = len(n.Requests(t))
		if err := fetch(t, download.WithAnonymousClientAuth(t.Context()), n.OptionalURL+"/file.bin", "anon-opt.part"); err != nil {
			t.Fatalf("optional: %v", err)
		}
		if r := lastLogged(t, before); r.Verify != "NONE" || r.Fingerprint != "" || r.Status != 200 {
			t.Fatalf("optional: nginx logged %+v", r)
		}
	})

	t.Run("no provider", func(t *testing.T) {
		before := len(n.Requests(t))
		for _, u := range []string{n.OnURL, n.OptionalURL} {
			err := fetch(t, t.Context(), u+"/file.bin", "none.part")
			if !errors.Is(err, download.ErrClientCertNeeded) {
				t.Fatalf("%s: got %v", u, err)
			}
		}
		if after := len(n.Requests(t)); after != before {
			t.Fatalf("nginx logged %d requests from transfers that had no certificate", after-before)
		}
	})
}
