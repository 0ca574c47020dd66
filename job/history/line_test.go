package history_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job/history"
)

// goldenEvents reads one recorded envelope of every type and version
// (job, agent and vault events).
func goldenEvents(t testing.TB) []events.Event {
	t.Helper()
	files, err := filepath.Glob("../../events/testdata/golden/events/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden events: %v", err)
	}
	var out []events.Event
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := events.Unmarshal(bytes.TrimSpace(b))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		ev.Seq = uint64(100 + i)
		out = append(out, ev)
	}
	return out
}

// TestLineRoundTrip: every recorded envelope of every type and version
// encodes to a line that decodes to the same event, at the version it was
// stored in (an export never rewrites history), with the line's sequence.
func TestLineRoundTrip(t *testing.T) {
	for _, ev := range goldenEvents(t) {
		line, err := history.EncodeLine(&ev)
		if err != nil {
			t.Fatalf("%s: %v", ev.Type, err)
		}
		if bytes.ContainsRune(line, '\n') {
			t.Fatalf("%s: the line has a newline", ev.Type)
		}
		var head struct {
			Seq     uint64 `json:"seq"`
			Subject string `json:"subject"`
		}
		if err := json.Unmarshal(line, &head); err != nil || head.Seq != ev.Seq || head.Subject != ev.Subject() {
			t.Fatalf("%s: head %+v (%v) of %s", ev.Type, head, err, line)
		}
		got, err := history.DecodeLine(line)
		if err != nil {
			t.Fatalf("%s: %v\n%s", ev.Type, err, line)
		}
		a, _ := events.Marshal(&ev)
		b, _ := events.Marshal(&got)
		if !bytes.Equal(a, b) || got.Seq != ev.Seq {
			t.Fatalf("%s: round trip\n got %s (seq %d)\nwant %s (seq %d)", ev.Type, b, got.Seq, a, ev.Seq)
		}
	}
}

func TestDecodeLineRefusals(t *testing.T) {
	good := func() map[string]any {
		var ev events.Event
		for _, e := range goldenEvents(t) {
			if e.Type == events.TypeJobQueued {
				ev = e
			}
		}
		line, err := history.EncodeLine(&ev)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	enc := func(f func(m map[string]any)) string {
		m := good()
		f(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	for _, tc := range []struct {
		name, line, want string
	}{
		{"not JSON", `seq=1`, "not a JSON object"},
		{"an array", `[1,2]`, "not a JSON object"},
		{"trailing data", enc(func(map[string]any) {}) + ` {}`, "not a JSON object"},
		{"no seq", enc(func(m map[string]any) { delete(m, "seq") }), `"seq"`},
		{"seq 0", enc(func(m map[string]any) { m["seq"] = 0 }), `"seq"`},
		{"negative seq", enc(func(m map[string]any) { m["seq"] = -3 }), "not a JSON object"},
		{"no subject", enc(func(m map[string]any) { delete(m, "subject") }), `"subject"`},
		{"another subject", enc(func(m map[string]any) { m["subject"] = "ferry.evt.job.other" }), "belongs to"},
		{"no id", enc(func(m map[string]any) { delete(m, "id") }), "missing id"},
		{"bad kind", enc(func(m map[string]any) { m["kind"] = "j.b" }), "bad kind"},
		{"unknown type", enc(func(m map[string]any) { m["type"] = "JobTeleported" }), "unknown event type"},
		{"newer version", enc(func(m map[string]any) { m["v"] = 9 }), "unknown event type"},
		{"data of the wrong shape", enc(func(m map[string]any) { m["data"] = map[string]any{"reason": 7} }), "JobQueued"},
		{"v1 without its fields", enc(func(m map[string]any) {
			m["type"], m["v"], m["data"] = events.TypeJobTransientError, 1, map[string]any{"error": map[string]any{}}
		}), "upcast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := history.DecodeLine([]byte(tc.line))
			if err == nil || !errors.Is(err, history.ErrBadLine) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want a bad line saying %q", err, tc.want)
			}
		})
	}
}

func TestExportReader(t *testing.T) {
	evs := goldenEvents(t)[:4]
	var b strings.Builder
	for i := range evs {
		line, err := history.EncodeLine(&evs[i])
		if err != nil {
			t.Fatal(err)
		}
		b.Write(line)
		switch i {
		case 0:
			b.WriteString("\r\n\n   \n") // CRLF and blank lines are fine
		case len(evs) - 1: // no newline after the last line
		default:
			b.WriteString("\n")
		}
	}
	x := history.NewExportReader(strings.NewReader(b.String()))
	wantLines := []int{1, 4, 5, 6}
	for i := range evs {
		ev, line, err := x.Next()
		if err != nil || ev.ID != evs[i].ID || ev.Seq != evs[i].Seq || line != wantLines[i] {
			t.Fatalf("event %d: %s seq %d line %d %v", i, ev.ID, ev.Seq, line, err)
		}
	}
	if _, _, err := x.Next(); err != io.EOF {
		t.Fatalf("after the last line: %v", err)
	}

	// A bad line says which.
	x = history.NewExportReader(strings.NewReader(b.String()[:strings.Index(b.String(), "\n")+1] + "\n{\"seq\":2}\n"))
	if _, _, err := x.Next(); err != nil {
		t.Fatal(err)
	}
	_, line, err := x.Next()
	var le *history.LineError
	if !errors.As(err, &le) || le.Line != 3 || line != 3 || !strings.HasPrefix(err.Error(), "line 3: ") {
		t.Fatalf("bad line: %v (line %d)", err, line)
	}

	// A line longer than the limit is refused without reading it whole.
	long := strings.NewReader(`{"seq":1,"pad":"` + strings.Repeat("x", history.MaxLineBytes) + "\"}\n")
	if _, _, err := history.NewExportReader(long).Next(); !errors.As(err, &le) || le.Line != 1 || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("long line: %v", err)
	}
}

// FuzzDecodeLine: the decoder of export lines (outside input) never
// panics, and whatever it accepts encodes to a line that decodes to the
// same event.
func FuzzDecodeLine(f *testing.F) {
	for _, ev := range goldenEvents(f) {
		line, err := history.EncodeLine(&ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(line)
	}
	f.Add([]byte(`{"seq":1,"subject":"ferry.evt.job.a","id":"01a19b98-1dc0-7000-8000-020100000001","type":"JobSuspended","v":1,"kind":"job","aggregate_id":"a","time":"2026-11-02T09:30:00Z","data":{}}`))
	f.Add([]byte(`{"seq":18446744073709551615,"subject":"","data":null}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := history.DecodeLine(b)
		if err != nil {
			if !errors.Is(err, history.ErrBadLine) {
				t.Fatalf("an error that is not ErrBadLine: %v", err)
			}
			return
		}
		line, err := history.EncodeLine(&ev)
		if err != nil {
			t.Fatalf("accepted %q but cannot encode it: %v", b, err)
		}
		again, err := history.DecodeLine(line)
		if err != nil {
			t.Fatalf("accepted %q, encoded %q, which does not decode: %v", b, line, err)
		}
		x, _ := events.Marshal(&ev)
		y, _ := events.Marshal(&again)
		if !bytes.Equal(x, y) || again.Seq != ev.Seq {
			t.Fatalf("round trip of %q:\n%s\n%s", b, x, y)
		}
	})
}
