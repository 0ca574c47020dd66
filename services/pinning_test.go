package services_test

import (
	"context"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent"
	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// TestJobPinnedToOneAgent: a job created for one agent is dispatched to that
// agent alone. While the agent is offline the job waits QUEUED (and says
// where it runs) although another agent of its pool is idle; once the agent
// starts, it leases and transfers the job. A job for the stack's own agent
// runs there.
func TestJobPinnedToOneAgent(t *testing.T) {
	o := servicestest.NewOrigin(t)
	s := startStackWith(t, stackOptions{caFiles: []string{o.CAFile}, tune: func(c *services.DevConfig) { c.AgentID = "pin-home" }})
	s.origin = o
	ctx := context.Background()
	create := func(name, agentID string) string {
		t.Helper()
		j, err := s.client.Create(ctx, coordinator.CreateRequest{DisplayName: name, Agent: agentID, Resume: true,
			Files: []events.FileSpec{{RemoteURL: o.URL(200 << 10), LocalName: s.dest(name + ".bin")}}})
		if err != nil {
			t.Fatal(err)
		}
		if j.TargetAgent != agentID {
			t.Fatalf("created job targets %q, want %q", j.TargetAgent, agentID)
		}
		return j.ID
	}
	leasedBy := func(id string) []string {
		var who []string
		for _, ev := range s.events(id) {
			if ev.Type != "JobLeased" {
				continue
			}
			p, err := ev.Payload()
			if err != nil {
				t.Fatal(err)
			}
			who = append(who, p.(*events.JobLeased).Agent)
		}
		return who
	}

	away := create("away", "pin-away")
	home := create("home", "pin-home")
	s.until(home, "TRANSFERRED", func(j *job.Job) bool { return j.State == job.Transferred })
	if got := leasedBy(home); len(got) != 1 || got[0] != "pin-home" {
		t.Fatalf("job pinned to pin-home leased by %v", got)
	}
	// The home agent has finished a job created after the pinned one and
	// is idle; the job for the offline agent is still waiting for it.
	if j, err := s.client.Get(ctx, away); err != nil || j.State != job.Queued || j.Agent != "" {
		t.Fatalf("job pinned to an offline agent: state %s agent %q err %v", j.State, j.Agent, err)
	}
	if got := leasedBy(away); len(got) != 0 {
		t.Fatalf("job pinned to an offline agent was leased by %v", got)
	}

	// The agent comes online: it takes the job that waited for it.
	caPEM, err := os.ReadFile(o.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	js := s.dev.NATS().JS
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{ID: "pin-away", Principal: "spiffe://ferry.test/agent/pin-away", Root: s.root,
		AckWait: 2 * time.Second, CheckpointInterval: 20 * time.Millisecond, Client: download.ClientOptions{RootCAs: roots}},
		testLogger(t), js, store)
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(actx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("second agent: %v", err)
		}
	})
	s.until(away, "TRANSFERRED", func(j *job.Job) bool { return j.State == job.Transferred })
	if got := leasedBy(away); len(got) != 1 || got[0] != "pin-away" {
		t.Fatalf("job pinned to pin-away leased by %v", got)
	}

	// A bad agent ID is refused at creation and creates nothing.
	_, err = s.client.Create(ctx, coordinator.CreateRequest{DisplayName: "bad", Agent: "no such/agent"})
	if apiCode(err) != "E_INVALIDARG" {
		t.Fatalf("bad agent id: %v", err)
	}
}
