package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/history"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// raw sends a request as c and returns the answer with its body read.
func (e *env) raw(c *http.Client, method, path, ctype string, body []byte) (*http.Response, []byte) {
	e.t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return resp, b
}

// agent runs agent commands on a job as an agent would.
func (e *env) agent(id string, cmds ...job.Command) job.Job {
	e.t.Helper()
	repo := &jobstore.Repo{Store: e.store}
	var j job.Job
	for _, c := range cmds {
		res, err := repo.Execute(context.Background(), id, c, events.Meta{Actor: "agent/host-a"}, nil)
		if err != nil {
			e.t.Fatalf("%s: %v", job.CommandName(c), err)
		}
		j = res.Job
	}
	return j
}

func (e *env) settle() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, events.StreamName)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.svc.Projector().WaitFor(ctx, info.State.LastSeq); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) getJob(c *http.Client, id string) job.Job {
	e.t.Helper()
	resp, b := e.raw(c, "GET", "/v1/jobs/"+id, "", nil)
	var j job.Job
	if resp.StatusCode != 200 || json.Unmarshal(b, &j) != nil {
		e.t.Fatalf("GET job %s: %d %s", id, resp.StatusCode, b)
	}
	return j
}

// retriedJob makes a job of alice's that failed with a transient error on
// an agent, was resumed by alice after it, failed again, and was suspended.
func (e *env) retriedJob() string {
	e.t.Helper()
	id := e.create(`{"display_name":"retried","files":[` + goodFile + `],"minimum_retry_delay_s":30}`)
	fail := job.Fail{Agent: "host-a", Transient: true, RetryAfter: 90 * time.Second,
		Error: events.ErrorInfo{Context: job.ContextRemoteFile, Code: "BG_E_HTTP_ERROR_503", HResult: "0x801901F7", Description: "HTTP 503"}}
	for range 2 {
		if status, m, _ := e.do("POST", "/v1/jobs/"+id+"/resume", ""); status != 200 {
			e.t.Fatalf("resume: %d %v", status, m)
		}
		j := e.agent(id, job.Lease{Agent: "host-a", DispatchSeq: uint64(e.eventCount(id))})
		e.agent(id, job.Lease{Agent: "host-a", DispatchSeq: j.Version}, job.StartConnecting{Agent: "host-a"}, fail)
	}
	if status, m, _ := e.do("POST", "/v1/jobs/"+id+"/suspend", ""); status != 200 {
		e.t.Fatalf("suspend: %d %v", status, m)
	}
	return id
}

