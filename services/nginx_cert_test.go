package services_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
)

// TestNginxJobCertificateFromCertvault is the whole seed end to end: a job
// names its client certificate by location, store and SHA-1 thumbprint; the
// agent fetches the key from certvault only when nginx asks for a
// certificate ("ssl_verify_client on"), presents it, and downloads the file;
// nginx logs the same SHA-1.
func TestNginxJobCertificateFromCertvault(t *testing.T) {
	n, clientCA, content := nginxOrigin(t)
	s := startStack(t, n.CAFile)
	root, d, api := s.root, s.dev, s.client
	ctx := context.Background()
	vault, err := services.Discover(services.ClientConfig{Service: "certvault", DataDir: d.Info().DataDir})
	if err != nil {
		t.Fatal(err)
	}

	cert := clientCA.Issue(t, "ferry-job-client", x509.ExtKeyUsageClientAuth)
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	bundle := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})) +
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	info, err := vault.ImportCert(ctx, "CURRENT_USER", "MY", services.CertImport{PEM: &bundle})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(cert.Certificate[0])
	if info.SHA1 != hex.EncodeToString(sum[:]) {
		t.Fatalf("certvault thumbprint %s", info.SHA1)
	}

	dest := filepath.Join(root, "from-nginx.bin")
	j, err := api.Create(ctx, coordinator.CreateRequest{DisplayName: "mtls", Files: []events.FileSpec{{RemoteURL: n.OnURL + "/file.bin", LocalName: dest}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.SetClientCertificate(ctx, j.ID, services.CertSpec{Location: "CURRENT_USER", Store: "MY", Thumbprint: info.SHA1}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Action(ctx, j.ID, "resume"); err != nil {
		t.Fatal(err)
	}
	got := s.until(j.ID, "TRANSFERRED or ERROR", func(j *job.Job) bool { return j.State == job.Transferred || j.State == job.Errored })
	if got.State != job.Transferred {
		t.Fatalf("job %s: %+v\nnginx: %s", got.State, got.Error, n.ErrorLog())
	}
	s.action(j.ID, "complete")
	s.until(j.ID, "ACKNOWLEDGED", state(job.Acknowledged))
	b, err := os.ReadFile(dest)
	if err != nil || !bytes.Equal(b, content) {
		t.Fatalf("file differs from nginx's (%v)", err)
	}
	seen := false
	for _, r := range n.Requests(t) {
		if r.Fingerprint == info.SHA1 && r.Verify == "SUCCESS" && r.Status == 200 {
			seen = true
		}
	}
	if !seen {
		t.Fatalf("nginx did not log the job's certificate %s: %+v", info.SHA1, n.Requests(t))
	}
}
