package events_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// The golden files are recorded events, stored exactly as JetStream holds
// them (testdata/golden/README.md). They must decode and replay to the same
// state forever: when a test here fails, the change that made it fail broke
// ferry's event API, unless it is a deliberate change of the job model's
// rules, reviewed as such, after which -update rewrites the expected states
// (never the recorded events):
//
//	go test ./events/ -run TestGolden -update
var update = flag.Bool("update", false, "rewrite the expected states of the golden histories (only for an intended, reviewed change of the job model)")

const goldenDir = "testdata/golden"

// sameState lists histories that are recordings of one history in other
// event versions: they must replay to the same state.
var sameState = [][2]string{{"retries-v1", "retries"}}

// TestGoldenEveryTypeAndVersion: every version of every registered event
// type has a recorded envelope in testdata/golden/events, and every recorded
// envelope still decodes, upcasts to the current version and encodes again
// without losing anything it recorded.
func TestGoldenEveryTypeAndVersion(t *testing.T) {
	types := events.Types()
	for _, name := range events.TypeNames() {
		for v := 1; v <= types[name]; v++ {
			f := filepath.Join(goldenDir, "events", fmt.Sprintf("%s.v%d.json", name, v))
			if _, err := os.Stat(f); err != nil {
				t.Errorf("%s v%d has no golden file %s: record one (see events/golden_record_test.go): %v", name, v, f, err)
			}
		}
	}
	files, err := filepath.Glob(filepath.Join(goldenDir, "events", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden events: %v", err)
	}
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(base, func(t *testing.T) {
			name, vs, ok := strings.Cut(base, ".v")
			v, err := strconv.Atoi(vs)
			if !ok || err != nil {
				t.Fatalf("%s: the name is not <Type>.v<version>.json", f)
			}
			if cur, ok := types[name]; !ok || v > cur {
				t.Fatalf("%s v%d is recorded but not registered: a type or version was removed", name, v)
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			ev := checkStored(t, bytes.TrimSuffix(b, []byte("\n")))
			if ev.Type != name || ev.Version != v {
				t.Fatalf("%s holds %s v%d", f, ev.Type, ev.Version)
			}
		})
	}
}

// TestGoldenHistories replays each recorded job history and compares the
// state with the expected one next to it. Every job event type and version
// that has a golden envelope must appear in some history.
func TestGoldenHistories(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "histories", "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden histories: %v", err)
	}
	replayed := map[string]bool{}
	states := map[string]job.Job{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".ndjson")
		t.Run(name, func(t *testing.T) {
			evs := readHistory(t, f)
			for i := range evs {
				replayed[fmt.Sprintf("%s.v%d", evs[i].Type, evs[i].Version)] = true
			}
			got, err := job.Replay(evs)
			if err != nil {
				t.Fatalf("replay: %v", err)
			}
			states[name] = got
			stateFile := strings.TrimSuffix(f, ".ndjson") + ".state.json"
			if *update {
				b, err := json.MarshalIndent(&got, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(stateFile, append(b, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			b, err := os.ReadFile(stateFile)
			if err != nil {
				t.Fatalf("expected state: %v (write it with -update after reviewing the replay)", err)
			}
			var want job.Job
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&want); err != nil {
				t.Fatalf("%s: %v", stateFile, err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("replayed state differs from %s (-want +got):\n%s", stateFile, diff)
			}
		})
	}
	for _, p := range sameState {
		a, aok := states[p[0]]
		b, bok := states[p[1]]
		if !aok || !bok {
			t.Errorf("histories %s and %s must both exist", p[0], p[1])
			continue
		}
		if diff := cmp.Diff(b, a); diff != "" {
			t.Errorf("%s and %s record one history in other versions but replay differently (-%s +%s):\n%s", p[0], p[1], p[1], p[0], diff)
		}
	}
	envs, _ := filepath.Glob(filepath.Join(goldenDir, "events", "*.json"))
	for _, f := range envs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := events.Unmarshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if k := strings.TrimSuffix(filepath.Base(f), ".json"); ev.Kind == events.KindJob && !replayed[k] {
			t.Errorf("job event %s appears in no golden history: record a history with it", k)
		}
	}
}

// TestJobTransientErrorV1Upcast: version 1 keeps its fields and reads
// attempt and retry_after_s as 0, "not recorded".
func TestJobTransientErrorV1Upcast(t *testing.T) {
	v1 := `{"error":{"context":"BG_ERROR_CONTEXT_REMOTE_FILE","code":"BG_E_HTTP_ERROR_503","hresult":"0x801901F7","description":"HTTP 503","file_index":0},"retry_at":"2026-11-02T09:32:21.5Z"}`
	data, v, err := events.Upcast(events.TypeJobTransientError, 1, json.RawMessage(v1))
	if err != nil || v != 2 {
		t.Fatalf("Upcast: v%d, %v", v, err)
	}
	want := `{"error":{"context":"BG_ERROR_CONTEXT_REMOTE_FILE","code":"BG_E_HTTP_ERROR_503","hresult":"0x801901F7","description":"HTTP 503","file_index":0},"retry_at":"2026-11-02T09:32:21.5Z","attempt":0,"retry_after_s":0}`
	if string(data) != want {
		t.Fatalf("upcast\n got %s\nwant %s", data, want)
	}
	for _, bad := range []string{`{"error":{}}`, `{"retry_at":"2026-11-02T09:32:21Z"}`, `[]`, `{"error":1,"retry_at":`} {
		if _, _, err := events.Upcast(events.TypeJobTransientError, 1, json.RawMessage(bad)); err == nil {
			t.Errorf("%s upcast without an error", bad)
		}
	}
}

func readHistory(t *testing.T, name string) []events.Event {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []events.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		ev := checkStored(t, sc.Bytes())
		// The body does not hold the stream sequence: replay the job as
		// if its events were the first ones of the stream.
		ev.Seq = uint64(len(evs) + 1)
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

// checkStored decodes one stored envelope and checks that
//   - the envelope encodes back to the very same bytes;
//   - the payload decodes (upcast to the current version);
//   - the payload encodes at the current version with everything the
//     recorded (upcast) data holds, unchanged: a field that was renamed or
//     dropped, or changed its type, fails here. New fields must read as
//     their zero value;
//   - that encoding is stable: decoding and encoding it again gives the same
//     payload and the same bytes.
func checkStored(t *testing.T, b []byte) events.Event {
	t.Helper()
	ev, err := events.Unmarshal(b)
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	again, err := events.Marshal(&ev)
	if err != nil || !bytes.Equal(again, b) {
		t.Errorf("%s %s: the envelope does not encode back to its stored bytes (%v):\n got %s\nwant %s", ev.Type, ev.ID, err, again, b)
	}
	p, err := ev.Payload()
	if err != nil {
		t.Fatalf("%s v%d %s: %v", ev.Type, ev.Version, ev.ID, err)
	}
	up, cur, err := events.Upcast(ev.Type, ev.Version, ev.Data)
	if err != nil {
		t.Fatal(err)
	}
	if p.EventType() != ev.Type || p.EventVersion() != cur {
		t.Fatalf("%s v%d decoded as %s v%d, current is v%d", ev.Type, ev.Version, p.EventType(), p.EventVersion(), cur)
	}
	enc, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var recorded, current any
	if err := json.Unmarshal(up, &recorded); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(enc, &current); err != nil {
		t.Fatal(err)
	}
	if problems := keeps(recorded, current, "data"); len(problems) > 0 {
		t.Errorf("%s v%d %s: the current payload does not keep what was recorded:\n  %s\nrecorded (v%d as v%d): %s\nencoded now: %s",
			ev.Type, ev.Version, ev.ID, strings.Join(problems, "\n  "), ev.Version, cur, up, enc)
	}
	reread := events.Event{Type: ev.Type, Version: cur, Data: enc}
	p2, err := reread.Payload()
	if err != nil {
		t.Fatalf("%s: the current encoding does not decode: %v", ev.Type, err)
	}
	if diff := cmp.Diff(p, p2); diff != "" {
		t.Errorf("%s: payload changes when encoded and decoded again (-first +second):\n%s", ev.Type, diff)
	}
	if enc2, err := json.Marshal(p2); err != nil || !bytes.Equal(enc, enc2) {
		t.Errorf("%s: encoding is not stable: %v\n%s\n%s", ev.Type, err, enc, enc2)
	}
	return ev
}

// keeps reports how current fails to hold everything recorded holds: every
// recorded member is present with an equal value; members only current has
// must be zero values (null, false, 0, "", [] or {}).
func keeps(recorded, current any, path string) []string {
	switch r := recorded.(type) {
	case map[string]any:
		c, ok := current.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: recorded an object, encodes %s", path, short(current))}
		}
		var out []string
		for _, k := range sortedKeys(r) {
			cv, ok := c[k]
			if !ok {
				if isZero(r[k]) {
					continue // an omitempty member recorded with its zero value
				}
				out = append(out, fmt.Sprintf("%s.%s: recorded %s, no longer encoded", path, k, short(r[k])))
				continue
			}
			out = append(out, keeps(r[k], cv, path+"."+k)...)
		}
		for _, k := range sortedKeys(c) {
			if _, ok := r[k]; !ok && !isZero(c[k]) {
				out = append(out, fmt.Sprintf("%s.%s: not recorded, encodes %s", path, k, short(c[k])))
			}
		}
		return out
	case []any:
		c, ok := current.([]any)
		if !ok || len(c) != len(r) {
			return []string{fmt.Sprintf("%s: recorded %s, encodes %s", path, short(recorded), short(current))}
		}
		var out []string
		for i := range r {
			out = append(out, keeps(r[i], c[i], fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	}
	if !reflect.DeepEqual(recorded, current) && !(isZero(recorded) && isZero(current)) {
		return []string{fmt.Sprintf("%s: recorded %s, encodes %s", path, short(recorded), short(current))}
	}
	return nil
}

func isZero(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case bool:
		return !v
	case float64:
		return v == 0
	case string:
		return v == ""
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 80 {
		return string(b[:77]) + "..."
	}
	return string(b)
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
