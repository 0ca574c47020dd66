package agent

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// fakeMsg is a dispatch delivery that records how it was settled.
type fakeMsg struct {
	jetstream.Msg // not implemented: a call panics
	data          []byte
	settled       []string
}

func (m *fakeMsg) Data() []byte                    { return m.data }
func (m *fakeMsg) Subject() string                 { return "ferry.cmd.pool.default.x" }
func (m *fakeMsg) Ack() error                      { m.settled = append(m.settled, "ack"); return nil }
func (m *fakeMsg) DoubleAck(context.Context) error { m.settled = append(m.settled, "ack"); return nil }
func (m *fakeMsg) Nak() error                      { m.settled = append(m.settled, "nak"); return nil }
func (m *fakeMsg) NakWithDelay(d time.Duration) error {
	m.settled = append(m.settled, "nak")
	return nil
}
func (m *fakeMsg) Term() error { m.settled = append(m.settled, "term"); return nil }

// TestSettle: an agent that stopped working on a dispatch without finishing
// the job acks it only if the job no longer needs it. JetStream settles by
// stream sequence, not by delivery, so an ack from a delivery that went
// stale (the agent was paused past AckWait and the dispatch was delivered
// again) would remove the message the job's current holder runs on — and
// if that holder then died, the job would never be delivered again.
func TestSettle(t *testing.T) {
	ctx := context.Background()
	store := events.NewMemoryStore()
	repo := &jobstore.Repo{Store: store}
	a := &Agent{cfg: Config{ID: "a1"}, repo: repo, log: zerolog.Nop()}
	meta := func(actor string) events.Meta { return events.Meta{Actor: actor} }
	var n int
	newJob := func(t *testing.T, steps ...func(id string) (job.Command, string)) string {
		t.Helper()
		n++
		id := "job" + strconv.Itoa(n)
		if _, err := repo.Execute(ctx, id, job.Create{JobID: id, Owner: "user/u", Files: []events.FileSpec{
			{RemoteURL: "https://origin.test/f", LocalName: "/srv/f"}}}, meta("user/u"), nil); err != nil {
			t.Fatal(err)
		}
		for _, step := range append([]func(string) (job.Command, string){resume}, steps...) {
			c, actor := step(id)
			if _, err := repo.Execute(ctx, id, c, meta(actor), nil); err != nil {
				t.Fatalf("%T: %v", c, err)
			}
		}
		return id
	}
	settle := func(t *testing.T, id string) []string {
		t.Helper()
		body, _ := json.Marshal(dispatch.Command{Kind: dispatch.KindTransfer, JobID: id, JobSeq: 1})
		m := &fakeMsg{data: body}
		a.settle(m, zerolog.Nop())
		return m.settled
	}
	leased := func(agent string) func(string) (job.Command, string) {
		return func(string) (job.Command, string) { return job.Lease{Agent: agent}, "agent/" + agent }
	}
	transferring := func(agent string) func(string) (job.Command, string) {
		return func(string) (job.Command, string) {
			return job.StartConnecting{Agent: agent, FileIndex: 0}, "agent/" + agent
		}
	}
	done := func(agent string) func(string) (job.Command, string) {
		return func(string) (job.Command, string) {
			return job.FileDone{Agent: agent, FileIndex: 0, Bytes: 1, SHA256: strings.Repeat("0", 64), TempName: ".f.part"}, "agent/" + agent
		}
	}
	user := func(c job.Command) func(string) (job.Command, string) {
		return func(string) (job.Command, string) { return c, "user/u" }
	}
	for _, tc := range []struct {
		name  string
		steps []func(string) (job.Command, string)
		acked bool
	}{
		{"queued, its dispatch held by another agent", nil, false},
		{"taken over by another agent", []func(string) (job.Command, string){leased("a1"), leased("a2"), transferring("a2")}, false},
		{"leased again by this agent (a newer delivery)", []func(string) (job.Command, string){leased("a1"), transferring("a1")}, false},
		{"transferred by another agent", []func(string) (job.Command, string){leased("a2"), transferring("a2"), done("a2")}, true},
		{"completion pending", []func(string) (job.Command, string){leased("a2"), transferring("a2"), done("a2"), user(job.Complete{})}, true},
		{"suspended", []func(string) (job.Command, string){leased("a1"), user(job.Suspend{})}, true},
		{"cancelled", []func(string) (job.Command, string){user(job.Cancel{})}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := settle(t, newJob(t, tc.steps...))
			if acked := len(got) == 1 && got[0] == "ack"; acked != tc.acked || (!tc.acked && len(got) > 0) {
				t.Fatalf("settled %q, want acked=%v", got, tc.acked)
			}
		})
	}
	t.Run("unknown job", func(t *testing.T) {
		if got := settle(t, "nosuchjob"); len(got) != 1 || got[0] != "ack" {
			t.Fatalf("settled %q, want an ack", got)
		}
	})
}

func resume(string) (job.Command, string) { return job.Resume{}, "user/u" }
