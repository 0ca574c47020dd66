package services_test

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/history"
	"github.com/ferry-dev/ferry/services"
)

// goldenExport makes an export of the recorded golden histories, their
// events interleaved as several jobs' events are in a log, and returns it
// with each job's events.
func goldenExport(t testing.TB) ([]byte, map[string][]events.Event) {
	t.Helper()
	files, err := filepath.Glob("../events/testdata/golden/histories/*.ndjson")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden histories: %v", err)
	}
	var queues [][]events.Event
	for _, f := range files {
		if strings.Contains(f, "-v1") {
			continue // the same job as another history
		}
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
				t.Fatal(err)
			}
			evs = append(evs, ev)
		}
		queues = append(queues, evs)
	}
	var out bytes.Buffer
	byJob := map[string][]events.Event{}
	seq := uint64(0)
	for more := true; more; {
		more = false
		for i := range queues {
			if len(queues[i]) == 0 {
				continue
			}
			more = true
			ev := queues[i][0]
			queues[i] = queues[i][1:]
			seq++
			ev.Seq = seq
			line, err := history.EncodeLine(&ev)
			if err != nil {
				t.Fatal(err)
			}
			out.Write(line)
			out.WriteByte('\n')
			byJob[ev.AggregateID] = append(byJob[ev.AggregateID], ev)
		}
	}
	return out.Bytes(), byJob
}

// TestReplayJobFile: a job replayed from an export file is the job's
// history, at any point, as history.Build makes it from its events; a
// unique prefix names a job; bad input says what is wrong.
func TestReplayJobFile(t *testing.T) {
	file, byJob := goldenExport(t)
	path := filepath.Join(t.TempDir(), "export.ndjson")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	for id, evs := range byJob {
		for _, p := range []history.Point{{}, {Seq: evs[len(evs)/2].Seq}, {Time: evs[2].Time}} {
			got, err := services.ReplayJobFile(path, id[:30], p)
			if err != nil {
				t.Fatalf("%s at %s: %v", id, p, err)
			}
			want, err := history.Build(evs, p)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("%s at %s: replay from the file differs (-events +file):\n%s", id, p, diff)
			}
		}
	}

	if _, err := services.ReplayJobFile(path, "01a19b98-ffff", history.Point{}); job.CodeOf(err) != job.BG_E_NOT_FOUND {
		t.Fatalf("a job not in the file: %v", err)
	}
	if _, err := services.ReplayJobFile(path, "01a19", history.Point{}); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Fatalf("an ambiguous prefix: %v", err)
	}
	if _, err := services.ReplayJobFile(filepath.Join(t.TempDir(), "none"), "x", history.Point{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no file: %v", err)
	}
	// A bad line anywhere in the file is refused with its number.
	ls := strings.SplitAfter(string(file), "\n")
	ls[4] = `{"seq":5,"subject":"ferry.evt.job.a","id":"01a19b98-1dc0-7000-8000-020100000001","type":"JobTeleported","v":1,"kind":"job","aggregate_id":"a","time":"2026-11-02T09:30:00Z","data":{}}` + "\n"
	bad := filepath.Join(t.TempDir(), "bad.ndjson")
	if err := os.WriteFile(bad, []byte(strings.Join(ls, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	var le *history.LineError
	for id := range byJob {
		if _, err := services.ReplayJobFile(bad, id, history.Point{}); !errors.As(err, &le) || le.Line != 5 || !strings.Contains(err.Error(), "JobTeleported") {
			t.Fatalf("bad line: %v", err)
		}
		break
	}
}

// FuzzReadJobEvents: reading an export file (outside input) never panics,
// and what it returns is one job's events in file order.
func FuzzReadJobEvents(f *testing.F) {
	file, _ := goldenExport(f)
	f.Add(file, "01a19")
	ls := bytes.SplitAfter(file, []byte("\n"))
	f.Add(bytes.Join(ls[:3], nil), "")
	f.Add([]byte("\n\n{}\n"), "a")
	f.Fuzz(func(t *testing.T, b []byte, id string) {
		full, evs, err := services.ReadJobEvents(bytes.NewReader(b), id)
		if err != nil {
			return
		}
		if !strings.HasPrefix(full, id) || len(evs) == 0 {
			t.Fatalf("job %q for %q with %d events", full, id, len(evs))
		}
		for i := range evs {
			if evs[i].AggregateID != full || evs[i].Kind != events.KindJob {
				t.Fatalf("event %d is of %s %s", i, evs[i].Kind, evs[i].AggregateID)
			}
		}
	})
}
