package main

// `ferry events tail` through the real binary against a `ferry dev` stack.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// tailLines runs `ferry events tail -o json` with args and decodes its
// NDJSON, checking that every line is an envelope with its sequence, in
// stream order.
func tailLines(t *testing.T, dataDir string, args ...string) []services.EventLine {
	t.Helper()
	out, code := ferry(t, dataDir, append([]string{"events", "tail", "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("events tail %v exited %d", args, code)
	}
	var lines []services.EventLine
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l services.EventLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad NDJSON line %q: %v", sc.Text(), err)
		}
		var raw map[string]any
		_ = json.Unmarshal(sc.Bytes(), &raw)
		for _, k := range []string{"seq", "id", "type", "v", "kind", "aggregate_id", "time", "data"} {
			if _, ok := raw[k]; !ok {
				t.Fatalf("line %q lacks %q", sc.Text(), k)
			}
		}
		if l.Seq == 0 || (len(lines) > 0 && l.Seq <= lines[len(lines)-1].Seq) {
			t.Fatalf("line %q: sequence %d out of order", sc.Text(), l.Seq)
		}
		lines = append(lines, l)
	}
	return lines
}

func lineTypes(lines []services.EventLine) []string {
	var out []string
	for _, l := range lines {
		out = append(out, l.Type)
	}
	return out
}

// ferryFails runs the CLI expecting exit status 1 and returns its stderr.
func ferryFails(t *testing.T, dataDir string, args ...string) string {
	t.Helper()
	r := runCLIAs(t, dataDir, cliIdentity{}, args...)
	if r.code != 1 {
		t.Fatalf("ferry %v: exit status %d, want 1; stdout %q stderr %q", args, r.code, r.stdout, r.stderr)
	}
	if r.stdout != "" {
		t.Fatalf("ferry %v printed %q", args, r.stdout)
	}
	return r.stderr
}

