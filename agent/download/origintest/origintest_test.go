package origintest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"
)

func TestContentRandomAccessMatchesStream(t *testing.T) {
	c := Content{Seed: 42, Size: 3*blockSize + 1234}
	all, err := io.ReadAll(c.Reader())
	if err != nil || int64(len(all)) != c.Size {
		t.Fatalf("read %d bytes, %v", len(all), err)
	}
	for _, r := range []Range{{0, 10}, {blockSize - 3, 7}, {blockSize, blockSize}, {c.Size - 5, 5}, {17, 2*blockSize + 100}} {
		if got := c.Bytes(r.Offset, r.Length); !bytes.Equal(got, all[r.Offset:r.Offset+r.Length]) {
			t.Errorf("ReadAt %+v differs from the stream", r)
		}
	}
	if bytes.Equal(Content{Seed: 43, Size: 100}.Bytes(0, 100), all[:100]) {
		t.Error("another seed gives the same bytes")
	}
	if c.RangesSHA256(Range{0, c.Size}) != c.SHA256() {
		t.Error("RangesSHA256 of everything differs from SHA256")
	}
}

func TestServerFaultsAndWait(t *testing.T) {
	s := New(t, Options{})
	c := Content{Seed: 1, Size: 1 << 20}
	s.SetFile("/f", File{Content: c, ETag: `"a"`})
	s.Inject(Fault{Path: "/f", Count: 1, Drop: true, DropAfter: 1000})
	s.Inject(Fault{Path: "/f", Count: 1, Status: 503, RetryAfter: "7"})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CAPool}}}
	defer client.CloseIdleConnections()

	get := func(rng string) (*http.Response, []byte, error) {
		req, _ := http.NewRequest("GET", s.URL+"/f", nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}
	if _, b, err := get(""); err == nil || len(b) != 1000 {
		t.Fatalf("drop: %d bytes, %v", len(b), err)
	}
	if resp, _, _ := get(""); resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("503: %v", resp.Status)
	}
	resp, b, err := get("bytes=10-19")
	if err != nil || resp.StatusCode != 206 || !bytes.Equal(b, c.Bytes(10, 10)) {
		t.Fatalf("range: %v %v", resp.Status, err)
	}
	s.ChangeAfter("/f", File{Content: Content{Seed: 2, Size: 10}, ETag: `"b"`}, 1, 0)
	get("")
	if resp, _, _ := get(""); resp.Header.Get("ETag") != `"b"` {
		t.Errorf("ETag after the change: %q", resp.Header.Get("ETag"))
	}
	if err := s.Wait(context.Background(), func(st Stats) bool { return st.Requests == 5 && st.Drops == 1 }); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(s.Ranges()); got != "[  bytes=10-19  ]" {
		t.Errorf("ranges %q", got)
	}
}
