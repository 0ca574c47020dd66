package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// history writes a random but valid history of several interleaved jobs
// into an in-memory store and returns its events in stream order.
func history(t *testing.T, rng *rand.Rand, jobs, steps int) (*events.MemoryStore, []events.Event) {
	t.Helper()
	store := events.NewMemoryStore()
	repo := &jobstore.Repo{Store: store}
	ctx := context.Background()
	var all []events.Event
	views := map[string]*job.Job{} // each job as the writer knows it
	try := func(id string, c job.Command) {
		if views[id] == nil {
			views[id] = &job.Job{}
		}
		res, err := repo.Execute(ctx, id, c, events.Meta{Actor: "alice"}, views[id])
		var je *job.Error
		if err != nil && !errors.As(err, &je) {
			t.Fatal(err)
		}
		all = append(all, res.Events...)
	}
	flagSets := [][]string{{"JOB_MODIFICATION"}, {"JOB_TRANSFERRED", "JOB_ERROR"}, {"FILE_TRANSFERRED", "DISABLE"}, nil}
	const agent = "agent/a"
	for i := range jobs {
		id := fmt.Sprintf("j%d", i)
		try(id, job.Create{JobID: id, Owner: "alice", Files: []events.FileSpec{{RemoteURL: "https://o.test/" + id, LocalName: "/d/" + id}},
			Options: &job.OptionsPatch{Notify: notifyTo("https://hooks.test/"+id, "JOB_MODIFICATION")}})
	}
	for range steps {
		id := fmt.Sprintf("j%d", rng.IntN(jobs))
		cur := views[id].Clone()
		fi := max(0, min(cur.CurrentFile, len(cur.Files)-1))
		if rng.IntN(2) == 0 {
			// Move the job along as the coordinator and an agent would.
			switch cur.State {
			case job.Suspended, job.Errored, job.TransientError:
				try(id, job.Resume{})
			case job.Queued:
				if cur.Agent == "" {
					try(id, job.Lease{Agent: agent, DispatchSeq: cur.Version})
				} else {
					try(id, job.StartConnecting{Agent: agent, FileIndex: fi})
				}
			case job.Connecting:
				try(id, job.StartTransferring{Agent: agent, FileIndex: fi, BytesTotal: 100})
			case job.Transferring:
				switch rng.IntN(4) {
				case 0:
					try(id, job.Checkpoint{Agent: agent, FileIndex: fi, BytesTransferred: int64(rng.IntN(100)), BytesTotal: 100})
				case 1:
					try(id, job.Fail{Agent: agent, Transient: rng.IntN(3) != 0, Error: events.ErrorInfo{Code: "E_FAIL", Description: "boom"}})
				default:
					try(id, job.FileDone{Agent: agent, FileIndex: fi, Bytes: 100, TempName: "t"})
				}
			case job.Transferred:
				switch {
				case cur.PendingComplete:
					try(id, job.CompleteDone{Agent: agent, Files: []int{0}})
				case rng.IntN(8) == 0:
					try(id, job.Complete{})
				default:
					try(id, job.AddFiles{Files: []events.FileSpec{{RemoteURL: "https://o.test/more", LocalName: fmt.Sprintf("/d/%s/%d", id, len(cur.Files))}}})
					try(id, job.Resume{})
				}
			}
			continue
		}
		switch rng.IntN(12) {
		case 0:
			name := fmt.Sprintf("n%d", rng.IntN(100))
			try(id, job.Modify{DisplayName: &name})
		case 1:
			flags := flagSets[rng.IntN(len(flagSets))]
			n := events.NotifySettings{URL: fmt.Sprintf("https://hooks.test/%s/%d", id, rng.IntN(3)), Flags: flags}
			try(id, job.Modify{Options: &job.OptionsPatch{Notify: &n}})
		case 2:
			try(id, job.AddFiles{Files: []events.FileSpec{{RemoteURL: "https://o.test/more", LocalName: fmt.Sprintf("/d/%s/%d", id, len(cur.Files))}}})
		case 3:
			try(id, job.Resume{})
		case 4:
			try(id, job.Suspend{})
		case 5:
			try(id, job.Lease{Agent: agent, DispatchSeq: cur.Version})
		case 6:
			try(id, job.StartConnecting{Agent: agent, FileIndex: fi})
		case 7:
			try(id, job.StartTransferring{Agent: agent, FileIndex: fi, BytesTotal: 100})
		case 8:
			try(id, job.Checkpoint{Agent: agent, FileIndex: fi, BytesTransferred: int64(rng.IntN(100)), BytesTotal: 100})
		case 9:
			try(id, job.FileDone{Agent: agent, FileIndex: fi, Bytes: 100, SHA256: "", TempName: "t"})
		case 10:
			try(id, job.Fail{Agent: agent, Transient: rng.IntN(2) == 0, Error: events.ErrorInfo{Code: "E_FAIL", Description: "boom"}})
		case 11:
			if rng.IntN(8) == 0 {
				try(id, job.Cancel{})
			}
		}
	}
	slices.SortFunc(all, func(a, b events.Event) int { return int(a.Seq) - int(b.Seq) })
	return store, all
}

