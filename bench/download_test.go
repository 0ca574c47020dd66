package bench

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/agent/download/origintest"
)

const bigSize = 1 << 30

// BenchmarkFetch1GiB downloads 1 GiB through download.Fetch (SHA-256,
// fsynced checkpoints every 64 MiB, the sidecar) from an origintest HTTPS
// server on loopback in the same process, and reports MB/s and the
// process's peak resident set (VmHWM, reset before the first transfer where
// the kernel allows it). The origin generates the content as it sends it, so
// the peak covers both ends and no copy of the file is ever in memory. It
// asserts nothing about time or memory: TestLargeStreamBoundedHeap in
// agent/download is the test that holds memory constant.
//
// The reference, BenchmarkFetch1GiB/raw, is http.Get + io.Copy into a file
// from the same origin in the same run (no hashing, no fsync, no sidecar),
// so the origin's own cost is in both.
func BenchmarkFetch1GiB(b *testing.B) {
	s := origintest.New(b, origintest.Options{})
	c := origintest.Content{Seed: 1, Size: bigSize}
	s.SetFile("/1g.bin", origintest.File{Content: c, ETag: `"1g"`})
	want := c.SHA256()
	b.Run("fetch", func(b *testing.B) { benchFetch(b, s, want) })
	b.Run("raw", func(b *testing.B) { benchRaw(b, s) })
}

func benchFetch(b *testing.B, s *origintest.Server, want string) {
	root, err := os.OpenRoot(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	client := download.NewClient(download.ClientOptions{RootCAs: s.CAPool})
	defer client.CloseIdleConnections()

	resetPeakRSS()
	b.SetBytes(bigSize)
	for b.Loop() {
		res, err := download.Fetch(b.Context(), download.Request{URL: s.URL + "/1g.bin", Root: root, TempName: "1g.part", Client: client})
		if err != nil {
			b.Fatal(err)
		}
		if res.SHA256 != want {
			b.Fatalf("SHA-256 %s, want %s", res.SHA256, want)
		}
		if err := download.Discard(root, "1g.part"); err != nil {
			b.Fatal(err)
		}
	}
	if hwm, ok := peakRSS(); ok {
		b.ReportMetric(float64(hwm)/(1<<20), "peak-RSS-MiB")
	}
}

// resetPeakRSS asks Linux to reset VmHWM to the current RSS (clear_refs 5),
// so the peak is that of the benchmark rather than of the setup.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS is VmHWM from /proc/self/status, in bytes.
func peakRSS() (int64, bool) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := bytes.CutPrefix([]byte(line), []byte("VmHWM:")); ok {
			f := bytes.Fields(rest)
			if len(f) == 2 && string(f[1]) == "kB" {
				kb, err := strconv.ParseInt(string(f[0]), 10, 64)
				return kb << 10, err == nil
			}
		}
	}
	return 0, false
}

func benchRaw(b *testing.B, s *origintest.Server) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CAPool}, ForceAttemptHTTP2: true, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	dest := filepath.Join(b.TempDir(), "raw.part")
	resetPeakRSS()
	b.SetBytes(bigSize)
	for b.Loop() {
		resp, err := client.Get(s.URL + "/1g.bin")
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(dest)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(f, resp.Body)
		resp.Body.Close()
		f.Close()
		if err != nil || n != bigSize {
			b.Fatal(n, err)
		}
	}
	if hwm, ok := peakRSS(); ok {
		b.ReportMetric(float64(hwm)/(1<<20), "peak-RSS-MiB")
	}
}
