package history_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job/history"
)

// longHistory is a recorded history stretched to about n events by
// repeating its progress checkpoints (what makes long histories long).
func longHistory(b *testing.B, n int) []events.Event {
	b.Helper()
	base := golden(b, 1, 1)["retries"]
	var progress events.Event
	for _, ev := range base {
		if ev.Type == events.TypeFileProgressed {
			progress = ev
			break
		}
	}
	i := 0
	for base[i].Seq != progress.Seq {
		i++
	}
	out := append([]events.Event(nil), base[:i+1]...)
	for len(out) < n-len(base)+i {
		ev := progress
		ev.ID = uuid.New()
		ev.Time = ev.Time.Add(time.Duration(len(out)) * time.Millisecond)
		out = append(out, ev)
	}
	out = append(out, base[i+1:]...)
	for k := range out {
		out[k].Seq = uint64(k + 1)
	}
	return out
}

// BenchmarkBuild: the state and timeline of a job with 10,000 events (the
// cost of GET /v1/jobs/{id}/history and of `replay job`, I/O aside).
func BenchmarkBuild(b *testing.B) {
	evs := longHistory(b, 10_000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := history.Build(evs, history.Point{Seq: uint64(len(evs) / 2)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(evs)/2), "ns/event")
}

// BenchmarkDecodeLine: one export line (what import and replay --file pay
// per event before any I/O).
func BenchmarkDecodeLine(b *testing.B) {
	var ev events.Event
	for _, e := range goldenEvents(b) {
		if e.Type == events.TypeJobTransientError && e.Version == 2 {
			ev = e
		}
	}
	line, err := history.EncodeLine(&ev)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := history.DecodeLine(line); err != nil {
			b.Fatal(err)
		}
	}
}
