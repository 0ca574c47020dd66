package coordinator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// sseMsg is one message of a server-sent event stream.
type sseMsg struct {
	id, event, data string
}

// ev decodes the message's envelope with its sequence.
func (m sseMsg) ev(t *testing.T) events.Event {
	t.Helper()
	ev, err := events.Unmarshal([]byte(m.data))
	if err != nil {
		t.Fatalf("data of %s %s: %v", m.event, m.id, err)
	}
	if ev.Seq, err = strconv.ParseUint(m.id, 10, 64); err != nil {
		t.Fatalf("id %q: %v", m.id, err)
	}
	if ev.Type != m.event {
		t.Fatalf("event name %q for an event of type %s", m.event, ev.Type)
	}
	return ev
}

// parseSSE sends every message of r on out until r ends; comments are
// skipped.
func parseSSE(r io.Reader, out chan<- sseMsg) {
	defer close(out)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var m sseMsg
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if m != (sseMsg{}) {
				out <- m
			}
			m = sseMsg{}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			m.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			m.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			m.data = line[6:]
		}
	}
}

// stream is an open GET /v1/events.
type stream struct {
	t      *testing.T
	msgs   chan sseMsg
	cancel context.CancelFunc
}

// openEvents starts GET /v1/events?query as client c, with Last-Event-ID
// lastID when not empty, and fails the test unless it answers 200 with an
// event stream.
func (e *env) openEvents(c *http.Client, query, lastID string) *stream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/v1/events?"+query, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		e.t.Fatalf("GET /v1/events?%s: %d %s %s", query, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	s := &stream{t: e.t, msgs: make(chan sseMsg, 1000), cancel: func() { cancel(); resp.Body.Close() }}
	e.t.Cleanup(s.cancel)
	go parseSSE(resp.Body, s.msgs)
	return s
}

// next returns the next message.
func (s *stream) next() sseMsg {
	s.t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			s.t.Fatal("the stream ended")
		}
		return m
	case <-time.After(10 * time.Second):
		s.t.Fatal("no event within 10s")
	}
	panic("unreachable")
}

// all reads a stream without follow to its end: the events, then the
// "end" message, then the end of the response.
func (s *stream) all() []events.Event {
	s.t.Helper()
	var out []events.Event
	for {
		m := s.next()
		if m.event == "end" {
			var end struct {
				EndSeq *uint64 `json:"end_seq"`
			}
			if err := json.Unmarshal([]byte(m.data), &end); err != nil || end.EndSeq == nil {
				s.t.Fatalf("end event data %q: %v", m.data, err)
			}
			select {
			case extra, ok := <-s.msgs:
				if ok {
					s.t.Fatalf("message after the end: %+v", extra)
				}
			case <-time.After(10 * time.Second):
				s.t.Fatal("the response did not end after the end event")
			}
			return out
		}
		out = append(out, m.ev(s.t))
	}
}

// readAll is GET /v1/events?query without follow, as c.
func (e *env) readAll(c *http.Client, query string) []events.Event {
	e.t.Helper()
	return e.openEvents(c, query, "").all()
}

// appendAs appends one event of aggregate (kind, id) at time at.
func (e *env) appendAs(kind, id string, at time.Time, actor string, p events.Payload) uint64 {
	e.t.Helper()
	ctx := context.Background()
	ev, err := events.New(kind, id, events.Meta{Time: at, Actor: actor}, p)
	if err != nil {
		e.t.Fatal(err)
	}
	evs := []events.Event{ev}
	if err := events.AssignIDs(evs); err != nil {
		e.t.Fatal(err)
	}
	subject := events.Subject(kind, id)
	last, err := e.store.LastSeq(ctx, subject)
	if err != nil {
		e.t.Fatal(err)
	}
	seq, err := e.store.Append(ctx, subject, last, evs)
	if err != nil {
		e.t.Fatal(err)
	}
	return seq
}

func types(evs []events.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Type
	}
	return out
}

func aggregates(evs []events.Event) map[string]int {
	out := map[string]int{}
	for _, ev := range evs {
		out[ev.Kind+"/"+ev.AggregateID]++
	}
	return out
}

func checkOrdered(t *testing.T, evs []events.Event) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq <= evs[i-1].Seq {
			t.Fatalf("events out of order: %d after %d", evs[i].Seq, evs[i-1].Seq)
		}
	}
}

const sha1Hex = "3f786850e387550fdab836ed7e6dc881de23001b"

// logFixture fills the log: alice's jobs a (created, files, queued, leased
// by host-a) and b (created), the sessions of agents host-a and host-b, a
// key released to host-a, and an agent event dated 2020 (as an import of
// old history would store it).
type logFixture struct {
	a, b                     string
	leased, oldJoin, release uint64
}

