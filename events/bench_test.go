package events_test

import (
	"strconv"
	"testing"

	"github.com/ferry-dev/ferry/events"
)

// The append benchmarks run against an embedded server with SyncAlways, as
// ferry runs; BenchmarkAppendRawPublish is the reference: the same bodies
// published without IDs or expectations. Compare ns/op.
//
//	go test -run x -bench . -benchtime 2000x ./events/

// BenchmarkAppend is one optimistic append of one event, chained on the
// previous one.
func BenchmarkAppend(b *testing.B) {
	s, _ := newJetStreamStore(b)
	ctx := b.Context()
	subj := events.JobSubject("bench")
	evs := newEvents(b, "bench", 0, b.N)
	var last uint64
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		var err error
		if last, err = s.Append(ctx, subj, last, evs[i:i+1]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendRawPublish is js.Publish of the same bodies without ferry's
// headers: the floor BenchmarkAppend is measured against.
func BenchmarkAppendRawPublish(b *testing.B) {
	_, js := newJetStreamStore(b)
	ctx := b.Context()
	subj := events.JobSubject("bench")
	bodies := make([][]byte, b.N)
	for i, ev := range newEvents(b, "bench", 0, b.N) {
		var err error
		if bodies[i], err = events.Marshal(&ev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := js.Publish(ctx, subj, bodies[i]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendBatch3 is one atomic append of three events (one decision
// that yields several events); ns/op is per append.
func BenchmarkAppendBatch3(b *testing.B) {
	s, _ := newJetStreamStore(b)
	ctx := b.Context()
	subj := events.JobSubject("bench")
	evs := newEvents(b, "bench", 0, 3*b.N)
	var last uint64
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		var err error
		if last, err = s.Append(ctx, subj, last, evs[3*i:3*i+3]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoad20 loads a job of 20 events whose events are interleaved
// with those of 49 other jobs (1000 messages in the stream).
func BenchmarkLoad20(b *testing.B) {
	s, _ := newJetStreamStore(b)
	ctx := b.Context()
	last := map[string]uint64{}
	for i := range 20 {
		for j := range 50 {
			id := "job" + strconv.Itoa(j)
			var err error
			if last[id], err = s.Append(ctx, events.JobSubject(id), last[id], newEvents(b, id, i, 1)); err != nil {
				b.Fatal(err)
			}
		}
	}
	subj := events.JobSubject("job7")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		evs, err := s.Load(ctx, subj, 0)
		if err != nil || len(evs) != 20 {
			b.Fatalf("Load: %d events, %v", len(evs), err)
		}
	}
}
