package download

import (
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const benchSize = 64 << 20

func benchOrigin(b *testing.B) (url string, ca *testCA) {
	content := randomBytes(b, benchSize)
	ca = newCA(b, "bench CA")
	srv := tlsServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"bench"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
	}), ca.localhost(b), nil, false)
	return srv.URL + "/blob", ca
}

// BenchmarkFetch measures Fetch (hashing, checkpoints with fsync, final
// sidecar) for 64 MiB over loopback HTTPS.
func BenchmarkFetch(b *testing.B) {
	url, ca := benchOrigin(b)
	root, _ := testRoot(b)
	client := testClient(b, ClientOptions{RootCAs: ca.pool})
	b.SetBytes(benchSize)
	for b.Loop() {
		if _, err := Fetch(b.Context(), Request{URL: url, Root: root, TempName: "bench.part", Client: client}); err != nil {
			b.Fatal(err)
		}
		if err := Discard(root, "bench.part"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawCopy is the reference: http.Get and io.Copy into a file from
// the same kind of server, no hashing, no fsync.
func BenchmarkRawCopy(b *testing.B) {
	url, ca := benchOrigin(b)
	dir := b.TempDir()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}, ForceAttemptHTTP2: true}
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	b.SetBytes(benchSize)
	for b.Loop() {
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, "raw.part"))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(f, resp.Body)
		resp.Body.Close()
		f.Close()
		if err != nil || n != benchSize {
			b.Fatal(n, err)
		}
	}
}
