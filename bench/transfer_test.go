package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/rs/zerolog"
)

const fileSize = 256 << 20

// origin serves generated files of fileSize bytes over HTTPS on loopback.
func origin(b *testing.B) (*httptest.Server, string) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"bench"`)
		http.ServeContent(w, r, "f.bin", time.Time{}, services.NewPattern(fileSize))
	}))
	srv.EnableHTTP2 = false
	srv.StartTLS()
	b.Cleanup(srv.Close)
	ca := filepath.Join(b.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		b.Fatal(err)
	}
	return srv, ca
}

// BenchmarkTransfer measures a whole job through the dev stack (coordinator,
// JetStream with fsync on every write, agent, HTTPS, fsynced staging,
// Complete's rename) against curl fetching the same file from the same origin.
func BenchmarkTransfer(b *testing.B) {
	srv, ca := origin(b)
	url := srv.URL + "/f.bin"
	want := sum(b, services.NewPattern(fileSize))

	b.Run("ferry", func(b *testing.B) {
		root := b.TempDir()
		d, err := services.StartDev(context.Background(), services.DevConfig{
			DataDir: b.TempDir(), HTTP: "127.0.0.1:0", Vault: "127.0.0.1:0", NATS: services.NATSConfig{Listen: "none"},
			Root: root, OriginCAFiles: []string{ca}, ReconcileInterval: time.Second,
		}, zerolog.Nop())
		if err != nil {
			b.Fatal(err)
		}
		defer d.Close()
		c, err := services.Discover(services.ClientConfig{Addr: d.Info().CoordinatorURL, DataDir: d.Info().DataDir})
		if err != nil {
			b.Fatal(err)
		}
		cli := &services.CLI{Out: io.Discard, Err: io.Discard, JSON: true, Client: c}
		b.SetBytes(fileSize)
		i := 0
		for b.Loop() {
			dest := filepath.Join(root, "f"+strconv.Itoa(i)+".bin")
			i++
			j, err := cli.Transfer(context.Background(), []events.FileSpec{{RemoteURL: url, LocalName: dest}}, services.TransferOptions{})
			if err != nil || j.State != job.Acknowledged {
				b.Fatalf("transfer: %v (%s)", err, j.State)
			}
			b.StopTimer()
			if got := sumFile(b, dest); got != want {
				b.Fatalf("sha256 %s, want %s", got, want)
			}
			os.Remove(dest)
			b.StartTimer()
		}
	})

	b.Run("curl", func(b *testing.B) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			b.Skip("curl not installed")
		}
		dest := filepath.Join(b.TempDir(), "f.bin")
		b.SetBytes(fileSize)
		for b.Loop() {
			// --cacert: the same TLS verification as the agent does.
			out, err := exec.Command(curl, "-sS", "--fail", "--cacert", ca, "-o", dest, url).CombinedOutput()
			if err != nil {
				b.Fatalf("curl: %v %s", err, out)
			}
		}
		if got := sumFile(b, dest); got != want {
			b.Fatalf("sha256 %s, want %s", got, want)
		}
	})
}

func sum(b *testing.B, r io.Reader) string {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		b.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sumFile(b *testing.B, p string) string {
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	return sum(b, f)
}
