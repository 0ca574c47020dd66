package jobstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

func stores(t *testing.T) map[string]func(t *testing.T) events.Store {
	return map[string]func(t *testing.T) events.Store{
		"memory": func(t *testing.T) events.Store { return events.NewMemoryStore() },
		"jetstream": func(t *testing.T) events.Store {
			_, _, js := eventstest.StartServer(t)
			ctx := context.Background()
			if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
				t.Fatal(err)
			}
			s, err := events.NewJetStreamStore(ctx, js)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
}

var file = events.FileSpec{RemoteURL: "https://origin.test/f", LocalName: "/data/f"}

func create(t *testing.T, r *jobstore.Repo, id string, files ...events.FileSpec) {
	t.Helper()
	if _, err := r.Execute(context.Background(), id, job.Create{JobID: id, Owner: "alice", Files: files}, events.Meta{Actor: "alice"}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestRacingWritersOneWins: Cancel and Complete race on the same job; each
// time exactly one wins and the loser, after reloading, is refused with
// BG_E_INVALID_STATE. No event is lost or written twice.
func TestRacingWritersOneWins(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			r := &jobstore.Repo{Store: newStore(t)}
			ctx := context.Background()
			for round := range 20 {
				id := fmt.Sprintf("race%d", round)
				create(t, r, id, file)
				cmds := []job.Command{job.Cancel{}, job.Complete{}}
				errs := make([]error, len(cmds))
				var wg sync.WaitGroup
				start := make(chan struct{})
				for i, c := range cmds {
					wg.Go(func() {
						<-start
						_, errs[i] = r.Execute(ctx, id, c, events.Meta{Actor: "alice"}, nil)
					})
				}
				close(start)
				wg.Wait()
				wins := 0
				for _, err := range errs {
					switch {
					case err == nil:
						wins++
					case job.CodeOf(err) != job.BG_E_INVALID_STATE:
						t.Fatalf("round %d: loser got %v, want BG_E_INVALID_STATE", round, err)
					}
				}
				if wins != 1 {
					t.Fatalf("round %d: %d winners (%v)", round, wins, errs)
				}
				evs, err := r.Store.Load(ctx, events.JobSubject(id), 0)
				if err != nil {
					t.Fatal(err)
				}
				// JobCreated, FilesAdded, then one winner's events: JobCancelled,
				// or JobCompleteRequested+JobAcknowledged.
				last := evs[len(evs)-1].Type
				if (last == events.TypeJobCancelled && len(evs) != 3) || (last == events.TypeJobAcknowledged && len(evs) != 4) {
					t.Fatalf("round %d: events %v", round, typesOf(evs))
				}
			}
		})
	}
}

// TestRacingWritersAllLand: concurrent AddFiles on one job conflict and
// re-decide until every one of them landed exactly once.
func TestRacingWritersAllLand(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			r := &jobstore.Repo{Store: newStore(t), MaxAttempts: 100}
			ctx := context.Background()
			create(t, r, "many")
			const writers, each = 6, 8
			var wg sync.WaitGroup
			errc := make(chan error, writers*each)
			for w := range writers {
				wg.Go(func() {
					for i := range each {
						f := events.FileSpec{RemoteURL: fmt.Sprintf("https://o.test/%d/%d", w, i), LocalName: fmt.Sprintf("/d/%d-%d", w, i)}
						if _, err := r.Execute(ctx, "many", job.AddFiles{Files: []events.FileSpec{f}}, events.Meta{}, nil); err != nil {
							errc <- err
						}
					}
				})
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				t.Fatal(err)
			}
			j, err := r.Load(ctx, "many")
			if err != nil {
				t.Fatal(err)
			}
			if len(j.Files) != writers*each {
				t.Fatalf("%d files, want %d", len(j.Files), writers*each)
			}
			seen := map[string]bool{}
			for _, f := range j.Files {
				if seen[f.RemoteURL] {
					t.Fatalf("file %s added twice", f.RemoteURL)
				}
				seen[f.RemoteURL] = true
			}
		})
	}
}

// TestFencedAgentCannotWrite: an agent that lost its lease to another gets
// its next write refused, even when it writes on its old view of the job.
func TestFencedAgentCannotWrite(t *testing.T) {
	r := &jobstore.Repo{Store: events.NewMemoryStore()}
	ctx := context.Background()
	create(t, r, "j", file)
	if _, err := r.Execute(ctx, "j", job.Resume{}, events.Meta{}, nil); err != nil {
		t.Fatal(err)
	}
	var a job.Job
	if _, err := r.Execute(ctx, "j", job.Lease{Agent: "a"}, events.Meta{}, &a); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Execute(ctx, "j", job.StartConnecting{Agent: "a"}, events.Meta{}, &a); err != nil {
		t.Fatal(err)
	}
	// Agent a pauses; its dispatch is redelivered to b, which takes over.
	if _, err := r.Execute(ctx, "j", job.Lease{Agent: "b"}, events.Meta{}, nil); err != nil {
		t.Fatal(err)
	}
	stale := a.Version
	_, err := r.Execute(ctx, "j", job.StartTransferring{Agent: "a", BytesTotal: 10}, events.Meta{}, &a)
	if job.CodeOf(err) != job.BG_E_INVALID_STATE || a.Agent != "b" || a.Version == stale {
		t.Fatalf("fenced write: err %v, view %+v", err, a)
	}
	evs, _ := r.Store.Load(ctx, events.JobSubject("j"), 0)
	for _, ev := range evs {
		if ev.Type == events.TypeJobTransferring {
			t.Fatal("the fenced agent's event was stored")
		}
	}
}

func TestLoadUnknownJob(t *testing.T) {
	r := &jobstore.Repo{Store: events.NewMemoryStore()}
	_, err := r.Load(context.Background(), "nope")
	var je *job.Error
	if !errors.As(err, &je) || je.Code != job.BG_E_NOT_FOUND {
		t.Fatalf("got %v", err)
	}
}

func typesOf(evs []events.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}