func (e *env) fillLog() logFixture {
	e.t.Helper()
	var f logFixture
	f.a = e.create(`{"display_name":"a","files":[` + goodFile + `]}`)
	if st, m, _ := e.do("POST", "/v1/jobs/"+f.a+"/resume", ""); st != 200 {
		e.t.Fatalf("resume: %d %v", st, m)
	}
	last, err := e.store.LastSeq(context.Background(), events.JobSubject(f.a))
	if err != nil {
		e.t.Fatal(err)
	}
	f.leased = e.appendAs(events.KindJob, f.a, time.Now(), "spiffe://ferry.test/agent/host-a",
		&events.JobLeased{Agent: "host-a", Attempt: 1, DispatchSeq: last})
	f.b = e.create(`{"display_name":"b"}`)
	e.appendAs(events.KindAgent, "host-a", time.Now(), "spiffe://ferry.test/agent/host-a",
		&events.AgentJoined{Agent: "host-a", Principal: "spiffe://ferry.test/agent/host-a", Pool: "default", Slots: 2})
	e.appendAs(events.KindAgent, "host-b", time.Now(), "spiffe://ferry.test/agent/host-b",
		&events.AgentJoined{Agent: "host-b", Principal: "spiffe://ferry.test/agent/host-b", Pool: "default", Slots: 2})
	f.release = e.appendAs(events.KindVault, sha1Hex, time.Now(), "spiffe://ferry.test/service/certvault",
		&events.KeyReleased{Location: "CURRENT_USER", Store: "MY", SHA1: sha1Hex, Owner: "spiffe://ferry.test/user/alice",
			Agent: "spiffe://ferry.test/agent/host-a", Job: f.a})
	f.oldJoin = e.appendAs(events.KindAgent, "host-old", time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC), "spiffe://ferry.test/agent/host-old",
		&events.AgentJoined{Agent: "host-old", Pool: "default", Slots: 1})
	return f
}

// TestEventLogFilters: the whole log in order, and each filter alone and
// combined, for an administrator.
func TestEventLogFilters(t *testing.T) {
	e := newEnv(t)
	f := e.fillLog()
	admin := e.as(identity.RoleAdmin, "root")

	all := e.readAll(admin, "")
	checkOrdered(t, all)
	if len(all) != 9 || all[0].Type != events.TypeJobCreated || all[len(all)-1].Seq != f.oldJoin {
		t.Fatalf("whole log: %v", types(all))
	}
	stored, err := e.store.Load(context.Background(), events.JobSubject(f.a), 0)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		query string
		want  func(events.Event) bool
	}{
		{"job=" + f.a, func(ev events.Event) bool { return ev.AggregateID == f.a }},
		{"type=JobCreated", func(ev events.Event) bool { return ev.Type == "JobCreated" }},
		{"type=JobCreated,AgentJoined", func(ev events.Event) bool { return ev.Type == "JobCreated" || ev.Type == "AgentJoined" }},
		{"type=JobCreated&type=AgentJoined", func(ev events.Event) bool { return ev.Type == "JobCreated" || ev.Type == "AgentJoined" }},
		{"job=" + f.a + "&type=JobQueued", func(ev events.Event) bool { return ev.AggregateID == f.a && ev.Type == "JobQueued" }},
		{"from_seq=" + strconv.FormatUint(f.leased, 10), func(ev events.Event) bool { return ev.Seq >= f.leased }},
		{"from_seq=0", func(events.Event) bool { return true }},
		// since selects by the events' own time: the agent event dated 2020
		// was stored last, yet it is before since.
		{"since=2021-01-01T00:00:00Z", func(ev events.Event) bool { return ev.Seq != f.oldJoin }},
		{"since=2019-12-31T23:00:00-01:00", func(events.Event) bool { return true }},
		{"since=" + url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339Nano)), func(events.Event) bool { return false }},
		// agent: its own subject, and events whose data or actor names it
		// (the lease, the key released to its principal).
		{"agent=host-a", func(ev events.Event) bool {
			return ev.Seq == f.leased || ev.Seq == f.release || ev.AggregateID == "host-a"
		}},
		{"agent=host-a&job=" + f.a, func(ev events.Event) bool { return ev.Seq == f.leased }},
		{"agent=nobody", func(events.Event) bool { return false }},
		{"follow=false", func(events.Event) bool { return true }},
	} {
		t.Run(tc.query, func(t *testing.T) {
			var want []uint64
			for _, ev := range all {
				if tc.want(ev) {
					want = append(want, ev.Seq)
				}
			}
			got := e.readAll(admin, tc.query)
			var seqs []uint64
			for _, ev := range got {
				seqs = append(seqs, ev.Seq)
			}
			if !slices.Equal(seqs, want) {
				t.Fatalf("got %v (%v), want %v", seqs, types(got), want)
			}
		})
	}
	// The job filter gives exactly what is stored on the job's subject,
	// envelopes intact.
	got := e.readAll(admin, "job="+f.a)
	if len(got) != len(stored) {
		t.Fatalf("job filter: %d events, %d stored", len(got), len(stored))
	}
	for i := range got {
		if got[i].ID != stored[i].ID || got[i].Seq != stored[i].Seq || string(got[i].Data) != string(stored[i].Data) {
			t.Fatalf("event %d differs from the stored one:\n%+v\n%+v", i, got[i], stored[i])
		}
	}
}