// references replays every job once and returns, by sequence, the JSON of
// the job's state right after that event.
func references(t *testing.T, all []events.Event) map[uint64][]byte {
	t.Helper()
	states := map[string]*job.Job{}
	out := make(map[uint64][]byte, len(all))
	for i := range all {
		ev := all[i]
		j := states[ev.AggregateID]
		if j == nil {
			j = &job.Job{}
			states[ev.AggregateID] = j
		}
		if err := job.Evolve(j, &ev); err != nil {
			t.Fatal(err)
		}
		out[ev.Seq], _ = json.Marshal(j)
	}
	return out
}

// TestTrackerMatchesReplay: whatever the consumer does (deliveries that go
// to another process, redeliveries of old events, restarts, a tiny cache),
// the tracker's state at each event is the state a full replay gives.
func TestTrackerMatchesReplay(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			store, all := history(t, rng, 2+rng.IntN(4), 400)
			ref := references(t, all)
			ctx := context.Background()
			tr := newTracker(store, []int{1, 2, 3, 1000}[rng.IntN(4)])
			var cons uint64
			var old []events.Event // delivered once, may come back
			check := func(ev events.Event, first, need bool) {
				t.Helper()
				cons++
				tr.delivered(cons)
				j, ok, err := tr.stateAt(ctx, &ev, first, need)
				if err != nil {
					t.Fatalf("seq %d: %v", ev.Seq, err)
				}
				if need && !ok {
					t.Fatalf("seq %d: state needed but not given", ev.Seq)
				}
				if !ok {
					return
				}
				got, _ := json.Marshal(j)
				if want := ref[ev.Seq]; string(got) != string(want) {
					t.Fatalf("seq %d (%s, first %v): state\n%s\nwant\n%s", ev.Seq, ev.Type, first, got, want)
				}
			}
			for _, ev := range all {
				switch r := rng.IntN(100); {
				case r < 10:
					cons++ // delivered to another process
				case r < 13:
					tr = newTracker(store, tr.max) // a restart
					check(ev, true, true)
				default:
					check(ev, true, rng.IntN(5) != 0)
				}
				old = append(old, ev)
				if rng.IntN(5) == 0 {
					check(old[rng.IntN(len(old))], false, true)
				}
			}
		})
	}
}

// TestTrackerReadsNothingInOrder: following the log in order from the
// start, the tracker never reads the store: each event costs one Evolve.
// After a restart it reads each job once.
func TestTrackerReadsNothingInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	store, all := history(t, rng, 5, 300)
	ctx := context.Background()
	tr := newTracker(store, 100)
	for i, ev := range all {
		tr.delivered(uint64(i + 1))
		if _, _, err := tr.stateAt(ctx, &ev, true, true); err != nil {
			t.Fatal(err)
		}
	}
	if tr.loads != 0 {
		t.Errorf("%d store reads following the log in order", tr.loads)
	}

	tr = newTracker(store, 100)
	for i, ev := range all[len(all)/2:] {
		tr.delivered(uint64(1000 + i))
		if _, _, err := tr.stateAt(ctx, &ev, true, true); err != nil {
			t.Fatal(err)
		}
	}
	if tr.loads > 5 {
		t.Errorf("%d store reads after a restart, want at most one per job (5)", tr.loads)
	}
}