// TestJobHistoryAPI: GET /v1/jobs/{id}/history answers the job's state at
// every one of its sequences and at times, with the timeline up to there,
// to its owner and administrators only, and refuses bad points.
func TestJobHistoryAPI(t *testing.T) {
	e := newEnv(t)
	e.create(`{"display_name":"first, so that the next one does not start at sequence 1"}`)
	id := e.retriedJob()
	evs := e.events(id)
	e.settle()

	get := func(c *http.Client, query string) (int, coordinator.HistoryResponse, map[string]any) {
		t.Helper()
		resp, b := e.raw(c, "GET", "/v1/jobs/"+id+"/history"+query, "", nil)
		var h coordinator.HistoryResponse
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		if resp.StatusCode == 200 {
			if err := json.Unmarshal(b, &h); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
		}
		return resp.StatusCode, h, m
	}

	// Now: the read model's state, the whole timeline.
	status, h, _ := get(e.client, "")
	if status != 200 {
		t.Fatalf("history: %d", status)
	}
	if diff := cmp.Diff(e.getJob(e.client, id), h.Job); diff != "" {
		t.Fatalf("history now differs from GET /v1/jobs/{id} (-get +history):\n%s", diff)
	}
	if len(h.Timeline) != len(evs) || h.AsOf.Events != len(evs) || h.AsOf.Total != len(evs) || h.AsOf.Seq != evs[len(evs)-1].Seq {
		t.Fatalf("timeline of %d entries, as of %+v; the job has %d events", len(h.Timeline), h.AsOf, len(evs))
	}
	var transient, resumedAfter int
	for _, en := range h.Timeline {
		if en.Type == events.TypeJobTransientError && en.Error != nil && en.Error.Code == "BG_E_HTTP_ERROR_503" && en.Agent == "host-a" && en.Attempt > 0 && en.RetryAfterSec == 90 {
			transient++
		}
		if en.Type == events.TypeJobQueued && en.Cause != nil && en.Cause.Code == "BG_E_HTTP_ERROR_503" && en.Actor == "spiffe://ferry.test/user/alice" {
			resumedAfter++
		}
	}
	if transient != 2 || resumedAfter != 1 {
		t.Fatalf("timeline: %d transient errors with their cause, %d resumes after one; want 2 and 1:\n%+v", transient, resumedAfter, h.Timeline)
	}

	// At every sequence of the job, and between two of its events.
	for k := range evs {
		want, err := job.Replay(append([]events.Event(nil), evs[:k+1]...))
		if err != nil {
			t.Fatal(err)
		}
		status, h, _ := get(e.client, fmt.Sprintf("?seq=%d", evs[k].Seq))
		if status != 200 || len(h.Timeline) != k+1 || h.AsOf.RequestedSeq != evs[k].Seq || h.AsOf.Seq != evs[k].Seq {
			t.Fatalf("seq %d: %d, %d entries, as of %+v", evs[k].Seq, status, len(h.Timeline), h.AsOf)
		}
		if diff := cmp.Diff(want, h.Job); diff != "" {
			t.Fatalf("state at seq %d differs from the fold of the first %d events:\n%s", evs[k].Seq, k+1, diff)
		}
		if k == 2 {
			at := evs[k].Time.Format(time.RFC3339Nano)
			status, h, _ := get(e.client, "?at="+url.QueryEscape(at))
			n := history.Cut(evs, history.Point{Time: evs[k].Time})
			if status != 200 || h.AsOf.Events != n || h.AsOf.RequestedTime == nil {
				t.Fatalf("at %s: %d, as of %+v, want %d events", at, status, h.AsOf, n)
			}
		}
	}

	// Who may see it, and bad points.
	bob := e.as(identity.RoleUser, "bob")
	admin := e.as(identity.RoleAdmin, "root")
	if status, _, _ := get(admin, "?seq="+strconv.FormatUint(evs[1].Seq, 10)); status != 200 {
		t.Fatalf("administrator: %d", status)
	}
	for _, tc := range []struct {
		c      *http.Client
		path   string
		status int
		code   string
	}{
		{bob, "", 403, "E_ACCESSDENIED"},
		{e.client, "?seq=1&at=2026-11-02T09:30:00Z", 400, "E_INVALIDARG"},
		{e.client, "?seq=abc", 400, "E_INVALIDARG"},
		{e.client, "?seq=0", 400, "E_INVALIDARG"},
		{e.client, "?at=yesterday", 400, "E_INVALIDARG"},
		{e.client, "?seq=" + strconv.FormatUint(evs[0].Seq-1, 10), 404, "BG_E_NOT_FOUND"},
		{e.client, "?at=" + url.QueryEscape(evs[0].Time.Add(-time.Second).Format(time.RFC3339Nano)), 404, "BG_E_NOT_FOUND"},
	} {
		status, _, m := get(tc.c, tc.path)
		if status != tc.status || m["code"] != tc.code {
			t.Errorf("%s: %d %v, want %d %s", tc.path, status, m, tc.status, tc.code)
		}
	}
	resp, b := e.raw(e.client, "GET", "/v1/jobs/01a19b98-0000-7000-8000-000000000000/history", "", nil)
	if resp.StatusCode != 404 || !strings.Contains(string(b), "BG_E_NOT_FOUND") {
		t.Fatalf("unknown job: %d %s", resp.StatusCode, b)
	}
}