// TestEventLogFollowAndResume: with follow the stream goes on with new
// events; Last-Event-ID resumes right after the event it names (and wins
// over from_seq), without and with follow.
func TestEventLogFollowAndResume(t *testing.T) {
	e := newEnv(t)
	a := e.create(`{"display_name":"a","files":[` + goodFile + `]}`) // JobCreated, FilesAdded
	admin := e.as(identity.RoleAdmin, "root")

	s := e.openEvents(admin, "follow=true&job="+a, "")
	first, second := s.next(), s.next()
	if first.event != "JobCreated" || second.event != "FilesAdded" {
		t.Fatalf("follow: %s, %s", first.event, second.event)
	}
	e.do("POST", "/v1/jobs/"+a+"/resume", "")
	if m := s.next(); m.event != "JobQueued" {
		t.Fatalf("followed event %s, want JobQueued", m.event)
	}
	s.cancel()

	// Reconnect after the first event, as an EventSource would: the same
	// URL (here with from_seq=1) and Last-Event-ID.
	s = e.openEvents(admin, "follow=true&from_seq=1&job="+a, first.id)
	if m := s.next(); m.id != second.id {
		t.Fatalf("resumed at %s %s, want %s", m.id, m.event, second.id)
	}
	if m := s.next(); m.event != "JobQueued" {
		t.Fatalf("then %s", m.event)
	}
	e.do("POST", "/v1/jobs/"+a+"/suspend", "")
	if m := s.next(); m.event != "JobSuspended" {
		t.Fatalf("then %s, want the new JobSuspended", m.event)
	}
	s.cancel()

	// Without follow, Last-Event-ID at the last event: nothing but the end.
	last, _ := e.store.LastSeq(context.Background(), events.JobSubject(a))
	if evs := e.openEvents(admin, "job="+a, strconv.FormatUint(last, 10)).all(); len(evs) != 0 {
		t.Fatalf("after the last event: %v", types(evs))
	}
	if evs := e.openEvents(admin, "job="+a, second.id).all(); len(evs) != 2 || evs[0].Type != "JobQueued" {
		t.Fatalf("after FilesAdded: %v", types(evs))
	}
	// A stream without follow stops at the end the log had when it was
	// asked for, even when the last events are not its own.
	e.appendAs(events.KindAgent, "host-z", time.Now(), "", &events.AgentJoined{Agent: "host-z"})
	if evs := e.readAll(admin, "job="+a); len(evs) != 4 {
		t.Fatalf("job stream: %v", types(evs))
	}
}

