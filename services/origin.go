package services

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// DemoFile is one file the demo origin serves.
type DemoFile struct {
	Name string
	Size int64
}

// DemoFiles are the sample files of `ferry dev`'s demo origin.
var DemoFiles = []DemoFile{
	{"hello.txt", int64(len(helloText))},
	{"1MiB.bin", 1 << 20},
	{"64MiB.bin", 64 << 20},
	{"1GiB.bin", 1 << 30},
}

const helloText = "Hello from ferry's demo origin.\n"

var demoModTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// DemoOrigin serves DemoFiles under /files/ with ETag, Last-Modified and
// Range support, generating their bytes on the fly (nothing is stored).
func DemoOrigin() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /files/{name}", func(w http.ResponseWriter, r *http.Request) {
		for _, f := range DemoFiles {
			if f.Name != r.PathValue("name") {
				continue
			}
			w.Header().Set("ETag", fmt.Sprintf(`"ferry-demo-%s-%d"`, f.Name, f.Size))
			var content io.ReadSeeker = NewPattern(f.Size)
			if f.Name == "hello.txt" {
				content = strings.NewReader(helloText)
			}
			http.ServeContent(w, r, f.Name, demoModTime, content)
			return
		}
		http.NotFound(w, r)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, f := range DemoFiles {
			fmt.Fprintf(w, "/files/%s\t%d bytes\n", f.Name, f.Size)
		}
	})
	return mux
}

// Pattern is a deterministic, seekable stream of Size bytes: byte i is a
// function of i alone, so any range of it can be regenerated and checked.
type Pattern struct {
	size, off int64
}

// NewPattern returns a Pattern of size bytes.
func NewPattern(size int64) *Pattern { return &Pattern{size: size} }

const patternPeriod = 65521 // prime, so the pattern does not align with buffer sizes

var patternBlock = func() []byte {
	b := make([]byte, patternPeriod)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}()

func (p *Pattern) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	if rem := p.size - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	n := 0
	for n < len(b) {
		i := int((p.off + int64(n)) % patternPeriod)
		n += copy(b[n:], patternBlock[i:])
	}
	p.off += int64(n)
	return n, nil
}

func (p *Pattern) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += p.off
	case io.SeekEnd:
		offset += p.size
	}
	if offset < 0 {
		return 0, errors.New("pattern: negative position")
	}
	p.off = offset
	return offset, nil
}
