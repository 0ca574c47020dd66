package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/history"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// readExport decodes an export and groups each job's events (in file
// order) by job ID.
func readExport(t *testing.T, file []byte) (all []events.Event, byJob map[string][]events.Event) {
	t.Helper()
	byJob = map[string][]events.Event{}
	x := history.NewExportReader(bytes.NewReader(file))
	for {
		ev, _, err := x.Next()
		if errors.Is(err, io.EOF) {
			return all, byJob
		}
		if err != nil {
			t.Fatalf("export: %v", err)
		}
		all = append(all, ev)
		if ev.Kind == events.KindJob {
			byJob[ev.AggregateID] = append(byJob[ev.AggregateID], ev)
		}
	}
}

// envelopes is the events as stored (without their sequences).
func envelopes(t *testing.T, evs []events.Event) []string {
	t.Helper()
	out := make([]string, len(evs))
	for i := range evs {
		b, err := events.Marshal(&evs[i])
		if err != nil {
			t.Fatal(err)
		}
		out[i] = string(b)
	}
	return out
}

// export runs `ferry events export` against the stack in dataDir.
func export(t *testing.T, dataDir string, args ...string) []byte {
	t.Helper()
	r := runCLIAs(t, dataDir, cliIdentity{name: "admin"}, append([]string{"events", "export"}, args...)...)
	if r.code != 0 || !strings.HasPrefix(r.stderr, "exported ") {
		t.Fatalf("events export: %+v", r)
	}
	return []byte(r.stdout)
}

func decodeHistory(t *testing.T, r cliRun) coordinator.HistoryResponse {
	t.Helper()
	var h coordinator.HistoryResponse
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &h) != nil || h.Job.ID == "" {
		t.Fatalf("exit %d, stdout %q, stderr %q: want a JSON history", r.code, r.stdout, r.stderr)
	}
	return h
}

