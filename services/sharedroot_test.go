package services_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// TestFencedAgentAndSharedRoot: an agent whose job is taken over while it
// transfers stops at once. On its own disk it deletes the temporary file it
// staged (the new holder starts again elsewhere); with a shared root it
// leaves the file to the new holder, who resumes from it.
func TestFencedAgentAndSharedRoot(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "own disk", true: "shared root"}[shared], func(t *testing.T) {
			o := servicestest.NewOrigin(t)
			s := startStackWith(t, stackOptions{caFiles: []string{o.CAFile}, tune: func(c *services.DevConfig) {
				c.AgentID, c.SharedRoot = "fence-a", shared
			}})
			s.origin = o
			const size = 4 << 20
			g := o.GateNext(size, 1<<20)
			t.Cleanup(g.Open)
			id := s.create(events.FileSpec{RemoteURL: o.URL(size), LocalName: s.dest("big.bin")})
			cur := s.until(id, "a checkpoint", func(j *job.Job) bool {
				return j.State == job.Transferring && j.Files[0].BytesTransferred > 0
			})
			temp := filepath.Join(s.root, agent.TempName("big.bin", id, 0))
			if _, err := os.Stat(temp); err != nil {
				t.Fatalf("staged file: %v", err)
			}

			// Another agent takes the job over (as after a lost lease).
			ctx := context.Background()
			store, err := events.NewJetStreamStore(ctx, s.dev.NATS().JS)
			if err != nil {
				t.Fatal(err)
			}
			repo := &jobstore.Repo{Store: store}
			if _, err := repo.Execute(ctx, id, job.Lease{Agent: "fence-b", DispatchSeq: cur.Version}, events.Meta{Actor: "agent/fence-b"}, nil); err != nil {
				t.Fatal(err)
			}
			// fence-a lets go of the job: its slot is free once it has
			// stopped and dealt with the staged file.
			deadline := time.Now().Add(30 * time.Second)
			for running(s.dev.Agent().Scheduler().Snapshot()) > 0 {
				if time.Now().After(deadline) {
					t.Fatal("fence-a did not stop the job it lost")
				}
				time.Sleep(10 * time.Millisecond) // polling a condition
			}
			_, err = os.Stat(temp)
			switch {
			case shared && err != nil:
				t.Fatalf("with a shared root the staged file must stay for the new holder: %v", err)
			case !shared && !errors.Is(err, fs.ErrNotExist):
				t.Fatalf("on its own disk the fenced agent must delete its staged file: %v", err)
			}
			// The fenced agent wrote nothing after the takeover.
			evs := s.events(id)
			took := false
			for _, ev := range evs {
				if took && strings.HasSuffix(ev.Actor, "/agent/fence-a") {
					t.Fatalf("event %s (seq %d) by the fenced agent after the takeover", ev.Type, ev.Seq)
				}
				took = took || ev.Type == "JobLeased" && ev.Actor == "agent/fence-b"
			}
			if !took {
				t.Fatal("the takeover is not in the job's events")
			}
		})
	}
}

func running(snap agent.Snapshot) int {
	n := 0
	for _, c := range snap.Classes {
		n += len(c.Running)
	}
	return n
}
