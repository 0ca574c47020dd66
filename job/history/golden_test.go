package history_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/history"
)

// The recorded job histories of package events (data that never changes:
// events/testdata/golden/README.md).
const goldenHistories = "../../events/testdata/golden/histories"

// golden reads every recorded history, its events numbered as the stream
// sequences first, first+step, first+2*step, … .
func golden(t testing.TB, first, step uint64) map[string][]events.Event {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(goldenHistories, "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden histories in %s: %v", goldenHistories, err)
	}
	out := map[string][]events.Event{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var evs []events.Event
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			ev, err := events.Unmarshal(sc.Bytes())
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			ev.Seq = first + uint64(len(evs))*step
			evs = append(evs, ev)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".ndjson")] = evs
	}
	return out
}

// replay is the reference: job.Replay of the first n events.
func replay(t *testing.T, evs []events.Event, n int) job.Job {
	t.Helper()
	j, err := job.Replay(append([]events.Event(nil), evs[:n]...))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestGoldenEveryBoundary checks the point-in-time state at every event
// boundary of every recorded history: after sequence N (each event's own
// sequence, and a sequence between two of the job's events) it is the fold
// of the events up to N; at time T (each event's time, and a time strictly
// between two events' times) it is the fold of the events up to the last
// one whose time is at or before T; before the first event the job did not
// exist; the whole history is the recorded final state. The timeline has
// one entry per applied event, each one's state the fold up to it.
func TestGoldenEveryBoundary(t *testing.T) {
	for _, layout := range []struct {
		name        string
		first, step uint64
	}{{"contiguous", 1, 1}, {"interleaved", 100, 7}} {
		for name, evs := range golden(t, layout.first, layout.step) {
			t.Run(layout.name+"/"+name, func(t *testing.T) {
				checkEveryBoundary(t, evs)
				final, _, err := history.StateAt(evs, history.Point{})
				if err != nil {
					t.Fatal(err)
				}
				if layout.step == 1 {
					// With the sequences the recording assumed, the
					// state is the recorded one.
					b, err := os.ReadFile(filepath.Join(goldenHistories, name+".state.json"))
					if err != nil {
						t.Fatal(err)
					}
					var want job.Job
					if err := json.Unmarshal(b, &want); err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(want, final); diff != "" {
						t.Fatalf("whole history differs from %s.state.json (-want +got):\n%s", name, diff)
					}
				}
			})
		}
	}
}

func checkEveryBoundary(t *testing.T, evs []events.Event) {
	t.Helper()
	// The reference states, one per prefix.
	want := make([]job.Job, len(evs)+1)
	for k := 1; k <= len(evs); k++ {
		want[k] = replay(t, evs, k)
	}
	at := func(p history.Point, k int, what string) {
		t.Helper()
		r, err := history.Build(evs, p)
		if err != nil {
			t.Fatalf("%s (%s): %v", what, p, err)
		}
		if diff := cmp.Diff(want[k], r.Job); diff != "" {
			t.Fatalf("%s (%s): state differs from the fold of the first %d events (-fold +history):\n%s", what, p, k, diff)
		}
		if r.AsOf.Events != k || r.AsOf.Total != len(evs) || r.AsOf.Seq != evs[k-1].Seq || !r.AsOf.Time.Equal(evs[k-1].Time) {
			t.Fatalf("%s (%s): as of %+v, want %d of %d events, last seq %d", what, p, r.AsOf, k, len(evs), evs[k-1].Seq)
		}
		if len(r.Timeline) != k {
			t.Fatalf("%s: %d timeline entries, want %d", what, len(r.Timeline), k)
		}
		for i, e := range r.Timeline {
			if e.Seq != evs[i].Seq || e.Type != evs[i].Type || e.ID != evs[i].ID.String() || e.To != want[i+1].State || e.From != want[i].State {
				t.Fatalf("%s: entry %d %+v does not match event %s seq %d (%s -> %s)", what, i, e, evs[i].Type, evs[i].Seq, want[i].State, want[i+1].State)
			}
			if e.Summary == "" || e.Summary == e.Type {
				t.Fatalf("%s: entry %d (%s) has no summary", what, i, e.Type)
			}
		}
	}
	notYet := func(p history.Point, what string) {
		t.Helper()
		if _, err := history.Build(evs, p); job.CodeOf(err) != job.BG_E_NOT_FOUND {
			t.Fatalf("%s (%s): %v, want BG_E_NOT_FOUND", what, p, err)
		}
	}

	// After sequence N.
	if evs[0].Seq > 1 { // sequence 0 is no bound at all
		notYet(history.Point{Seq: evs[0].Seq - 1}, "before the first sequence")
	}
	for k := 1; k <= len(evs); k++ {
		at(history.Point{Seq: evs[k-1].Seq}, k, "at the sequence of event "+evs[k-1].Type)
		if k < len(evs) && evs[k].Seq-evs[k-1].Seq > 1 {
			at(history.Point{Seq: evs[k-1].Seq + 1}, k, "between two sequences")
		}
	}
	at(history.Point{Seq: evs[len(evs)-1].Seq + 1000}, len(evs), "after the last sequence")

	// At time T: the events up to the last one at or before T.
	lastAtOrBefore := func(tm time.Time) int {
		n := 0
		for i := range evs {
			if !evs[i].Time.After(tm) {
				n = i + 1
			}
		}
		return n
	}
	notYet(history.Point{Time: evs[0].Time.Add(-time.Nanosecond)}, "before the first event's time")
	for k := 1; k <= len(evs); k++ {
		tm := evs[k-1].Time
		at(history.Point{Time: tm}, lastAtOrBefore(tm), "at the time of event "+evs[k-1].Type)
		if k < len(evs) && evs[k].Time.After(tm) {
			mid := tm.Add(evs[k].Time.Sub(tm) / 2)
			if n := lastAtOrBefore(mid); n != k {
				t.Fatalf("the recorded times are not in order around event %d", k)
			}
			at(history.Point{Time: mid}, k, "between two events' times")
		}
	}
	at(history.Point{Time: evs[len(evs)-1].Time.Add(time.Hour)}, len(evs), "after the last event's time")
}