// TestReplayExportImportCLI drives a live `ferry dev` through a job that
// is transferred and completed, one that fails with transient errors, is
// retried automatically and then suspended, and one of bob's with a client
// certificate that an administrator takes over (which removes it). Then,
// through the real binary:
//   - `ferry job history --seq N` at every event of the retried job is
//     the fold of its events up to N, and the text timeline names each
//     retry and its cause;
//   - `ferry replay job ID --file export`, with no server, gives every job
//     the state `ferry job show` gives on the live stack;
//   - `ferry events import` of that export into a second, fresh stack gives
//     the same jobs (GET), with the same events (IDs, bodies, order) on each
//     job's subject, and importing again imports nothing.
func TestReplayExportImportCLI(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	dataDir2, root2 := t.TempDir(), t.TempDir()
	tuning := []string{"--reconcile-interval", "1s", "--checkpoint-interval", "50ms"}
	startStack(t, dataDir, root, o.CAFile, tuning...)
	// The second installation's agent has a name of its own.
	startStack(t, dataDir2, root2, o.CAFile, append(tuning, "--agent-id", "e2e-second")...)
	admin := cliIdentity{name: "admin"}
	run := func(w cliIdentity, args ...string) cliRun {
		t.Helper()
		r := runCLIAs(t, dataDir, w, args...)
		if r.code != 0 {
			t.Fatalf("ferry %v: %+v", args, r)
		}
		return r
	}
	until := func(id, what string, cond func(job.Job) bool) job.Job {
		t.Helper()
		var j job.Job
		waitFor(t, 60*time.Second, what, func() bool { j = showJob(t, dataDir, id); return cond(j) })
		return j
	}

	// A job transferred and completed.
	done := strings.TrimSpace(run(admin, "job", "create", "--name", "done", "--resume", o.URL(200_000), filepath.Join(root, "done.bin")).stdout)
	until(done, "the job to be transferred", func(j job.Job) bool { return j.State == job.Transferred })
	run(admin, "job", "complete", done)
	until(done, "ACKNOWLEDGED", func(j job.Job) bool { return j.State == job.Acknowledged && !j.PendingComplete })

	// A job that fails with a transient error (503), is retried by the
	// coordinator after its minimum retry delay, fails again, and is
	// suspended.
	retried := strings.TrimSpace(run(admin, "job", "create", "--name", "retried", "--min-retry-delay", "5s", "--resume",
		o.StatusURL(503), filepath.Join(root, "retried.bin")).stdout)
	until(retried, "a retry that failed again", func(j job.Job) bool { return j.State == job.TransientError && j.ErrorCount >= 2 })
	run(admin, "job", "suspend", retried)
	until(retried, "SUSPENDED", func(j job.Job) bool { return j.State == job.Suspended && j.Agent == "" })

	// Bob's job with bob's client certificate, taken over by an
	// administrator: the certificate goes with the old owner.
	if r := run(admin, "ca", "issue", "--role", "user", "--name", "bob"); !strings.HasPrefix(r.stdout, "spiffe://") {
		t.Fatalf("ca issue: %+v", r)
	}
	pki := filepath.Join(dataDir, "pki")
	bob := cliIdentity{name: "bob", env: []string{"FERRY_CERT=" + filepath.Join(pki, "bob.pem"), "FERRY_KEY=" + filepath.Join(pki, "bob-key.pem")}}
	certPEM, keyPEM, _ := clientCertFiles(t, "bob@example.test", "unused")
	pemFile := filepath.Join(t.TempDir(), "bob.pem")
	if err := os.WriteFile(pemFile, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	var cert struct{ SHA1 string }
	if err := json.Unmarshal([]byte(run(bob, "cert", "import", "--pem", pemFile, "-o", "json").stdout), &cert); err != nil || len(cert.SHA1) != 40 {
		t.Fatalf("cert import: %v", err)
	}
	taken := strings.TrimSpace(run(bob, "job", "create", "--name", "taken", o.URL(1000), filepath.Join(root, "taken.bin")).stdout)
	run(bob, "job", "cert", "set", taken, "--thumbprint", cert.SHA1)
	if r := run(admin, "job", "take-ownership", taken); !strings.Contains(r.stdout, "S_OK") {
		t.Fatalf("take-ownership: %+v", r)
	}
	until(taken, "the administrator to own the job, without bob's certificate", func(j job.Job) bool {
		return j.ClientCertificate == nil && strings.Contains(j.Owner, "/admin/")
	})
	jobs := []string{done, retried, taken}

	// The export of the live stack.
	file := export(t, dataDir)
	all, byJob := readExport(t, file)
	for _, id := range jobs {
		if len(byJob[id]) == 0 {
			t.Fatalf("job %s is not in the export", id)
		}
	}
	types := map[string]bool{}
	for _, ev := range byJob[retried] {
		types[ev.Type] = true
		if ev.Type == events.TypeJobQueued {
			if p, _ := ev.Payload(); p.(*events.JobQueued).Reason == job.QueuedRetry {
				types["retry"] = true
			}
		}
	}
	for _, ev := range byJob[taken] {
		types[ev.Type] = true
	}
	for _, want := range []string{events.TypeJobTransientError, "retry", events.TypeJobSuspended, events.TypeClientCertificateSet,
		events.TypeJobOwnerChanged, events.TypeClientCertificateRemoved} {
		if !types[want] {
			t.Fatalf("the jobs' histories have no %s", want)
		}
	}
	path := filepath.Join(t.TempDir(), "export.ndjson")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}

	// --seq on the live job, at every one of its events.
	evs := byJob[retried]
	for k := range evs {
		want, err := job.Replay(append([]events.Event(nil), evs[:k+1]...))
		if err != nil {
			t.Fatal(err)
		}
		h := decodeHistory(t, runCLIAs(t, dataDir, admin, "job", "history", retried, "--seq", strconv.FormatUint(evs[k].Seq, 10), "-o", "json"))
		if diff := cmp.Diff(want, h.Job); diff != "" {
			t.Fatalf("job history --seq %d differs from the fold of the first %d events (-fold +history):\n%s", evs[k].Seq, k+1, diff)
		}
		if h.AsOf.Events != k+1 || len(h.Timeline) != k+1 {
			t.Fatalf("--seq %d: as of %+v with %d entries", evs[k].Seq, h.AsOf, len(h.Timeline))
		}
	}
	at := evs[len(evs)/2].Time.Format(time.RFC3339Nano)
	h := decodeHistory(t, runCLIAs(t, dataDir, admin, "replay", "job", retried[:13], "--at", at, "-o", "json"))
	if n := history.Cut(evs, history.Point{Time: evs[len(evs)/2].Time}); h.AsOf.Events != n {
		t.Fatalf("replay job --at %s: %d events, want %d", at, h.AsOf.Events, n)
	}
	text := run(admin, "replay", "job", retried).stdout
	for _, want := range []string{`SEQ +TIME +STATE +BY +AGENT +WHAT`, `State +SUSPENDED`, `retry 1 after BG_E_HTTP_ERROR_503`,
		`QUEUED -> CONNECTING +\S+ +e2e #1 `, `CONNECTING -> TRANSIENT_ERROR .* retry at `} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Fatalf("replay job text does not match %q:\n%s", want, text)
		}
	}
	if r := runCLIAs(t, dataDir, admin, "replay", "job", retried, "--seq", "1", "--at", at); r.code == 0 {
		t.Fatal("--seq and --at together were accepted")
	}

	// From the file, with no server (an empty data directory, no address):
	// every job as the live stack shows it.
	nowhere := t.TempDir()
	for _, id := range jobs {
		// The read model may be a moment behind the log.
		last := byJob[id][len(byJob[id])-1].Seq
		live := until(id, "the read model to reach the export", func(j job.Job) bool { return j.Version == last })
		h := decodeHistory(t, runCLIAs(t, nowhere, admin, "replay", "job", id, "--file", path, "-o", "json"))
		if diff := cmp.Diff(live, h.Job); diff != "" {
			t.Fatalf("job %s replayed from the export differs from job show (-show +replay):\n%s", id, diff)
		}
		if !h.AsOf.Latest() || len(h.Timeline) != len(byJob[id]) {
			t.Fatalf("job %s from the file: as of %+v, %d entries", id, h.AsOf, len(h.Timeline))
		}
	}
	if r := runCLIAs(t, nowhere, admin, "replay", "job", retried, "--file", path); r.code != 0 || !strings.Contains(r.stdout, "retry 1 after BG_E_HTTP_ERROR_503") {
		t.Fatalf("replay job --file (text): %+v", r)
	}

	// Import into the second stack.
	r := runCLIAs(t, dataDir2, admin, "events", "import", path, "-o", "json")
	var res coordinator.ImportResult
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &res) != nil || res.Lines != len(all) || res.Imported+res.Skipped != len(all) || res.Imported == 0 {
		t.Fatalf("import: %+v (%d events in the file)", r, len(all))
	}
	// Each job: the same events in the same order, and the same state.
	_, byJob2 := readExport(t, export(t, dataDir2, "--kind", "job"))
	for _, id := range jobs {
		if diff := cmp.Diff(envelopes(t, byJob[id]), envelopes(t, byJob2[id])); diff != "" {
			t.Fatalf("job %s's events differ after the import (-first +second):\n%s", id, diff)
		}
		want := showJob(t, dataDir, id)
		last := byJob2[id][len(byJob2[id])-1].Seq
		var got job.Job
		waitFor(t, 30*time.Second, "the second stack's read model of "+id, func() bool {
			got = showJob(t, dataDir2, id)
			return got.Version == last
		})
		// The stream sequence of the job's last event is the one thing
		// that differs: the second installation numbers its log itself.
		want.Version, got.Version = 0, 0
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("job %s differs after the import (-first +second):\n%s", id, diff)
		}
	}
	// Again: nothing is imported, everything skipped.
	// (Standard input, empty here, is a file too.)
	r = runCLIAs(t, dataDir2, admin, "events", "import", "-", "-o", "json")
	if r.code != 0 || strings.Join(strings.Fields(r.stdout), "") != `{"lines":0,"imported":0,"skipped":0,"subjects":0}` {
		t.Fatalf("import of an empty stdin: %+v", r)
	}
	r = runCLIAs(t, dataDir2, admin, "events", "import", path)
	if r.code != 0 || r.stdout != fmt.Sprintf("imported 0 events, skipped %d already there (%d lines, %d subjects)\n", len(all), len(all), res.Subjects) {
		t.Fatalf("import again: %+v", r)
	}
	_, again := readExport(t, export(t, dataDir2, "--kind", "job"))
	for _, id := range jobs {
		if len(again[id]) != len(byJob[id]) {
			t.Fatalf("importing again changed job %s: %d events, want %d", id, len(again[id]), len(byJob[id]))
		}
	}

	// A bad line: exit 1, the line named.
	bad := filepath.Join(t.TempDir(), "bad.ndjson")
	ls := strings.SplitAfter(string(file), "\n")
	ls[1] = "{not json}\n"
	if err := os.WriteFile(bad, []byte(strings.Join(ls, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLIAs(t, dataDir2, admin, "events", "import", bad)
	if r.code != 1 || !strings.Contains(r.stderr, "RPC_X_BAD_STUB_DATA") || !strings.Contains(r.stderr, "line 2:") {
		t.Fatalf("import of a bad line: %+v", r)
	}
}