// TestEventLogUsersAndAdmins: users see the events of the jobs they own and
// nothing else; administrators see everything; after an administrator
// takes ownership of a job, its previous owner sees none of its events,
// also in a stream that is following.
func TestEventLogUsersAndAdmins(t *testing.T) {
	e := newEnv(t)
	f := e.fillLog() // alice's jobs a and b, agent and vault events
	bob := e.as(identity.RoleUser, "bob")
	admin := e.as(identity.RoleAdmin, "root")
	_, m, _ := e.doAs(bob, "POST", "/v1/jobs", `{"display_name":"bob's"}`)
	c := m["id"].(string)

	onlyJobs := func(who string, evs []events.Event, jobs ...string) {
		t.Helper()
		got := aggregates(evs)
		for _, j := range jobs {
			if got["job/"+j] == 0 {
				t.Fatalf("%s does not see job %s: %v", who, j, got)
			}
			delete(got, "job/"+j)
		}
		if len(got) > 0 {
			t.Fatalf("%s sees %v", who, got)
		}
	}
	onlyJobs("alice", e.readAll(e.client, ""), f.a, f.b)
	onlyJobs("bob", e.readAll(bob, ""), c)
	// Filters do not widen what a user sees.
	onlyJobs("alice with agent=host-a", e.readAll(e.client, "agent=host-a"), f.a)
	if evs := e.readAll(e.client, "type=AgentJoined,KeyReleased"); len(evs) != 0 {
		t.Fatalf("alice sees agent or vault events: %v", types(evs))
	}
	all := e.readAll(admin, "")
	if got := aggregates(all); len(got) != 7 || got["agent/host-b"] != 1 || got["vault/"+sha1Hex] != 1 || got["job/"+c] != 1 {
		t.Fatalf("admin sees %v", got)
	}
	// Another user's job, by name: refused as GET /v1/jobs/{id} is.
	if st, m, _ := e.doAs(bob, "GET", "/v1/events?job="+f.a, ""); st != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("bob asking for alice's job: %d %v", st, m)
	}

	// Alice follows everything of hers; an administrator takes job b over.
	s := e.openEvents(e.client, "follow=true", "")
	for range len(e.readAll(e.client, "")) {
		s.next()
	}
	if st, m, _ := e.doAs(admin, "POST", "/v1/jobs/"+f.b+"/take-ownership", ""); st != 200 {
		t.Fatalf("take-ownership: %d %v", st, m)
	}
	e.do("POST", "/v1/jobs/"+f.a+"/suspend", "")
	// The next thing alice sees is her own job's change, not b's.
	if ev := s.next().ev(t); ev.AggregateID != f.a || ev.Type != events.TypeJobSuspended {
		t.Fatalf("alice's followed stream went on with %s of %s", ev.Type, ev.AggregateID)
	}
	// Job b is no longer hers: none of its history, and no access by name.
	onlyJobs("alice after the takeover", e.readAll(e.client, ""), f.a)
	if st, m, _ := e.do("GET", "/v1/events?job="+f.b, ""); st != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("alice asking for b after the takeover: %d %v", st, m)
	}
	if got := aggregates(e.readAll(admin, "job="+f.b)); got["job/"+f.b] < 2 {
		t.Fatalf("admin sees b's history as %v", got)
	}
	// Agents and services have no business here.
	if st, m, _ := e.doAs(e.as(identity.RoleAgent, "host-a"), "GET", "/v1/events", ""); st != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("an agent reading the log: %d %v", st, m)
	}
}

// TestEventLogBadInput: every bad parameter is a 400 problem with
// E_INVALIDARG that names it; an unknown job is BG_E_NOT_FOUND.
func TestEventLogBadInput(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, query, lastID, detail string
	}{
		{"unknown parameter", "jobs=x", "", `unknown parameter "jobs"`},
		{"unknown type", "type=JobCreated,JobExploded", "", `unknown event type "JobExploded"`},
		{"empty type", "type=", "", `unknown event type ""`},
		{"bad since", "since=yesterday", "", `since "yesterday" is not an RFC 3339 time`},
		{"since without zone", "since=2026-11-22T08:00:00", "", "is not an RFC 3339 time"},
		{"negative from_seq", "from_seq=-1", "", `from_seq "-1" is not a stream sequence number`},
		{"since and from_seq", "since=2026-11-22T08:00:00Z&from_seq=3", "", "since and from_seq exclude each other"},
		{"bad follow", "follow=maybe", "", `follow "maybe" is not true or false`},
		{"bad job", "job=a.b", "", `job "a.b" is not a job ID`},
		{"bad agent", "agent=a*", "", `agent "a*" is not an agent ID`},
		{"repeated job", "job=a&job=b", "", `parameter "job" given 2 times`},
		{"bad Last-Event-ID", "", "x", `Last-Event-ID "x" is not a stream sequence number`},
		{"several problems at once", "follow=2&colour=red", "", `unknown parameter "colour"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", e.srv.URL+"/v1/events?"+tc.query, nil)
			if tc.lastID != "" {
				req.Header.Set("Last-Event-ID", tc.lastID)
			}
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var p map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 400 || p["code"] != "E_INVALIDARG" || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %s %v", resp.StatusCode, resp.Header.Get("Content-Type"), p)
			}
			if c, _ := job.LookupCode("E_INVALIDARG"); p["hresult"] != c.HResultString() {
				t.Fatalf("hresult %v", p["hresult"])
			}
			if detail, _ := p["detail"].(string); !strings.Contains(detail, tc.detail) {
				t.Fatalf("detail %q lacks %q", detail, tc.detail)
			}
		})
	}
	if st, m, _ := e.do("GET", "/v1/events?follow=2&colour=red", ""); !strings.Contains(fmt.Sprint(m["detail"]), `follow "2"`) {
		t.Fatalf("not every problem reported: %d %v", st, m)
	}
	if st, m, _ := e.do("GET", "/v1/events?job=01a20101-0000-7000-8000-000000000000", ""); st != 404 || m["code"] != "BG_E_NOT_FOUND" {
		t.Fatalf("unknown job: %d %v", st, m)
	}
}