// export fetches GET /v1/events/export?query as c and checks the framing.
func (e *env) export(c *http.Client, query string) ([]byte, []events.Event) {
	e.t.Helper()
	resp, b := e.raw(c, "GET", "/v1/events/export"+query, "", nil)
	if resp.StatusCode != 200 {
		e.t.Fatalf("export%s: %d %s", query, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != coordinator.ContentTypeNDJSON {
		e.t.Fatalf("export Content-Type %q", ct)
	}
	var evs []events.Event
	x := history.NewExportReader(bytes.NewReader(b))
	for {
		ev, _, err := x.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			e.t.Fatalf("export: %v", err)
		}
		if len(evs) > 0 && ev.Seq <= evs[len(evs)-1].Seq {
			e.t.Fatalf("export: sequence %d after %d: not in stream order", ev.Seq, evs[len(evs)-1].Seq)
		}
		evs = append(evs, ev)
	}
	if n := resp.Trailer.Get(coordinator.ExportEventsTrailer); n != strconv.Itoa(len(evs)) {
		e.t.Fatalf("export trailer %s = %q, but %d lines", coordinator.ExportEventsTrailer, n, len(evs))
	}
	return b, evs
}

func (e *env) importFile(c *http.Client, file []byte) (int, coordinator.ImportProblem) {
	e.t.Helper()
	resp, b := e.raw(c, "POST", "/v1/events/import", coordinator.ContentTypeNDJSON, file)
	var p coordinator.ImportProblem
	if err := json.Unmarshal(b, &p); err != nil {
		e.t.Fatalf("import answer %q: %v", b, err)
	}
	return resp.StatusCode, p
}

// bodies is the events of a subject as stored (without sequences).
func (e *env) bodies(subject string) []string {
	e.t.Helper()
	evs, err := e.store.Load(context.Background(), subject, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	out := make([]string, len(evs))
	for i := range evs {
		b, err := events.Marshal(&evs[i])
		if err != nil {
			e.t.Fatal(err)
		}
		out[i] = string(b)
	}
	return out
}

// withoutVersion drops what differs between installations by design: the
// stream sequence of the job's last event.
func withoutVersion(j job.Job) job.Job { j.Version = 0; return j }

// TestExportImportAPI: an installation's export, imported into a fresh
// one, gives the same jobs with the same events (IDs, order, bodies) on
// each subject; importing again imports nothing; only administrators may
// export or import.
func TestExportImportAPI(t *testing.T) {
	a := newEnv(t)
	retried := a.retriedJob()
	cancelled := a.create(`{"display_name":"cancelled","files":[` + goodFile + `]}`)
	if status, m, _ := a.do("POST", "/v1/jobs/"+cancelled+"/cancel", ""); status != 200 {
		t.Fatalf("cancel: %d %v", status, m)
	}
	owned := a.create(`{"display_name":"taken","files":[` + goodFile + `]}`)
	admin := a.as(identity.RoleAdmin, "root")
	if resp, b := a.raw(admin, "POST", "/v1/jobs/"+owned+"/take-ownership", "", nil); resp.StatusCode != 200 {
		t.Fatalf("take-ownership: %d %s", resp.StatusCode, b)
	}
	a.appendAgent("host-a", &events.AgentJoined{Agent: "host-a", Principal: "agent/host-a", Pool: "default", Version: "test", Slots: 2})
	a.appendAgent("host-a", &events.AgentLeft{Agent: "host-a", Reason: "graceful"})
	jobs := []string{retried, cancelled, owned}
	subjects := []string{events.AgentSubject("host-a")}
	for _, id := range jobs {
		subjects = append(subjects, events.JobSubject(id))
	}
	a.settle()

	if resp, b := a.raw(a.client, "GET", "/v1/events/export", "", nil); resp.StatusCode != 403 || !strings.Contains(string(b), "E_ACCESSDENIED") {
		t.Fatalf("export by a user: %d %s", resp.StatusCode, b)
	}
	file, all := a.export(admin, "")
	total := 0
	for _, s := range subjects {
		total += len(a.bodies(s))
	}
	if len(all) != total {
		t.Fatalf("exported %d events, the log has %d", len(all), total)
	}
	// Filters: kinds, and a time.
	if _, evs := a.export(admin, "?kind=agent"); len(evs) != 2 || evs[0].Kind != events.KindAgent {
		t.Fatalf("kind=agent exported %d events", len(evs))
	}
	mid := all[len(all)/2]
	_, later := a.export(admin, "?kind=job,vault&since="+url.QueryEscape(mid.Time.Format(time.RFC3339Nano)))
	for _, ev := range later {
		if ev.Kind != events.KindJob || ev.Time.Before(mid.Time) {
			t.Fatalf("since %s kind=job,vault exported %s %s at %s", mid.Time, ev.Kind, ev.Type, ev.Time)
		}
	}
	if len(later) == 0 || len(later) >= len(all) {
		t.Fatalf("since exported %d of %d events", len(later), len(all))
	}
	if resp, b := a.raw(admin, "GET", "/v1/events/export?kind=jobs", "", nil); resp.StatusCode != 400 {
		t.Fatalf("kind=jobs: %d %s", resp.StatusCode, b)
	}

	b := newEnv(t)
	bAdmin := b.as(identity.RoleAdmin, "root")
	if status, p := b.importFile(b.client, file); status != 403 || p.Code != "E_ACCESSDENIED" {
		t.Fatalf("import by a user: %d %+v", status, p)
	}
	status, p := b.importFile(bAdmin, file)
	if status != 200 || p.ImportResult != (coordinator.ImportResult{Lines: total, Imported: total, Subjects: len(subjects)}) {
		t.Fatalf("import: %d %+v", status, p)
	}
	for _, s := range subjects {
		if diff := cmp.Diff(a.bodies(s), b.bodies(s)); diff != "" {
			t.Fatalf("%s differs after the import (-exported +imported):\n%s", s, diff)
		}
	}
	b.settle()
	for _, id := range jobs {
		if diff := cmp.Diff(withoutVersion(a.getJob(admin, id)), withoutVersion(b.getJob(bAdmin, id))); diff != "" {
			t.Fatalf("job %s differs after the import (-exported +imported):\n%s", id, diff)
		}
	}
	// The owner reads the imported job's history as in the first one.
	_, ha := a.raw(a.client, "GET", "/v1/jobs/"+retried+"/history", "", nil)
	_, hb := b.raw(b.as(identity.RoleUser, "alice"), "GET", "/v1/jobs/"+retried+"/history", "", nil)
	var ra, rb coordinator.HistoryResponse
	if json.Unmarshal(ha, &ra) != nil || json.Unmarshal(hb, &rb) != nil || len(ra.Timeline) == 0 || len(ra.Timeline) != len(rb.Timeline) {
		t.Fatalf("histories:\n%s\n%s", ha, hb)
	}
	for i := range ra.Timeline {
		x, y := ra.Timeline[i], rb.Timeline[i]
		x.Seq, y.Seq = 0, 0
		if diff := cmp.Diff(x, y); diff != "" {
			t.Fatalf("timeline entry %d differs after the import:\n%s", i, diff)
		}
	}

	// Again: nothing new.
	status, p = b.importFile(bAdmin, file)
	if status != 200 || p.ImportResult != (coordinator.ImportResult{Lines: total, Skipped: total, Subjects: len(subjects)}) {
		t.Fatalf("import again: %d %+v", status, p)
	}
	for _, s := range subjects {
		if len(b.bodies(s)) != len(a.bodies(s)) {
			t.Fatalf("importing again changed %s", s)
		}
	}
}

// lines splits an export into its lines.
func lines(file []byte) []string {
	return strings.Split(strings.TrimSuffix(string(file), "\n"), "\n")
}

func joinLines(ls ...string) []byte { return []byte(strings.Join(ls, "\n") + "\n") }

// TestImportRefusals: a line that is not a well-formed event, or whose
// event would break its subject's history, ends the import with a problem
// naming the line; the lines before it are imported and nothing after it,
// and importing the corrected file completes the import.
func TestImportRefusals(t *testing.T) {
	a := newEnv(t)
	retried := a.retriedJob()
	other := a.create(`{"display_name":"other","files":[` + goodFile + `]}`)
	a.settle()
	admin := a.as(identity.RoleAdmin, "root")
	file, all := a.export(admin, "?kind=job")
	ls := lines(file)
	// The lines of each job, by index in ls.
	of := map[string][]int{}
	for i, ev := range all {
		of[ev.AggregateID] = append(of[ev.AggregateID], i)
	}
	if len(of[retried]) < 8 || len(of[other]) < 2 {
		t.Fatalf("the jobs have %d and %d events", len(of[retried]), len(of[other]))
	}

	type want struct {
		status   int
		code     string
		line     int
		imported int
		detail   string
	}
	check := func(t *testing.T, e *env, file []byte, w want) coordinator.ImportProblem {
		t.Helper()
		status, p := e.importFile(e.as(identity.RoleAdmin, "root"), file)
		if status != w.status || p.Code != w.code || p.Line != w.line || p.Imported != w.imported || !strings.Contains(p.Detail, w.detail) {
			t.Fatalf("import: %d %+v\nwant %+v", status, p, w)
		}
		return p
	}

	t.Run("bad line", func(t *testing.T) {
		e := newEnv(t)
		bad := append(append(append([]string(nil), ls[:3]...), `{"seq":7,"subject":"ferry.evt.job.x","id":"nope"}`), ls[3:]...)
		check(t, e, joinLines(bad...), want{400, "RPC_X_BAD_STUB_DATA", 4, 3, "line 4: "})
		n := 0
		for _, id := range []string{retried, other} {
			n += len(e.bodies(events.JobSubject(id)))
		}
		if n != 3 {
			t.Fatalf("%d events stored, want the 3 before the bad line", n)
		}
		p := check(t, e, file, want{200, "", 0, len(ls) - 3, ""})
		if p.Skipped != 3 {
			t.Fatalf("the corrected import skipped %d, want 3", p.Skipped)
		}
		for _, id := range []string{retried, other} {
			if diff := cmp.Diff(a.bodies(events.JobSubject(id)), e.bodies(events.JobSubject(id))); diff != "" {
				t.Fatalf("job %s after the corrected import:\n%s", id, diff)
			}
		}
	})
	t.Run("an unknown kind", func(t *testing.T) {
		e := newEnv(t)
		r := of[retried]
		odd := strings.NewReplacer(`"kind":"job"`, `"kind":"jobs"`, "ferry.evt.job.", "ferry.evt.jobs.").Replace(ls[r[0]])
		check(t, e, joinLines(ls[r[0]], odd), want{400, "RPC_X_BAD_STUB_DATA", 2, 1, `kind "jobs" is not job, agent or vault`})
	})
	t.Run("a line twice", func(t *testing.T) {
		e := newEnv(t)
		r := of[retried]
		check(t, e, joinLines(ls[r[0]], ls[r[1]], ls[r[1]]), want{400, "RPC_X_BAD_STUB_DATA", 3, 2, "appears twice (first on line 2)"})
	})
	t.Run("history without its beginning", func(t *testing.T) {
		e := newEnv(t)
		r := of[retried]
		check(t, e, joinLines(ls[r[1]], ls[r[2]]), want{409, "E_INVALIDARG", 1, 0, "starts with FilesAdded, not JobCreated"})
	})
	t.Run("an event that does not apply", func(t *testing.T) {
		e := newEnv(t)
		r := of[retried]
		ev := all[r[1]]
		bogus, err := events.New(events.KindJob, retried, events.Meta{Time: ev.Time, Actor: "agent/host-a"},
			&events.FileProgressed{FileIndex: 9, BytesTransferred: 1, BytesTotal: 2})
		if err != nil {
			t.Fatal(err)
		}
		evs := []events.Event{bogus}
		if err := events.AssignIDs(evs); err != nil {
			t.Fatal(err)
		}
		bogus = evs[0]
		bogus.Seq = 999
		line, err := history.EncodeLine(&bogus)
		if err != nil {
			t.Fatal(err)
		}
		check(t, e, joinLines(ls[r[0]], ls[r[1]], string(line)), want{400, "RPC_X_BAD_STUB_DATA", 3, 2, "does not apply to job"})
	})
	t.Run("diverged history", func(t *testing.T) {
		e := newEnv(t)
		r := of[retried]
		check(t, e, joinLines(ls[r[0]], ls[r[1]]), want{200, "", 0, 2, ""})
		// The job moves on here: its history is no longer the file's.
		e.settle()
		if resp, b := e.raw(e.as(identity.RoleAdmin, "root"), "PATCH", "/v1/jobs/"+retried, "application/json", []byte(`{"priority":"LOW"}`)); resp.StatusCode != 200 {
			t.Fatalf("patch: %d %s", resp.StatusCode, b)
		}
		check(t, e, file, want{409, "E_INVALIDARG", r[2] + 1, 0, "the histories differ"})
		// A job that has events here, none of which is in the file.
		f := newEnv(t)
		j := f.create(`{"display_name":"here"}`)
		o := of[other]
		mine := strings.ReplaceAll(ls[o[1]], other, j)
		check(t, f, joinLines(mine), want{409, "E_INVALIDARG", 1, 0, "holds none of them"})
	})
	t.Run("another order", func(t *testing.T) {
		e := newEnv(t)
		check(t, e, file, want{200, "", 0, len(ls), ""})
		r := of[retried]
		swapped := joinLines(ls[r[0]], ls[r[2]], ls[r[1]])
		check(t, e, swapped, want{409, "E_INVALIDARG", 3, 0, "in another order"})
	})
	t.Run("content type", func(t *testing.T) {
		resp, b := a.raw(admin, "POST", "/v1/events/import", "application/xml", file)
		if resp.StatusCode != 415 {
			t.Fatalf("application/xml: %d %s", resp.StatusCode, b)
		}
	})
}