// TestEventsTail: filters, NDJSON and human lines, bad input, and --follow
// showing an event as it is appended.
func TestEventsTail(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	startStack(t, dataDir, root, o.CAFile)
	out, code := ferry(t, dataDir, "job", "create", "--name", "tail-test", o.URL(4096), filepath.Join(root, "t.bin"))
	if code != 0 {
		t.Fatal("job create failed")
	}
	id := strings.TrimSpace(out)

	// The whole log (the dev identity is an administrator): the job's
	// events and the dev agent's session, which it starts on its own.
	waitFor(t, 30*time.Second, "the agent's AgentJoined", func() bool {
		return len(tailLines(t, dataDir, "--type", "AgentJoined")) > 0
	})
	all := tailLines(t, dataDir)
	var created, added services.EventLine
	agentJoined := false
	for _, l := range all {
		switch {
		case l.AggregateID == id && l.Type == events.TypeJobCreated:
			created = l
		case l.AggregateID == id && l.Type == events.TypeFilesAdded:
			added = l
		case l.Kind == events.KindAgent && l.AggregateID == "e2e" && l.Type == events.TypeAgentJoined:
			agentJoined = true
		}
	}
	if created.Seq == 0 || added.Seq == 0 || !agentJoined {
		t.Fatalf("whole log lacks the job's or the agent's events: %v", lineTypes(all))
	}
	var data struct {
		DisplayName string `json:"display_name"`
	}
	if err := json.Unmarshal(created.Data, &data); err != nil || data.DisplayName != "tail-test" {
		t.Fatalf("JobCreated data %s: %v", created.Data, err)
	}

	for _, tc := range []struct {
		name string
		args []string
		want func(services.EventLine) bool
	}{
		{"job by prefix and type", []string{"--job", id[:13], "--type", "FilesAdded"}, func(l services.EventLine) bool { return l.Seq == added.Seq }},
		{"types, repeated and comma-separated", []string{"--type", "JobCreated,FilesAdded", "--type", "AgentJoined"}, func(l services.EventLine) bool {
			return l.Type == "JobCreated" || l.Type == "FilesAdded" || l.Type == "AgentJoined"
		}},
		{"agent", []string{"--agent", "e2e"}, func(l services.EventLine) bool { return l.Kind == events.KindAgent && l.AggregateID == "e2e" }},
		{"from sequence", []string{"--from-seq", strconv.FormatUint(added.Seq, 10)}, func(l services.EventLine) bool { return l.Seq >= added.Seq }},
		{"since a duration ago", []string{"--since", "1h"}, func(services.EventLine) bool { return true }},
		{"since a future time", []string{"--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, func(services.EventLine) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []uint64
			for _, l := range all {
				if tc.want(l) {
					want = append(want, l.Seq)
				}
			}
			got := tailLines(t, dataDir, tc.args...)
			var seqs []uint64
			for _, l := range got {
				if l.Seq <= all[len(all)-1].Seq { // events after the first read are not compared
					seqs = append(seqs, l.Seq)
				}
			}
			if len(seqs) != len(want) {
				t.Fatalf("got %v %v, want %v", seqs, lineTypes(got), want)
			}
			for i := range want {
				if seqs[i] != want[i] {
					t.Fatalf("got %v, want %v", seqs, want)
				}
			}
		})
	}

	// Human lines: time, sequence, type, job, actor, summary.
	out, code = ferry(t, dataDir, "events", "tail", "--job", id)
	if code != 0 {
		t.Fatal("events tail (text) failed")
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		t.Fatalf("text output:\n%s", out)
	}
	f := strings.Fields(lines[0])
	if len(f) < 6 || f[2] != strconv.FormatUint(created.Seq, 10) || f[3] != "JobCreated" || f[4] != id ||
		!strings.HasPrefix(f[5], "admin/") || !strings.Contains(lines[0], `"tail-test"`) {
		t.Fatalf("first line %q", lines[0])
	}
	if _, err := time.ParseInLocation("2006-01-02 15:04:05.000", f[0]+" "+f[1], time.Local); err != nil {
		t.Fatalf("first line %q: time: %v", lines[0], err)
	}
	if !strings.Contains(lines[1], "FilesAdded") || !strings.Contains(lines[1], o.URL(4096)) {
		t.Fatalf("second line %q", lines[1])
	}

	// Bad input: a usage error before any request, the API's problems after.
	if msg := ferryFails(t, dataDir, "events", "tail", "--since", "1h", "--from-seq", "3"); !strings.Contains(msg, "since") || !strings.Contains(msg, "from-seq") {
		t.Fatalf("--since with --from-seq: %q", msg)
	}
	if msg := ferryFails(t, dataDir, "events", "tail", "--type", "JobExploded"); !strings.Contains(msg, "E_INVALIDARG") || !strings.Contains(msg, `unknown event type "JobExploded"`) {
		t.Fatalf("unknown type: %q", msg)
	}
	if msg := ferryFails(t, dataDir, "events", "tail", "--since", "last tuesday"); !strings.Contains(msg, "RFC 3339") {
		t.Fatalf("bad --since: %q", msg)
	}
	if msg := ferryFails(t, dataDir, "events", "tail", "--job", "01a20101-0000-7000-8000-000000000000"); !strings.Contains(msg, "BG_E_NOT_FOUND") {
		t.Fatalf("unknown job: %q", msg)
	}

	// --follow: the history, then what happens next, until interrupted.
	cmd := exec.Command(ferryBin, "events", "tail", "--follow", "--job", id, "-o", "json")
	cmd.Env = append(os.Environ(), "FERRY_DATA_DIR="+dataDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	followed := make(chan services.EventLine, 100)
	go func() {
		defer close(followed)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l services.EventLine
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				followed <- l
			}
		}
	}()
	next := func() services.EventLine {
		t.Helper()
		select {
		case l, ok := <-followed:
			if !ok {
				t.Fatalf("tail --follow ended; stderr %s", stderr.String())
			}
			return l
		case <-time.After(30 * time.Second):
			t.Fatal("tail --follow printed nothing for 30s")
		}
		panic("unreachable")
	}
	if a, b := next(), next(); a.Seq != created.Seq || b.Seq != added.Seq {
		t.Fatalf("--follow started with %d %s, %d %s", a.Seq, a.Type, b.Seq, b.Type)
	}
	if _, code := ferry(t, dataDir, "job", "resume", id); code != 0 {
		t.Fatal("resume failed")
	}
	if l := next(); l.Type != events.TypeJobQueued || l.AggregateID != id {
		t.Fatalf("--follow then printed %s of %s", l.Type, l.AggregateID)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range followed { // the agent's events may still arrive before it stops
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tail --follow after SIGINT: %v; stderr %s", err, stderr.String())
	}
}
