package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/rs/zerolog"
)

// TestFencedOnSharedRoot: on a shared root, an agent that lost a job leaves
// its staged file to the new holder while the job runs; once the job is
// over (here completed by the new holder), what the old holder still wrote
// after the end is deleted.
func TestFencedOnSharedRoot(t *testing.T) {
	ctx := context.Background()
	repo := &jobstore.Repo{Store: events.NewMemoryStore()}
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	a := &Agent{cfg: Config{ID: "a1", Root: dir, SharedRoot: true}, repo: repo, root: root, log: zerolog.Nop()}
	const id = "job1"
	temp := TempName("f.bin", id, 0)
	run := func(c job.Command, actor string) job.Job {
		t.Helper()
		res, err := repo.Execute(ctx, id, c, events.Meta{Actor: actor}, nil)
		if err != nil {
			t.Fatalf("%T: %v", c, err)
		}
		return res.Job
	}
	stage := func() {
		t.Helper()
		for _, n := range []string{temp, temp + ".state"} {
			if err := root.WriteFile(n, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	staged := func() bool {
		_, err := root.Stat(temp)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		_, serr := root.Stat(temp + ".state")
		return err == nil || serr == nil
	}

	run(job.Create{JobID: id, Owner: "user/u", Files: []events.FileSpec{{RemoteURL: "https://origin.test/f", LocalName: filepath.Join(dir, "f.bin")}}}, "user/u")
	run(job.Resume{}, "user/u")
	run(job.Lease{Agent: "a1"}, "agent/a1")
	j := run(job.Lease{Agent: "a2"}, "agent/a2")
	stage()
	a.fenced(ctx, &j, zerolog.Nop())
	if !staged() {
		t.Fatal("the staged file was deleted while the new holder runs the job")
	}

	run(job.StartConnecting{Agent: "a2", FileIndex: 0}, "agent/a2")
	run(job.FileDone{Agent: "a2", FileIndex: 0, Bytes: 1, SHA256: strings.Repeat("0", 64), TempName: temp}, "agent/a2")
	run(job.Complete{}, "user/u")
	j = run(job.CompleteDone{Agent: "a2", Files: []int{0}}, "agent/a2")
	if j.State != job.Acknowledged {
		t.Fatalf("job is %s", j.State)
	}
	stage() // written by a1 after the job ended
	a.fenced(ctx, &j, zerolog.Nop())
	if staged() {
		t.Fatal("the old holder left staged files of a job that is over")
	}
}
