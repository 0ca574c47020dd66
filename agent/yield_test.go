package agent

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// TestCancelWhileYielded: a job preempted by a higher priority waits for
// its next turn; cancelled meanwhile, it leaves the scheduler and its
// dispatch is settled — and the agent keeps running (a failed Yield used to
// leave the transfer a nil ticket to release: the agent process crashed).
func TestCancelWhileYielded(t *testing.T) {
	ctx := context.Background()
	_, _, js := eventstest.StartServer(t)
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := dispatch.EnsureStream(ctx, js, dispatch.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	origin := origintest.New(t, origintest.Options{})
	for _, p := range []string{"/a.bin", "/b.bin"} {
		origin.SetFile(p, origintest.File{Content: origintest.Content{Seed: 5, Size: 1 << 20}, ETag: `"e"`})
		origin.Inject(origintest.Fault{Path: p, Stall: true, StallAfter: 100_000, StallForever: true})
	}
	root := t.TempDir()
	ag, err := New(Config{ID: "y1", Root: root, Slots: 1, MaxForeground: 1, AckWait: 5 * time.Second,
		CheckpointInterval: 50 * time.Millisecond, Client: download.ClientOptions{RootCAs: origin.CAPool}},
		zerolog.Nop(), js, store)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- ag.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-runErr:
		case <-time.After(30 * time.Second):
			t.Error("the agent did not stop")
		}
	})

	repo := &jobstore.Repo{Store: store}
	user := events.Meta{Actor: "user/u"}
	submit := func(id string, p job.Priority, path string) {
		t.Helper()
		if _, err := repo.Execute(ctx, id, job.Create{JobID: id, Owner: "user/u", Priority: p, Files: []events.FileSpec{
			{RemoteURL: origin.URL + path, LocalName: filepath.Join(root, id+".bin")}}}, user, nil); err != nil {
			t.Fatal(err)
		}
		res, err := repo.Execute(ctx, id, job.Resume{}, user, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := dispatch.Publish(ctx, js, dispatch.PoolSubject(job.DefaultPool, id),
			dispatch.Command{Kind: dispatch.KindTransfer, JobID: id, JobSeq: res.Job.Version}); err != nil {
			t.Fatal(err)
		}
	}
	until := func(id, what string, cond func(j job.Job) bool) {
		t.Helper()
		eventually(t, what, func() bool {
			select {
			case err := <-runErr:
				t.Fatalf("the agent stopped: %v", err)
			default:
			}
			j, err := repo.Load(ctx, id)
			return err == nil && cond(j)
		})
	}

	submit("low", job.Normal, "/a.bin")
	until("low", "the NORMAL job to transfer", func(j job.Job) bool { return j.State == job.Transferring })
	submit("high", job.High, "/b.bin")
	until("low", "the NORMAL job to yield to the HIGH one", func(j job.Job) bool { return j.State == job.Queued && j.Agent == "" })
	until("high", "the HIGH job to transfer", func(j job.Job) bool { return j.State == job.Transferring })
	waiting := func() bool { return slices.Contains(ag.Scheduler().Snapshot().Class(job.Normal).Waiting, "low") }
	eventually(t, "the yielded job to wait for its turn", waiting)

	if _, err := repo.Execute(ctx, "low", job.Cancel{}, user, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the cancelled job to leave the scheduler", func() bool { return !waiting() })
	// Its dispatch is settled (the job needs none any more); the agent
	// still runs the other job.
	eventually(t, "the cancelled job's dispatch to be acked", func() bool {
		info, err := cmds.Info(ctx, jetstream.WithSubjectFilter(dispatch.PoolSubject(job.DefaultPool, "low")))
		return err == nil && len(info.State.Subjects) == 0
	})
	select {
	case err := <-runErr:
		t.Fatalf("the agent stopped: %v", err)
	default:
	}
	if run := ag.Scheduler().Snapshot().Class(job.High).Running; !slices.Equal(run, []string{"high"}) {
		t.Fatalf("HIGH running %q, want the high job", run)
	}
}
