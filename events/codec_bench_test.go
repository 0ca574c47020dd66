package events_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-dev/ferry/events"
)

// goldenBodies returns the stored bodies of every golden history, a
// realistic mix of job events.
func goldenBodies(b *testing.B) [][]byte {
	files, err := filepath.Glob(filepath.Join(goldenDir, "histories", "*.ndjson"))
	if err != nil || len(files) == 0 {
		b.Fatal("no golden histories", err)
	}
	var out [][]byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			out = append(out, bytes.Clone(sc.Bytes()))
		}
	}
	return out
}

// BenchmarkDecode is what replay costs per event before job.Evolve: the
// envelope (events.Unmarshal) and the payload (Event.Payload), over the
// events of the golden histories. ns/op and allocs/op are per event.
//
//	go test ./events/ -run '^$' -bench BenchmarkDecode -benchmem
func BenchmarkDecode(b *testing.B) {
	bodies := goldenBodies(b)
	b.Run("envelope", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := events.Unmarshal(bodies[i%len(bodies)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	evs := make([]events.Event, len(bodies))
	for i, body := range bodies {
		var err error
		if evs[i], err = events.Unmarshal(body); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("payload", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			ev := evs[i%len(evs)] // a copy: no payload cached
			if _, err := ev.Payload(); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
