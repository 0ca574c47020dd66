package coordinator_test

import (
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// TestOrphanedJobIsDispatchedAgain: a job whose holder left the agent
// registry and whose dispatch is gone from FERRY_CMDS (acked by mistake,
// lost in a crash) is dispatched again by the reconciler, so that another
// agent takes it over. A job held by an agent that is still in the registry
// is left alone, and so is an orphan whose dispatch is still pending.
func TestOrphanedJobIsDispatchedAgain(t *testing.T) {
	e := newEnvWith(t, false, func(c *coordinator.Config) { c.ReconcileInterval = 50 * time.Millisecond })
	ctx := t.Context()
	cmds, err := e.js.Stream(ctx, dispatch.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	repo := &jobstore.Repo{Store: e.store}
	// pending waits for the dispatch of job id, removes it from FERRY_CMDS
	// (as an agent's ack, or a crash that lost it, would) and returns it.
	pending := func(id string) dispatch.Command {
		t.Helper()
		var (
			c   dispatch.Command
			seq uint64
		)
		waitFor(t, "a dispatch of job "+id, func() bool {
			var ok bool
			c, seq, ok = e.pendingCommand(dispatch.PoolSubject(job.DefaultPool, id))
			return ok
		})
		if err := cmds.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// take plays an agent that leases the job from its dispatch, after
	// which nothing is left in FERRY_CMDS for the job.
	take := func(agentID string) string {
		t.Helper()
		id := e.create(`{"display_name":"held by ` + agentID + `","resume":true,"files":[` + goodFile + `]}`)
		c := pending(id)
		if _, err := repo.Execute(ctx, id, job.Lease{Agent: agentID, DispatchSeq: c.JobSeq}, events.Meta{Actor: "agent/" + agentID}, nil); err != nil {
			t.Fatal(err)
		}
		return id
	}
	e.fakeAgent("alive", job.DefaultPool, time.Hour, 1)
	kept := take("alive")
	orphan := take("ghost")

	// The reconciler dispatches the orphan again, at its current version.
	// A dispatch is de-duplicated by job and version, so it comes once per
	// version: after a change of the job, it comes again. By then a whole
	// reconcile pass has run since both jobs were leased.
	var c dispatch.Command
	for round := range 2 {
		j, err := repo.Load(ctx, orphan)
		if err != nil {
			t.Fatal(err)
		}
		if c = pending(orphan); c.Kind != dispatch.KindTransfer || c.JobSeq != j.Version {
			t.Fatalf("round %d: dispatch %+v, job version %d", round, c, j.Version)
		}
		if round == 0 {
			if code, m, _ := e.do("PATCH", "/v1/jobs/"+orphan, `{"description":"still waiting"}`); code != 200 {
				t.Fatalf("patch: %d %v", code, m)
			}
		}
	}
	if c, _, ok := e.pendingCommand(dispatch.PoolSubject(job.DefaultPool, kept)); ok {
		t.Fatalf("a job held by a live agent was dispatched again: %+v", c)
	}
	// Another agent takes the orphan over from the new dispatch.
	res, err := repo.Execute(ctx, orphan, job.Lease{Agent: "rescuer", DispatchSeq: c.JobSeq}, events.Meta{Actor: "agent/rescuer"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, _ := res.Events[0].Payload()
	if lease := l.(*events.JobLeased); lease.PreviousAgent != "ghost" || lease.Attempt != 2 {
		t.Fatalf("takeover %+v", lease)
	}
}
