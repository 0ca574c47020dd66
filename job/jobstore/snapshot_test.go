package jobstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// snapshotAt is a snapshot source holding one stored state per job, kept as
// JSON like the coordinator's read model keeps it.
type snapshotAt struct {
	mu    sync.Mutex
	state map[string][]byte
	seq   map[string]uint64
	err   error
	calls int
}

func newSnapshotAt() *snapshotAt {
	return &snapshotAt{state: map[string][]byte{}, seq: map[string]uint64{}}
}

func (s *snapshotAt) put(t testing.TB, j job.Job, seq uint64) {
	t.Helper()
	b, err := json.Marshal(&j)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state[j.ID], s.seq[j.ID] = b, seq
}

func (s *snapshotAt) Snapshot(_ context.Context, id string) (job.Job, uint64, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return job.Job{}, 0, false, s.err
	}
	b, ok := s.state[id]
	if !ok {
		return job.Job{}, 0, false, nil
	}
	var j job.Job
	if err := json.Unmarshal(b, &j); err != nil {
		return job.Job{}, 0, false, err
	}
	return j, s.seq[id], true, nil
}

// countingStore records what Load was asked and answered.
type countingStore struct {
	events.Store
	mu     sync.Mutex
	afters []uint64
	loaded int
}

func (s *countingStore) Load(ctx context.Context, subject string, after uint64) ([]events.Event, error) {
	evs, err := s.Store.Load(ctx, subject, after)
	s.mu.Lock()
	s.afters = append(s.afters, after)
	s.loaded += len(evs)
	s.mu.Unlock()
	return evs, err
}

func (s *countingStore) reset() {
	s.mu.Lock()
	s.afters, s.loaded = nil, 0
	s.mu.Unlock()
}

// randomHistories runs random commands (most of them plausible for the
// job's state, some refused) on jobs whose events interleave in store, and
// returns the job IDs.
func randomHistories(t testing.TB, store events.Store, seed uint64, jobs, steps int) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	r := &jobstore.Repo{Store: store, Now: func() time.Time { return now }}
	ctx := context.Background()
	ids := make([]string, jobs)
	for i := range ids {
		ids[i] = fmt.Sprintf("rnd%d-%d", seed, i)
		files := make([]events.FileSpec, 1+rng.IntN(3))
		for k := range files {
			files[k] = events.FileSpec{RemoteURL: fmt.Sprintf("https://o.test/%d/%d", i, k), LocalName: fmt.Sprintf("/d/%d/%d", i, k)}
			if rng.IntN(3) == 0 {
				files[k].Ranges = []events.FileRange{{Offset: 0, Length: 100}, {Offset: 1000, Length: -1}}
			}
		}
		d := time.Duration(5+rng.IntN(60)) * time.Second
		c := job.Create{JobID: ids[i], Owner: "alice", Files: files, MinimumRetryDelay: &d}
		if _, err := r.Execute(ctx, ids[i], c, events.Meta{Actor: "alice", Time: now}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for range steps {
		id := ids[rng.IntN(len(ids))]
		j, err := r.Load(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		now = now.Add(randomDelay(rng))
		c := randomCommand(rng, &j)
		_, err = r.Execute(ctx, id, c, events.Meta{Actor: "someone", Time: now}, nil)
		var je *job.Error
		if err != nil && !errors.As(err, &je) {
			t.Fatalf("%s on %s: %v", job.CommandName(c), id, err)
		}
	}
	return ids
}

func randomDelay(rng *rand.Rand) time.Duration {
	switch n := rng.IntN(100); {
	case n < 70:
		return time.Duration(rng.IntN(3000)) * time.Millisecond
	case n < 95:
		return time.Duration(rng.IntN(600)) * time.Second
	case n < 99:
		return time.Duration(rng.IntN(48)) * time.Hour
	default:
		return 91 * 24 * time.Hour // inactivity
	}
}

var agents = []string{"host-a", "host-b", "host-c"}

// randomCommand picks a command for j: mostly what its state calls for
// (as the agents and users of a busy system would send), sometimes anything
// (refused or not).
func randomCommand(rng *rand.Rand, j *job.Job) job.Command {
	agent := j.Agent
	if agent == "" || rng.IntN(20) == 0 {
		agent = agents[rng.IntN(len(agents))]
	}
	file := j.CurrentFile
	if rng.IntN(20) == 0 && len(j.Files) > 0 {
		file = rng.IntN(len(j.Files))
	}
	var size, done int64 = 1 << 20, 0
	if file < len(j.Files) {
		if f := j.Files[file]; f.BytesTotal > 0 {
			size = f.BytesTotal
		}
		done = j.Files[file].BytesTransferred
	}
	n := rng.IntN(100)
	if n >= 85 {
		return anyCommand(rng, j, agent, file, size, done)
	}
	switch {
	case j.PendingComplete:
		if n < 60 {
			var files []int
			for i := range j.Files {
				if j.Files[i].Transferred {
					files = append(files, i)
				}
			}
			return job.CompleteDone{Agent: j.FilesAgent, Files: files}
		}
		return job.CompleteFailed{Agent: j.FilesAgent, Renamed: []int{0}[:rng.IntN(2)],
			Error: events.ErrorInfo{Context: job.ContextLocalFile, Code: "ERROR_DISK_FULL", HResult: "0x80070070"}}
	case j.State == job.Cancelled:
		return job.FilesDeleted{Agent: j.FilesAgent, Undeleted: []string{"x.part"}[:rng.IntN(2)]}
	case j.State == job.Suspended || j.State == job.Errored:
		if n < 60 {
			return job.Resume{}
		}
		return userCommand(rng, j)
	case j.State == job.Queued:
		if n < 75 {
			return job.Lease{Agent: agent, DispatchSeq: j.Version}
		}
		return userCommand(rng, j)
	case j.State == job.TransientError:
		if n < 50 {
			return job.Lease{Agent: agent, DispatchSeq: j.Version}
		}
		if n < 65 {
			return job.Timeout{}
		}
		return job.Resume{}
	case j.State == job.Connecting:
		if n < 65 {
			return job.StartTransferring{Agent: agent, FileIndex: file, BytesTotal: size, Offset: done}
		}
		if n < 80 {
			return fail(rng, agent, file)
		}
		return job.Yield{Agent: agent}
	case j.State == job.Transferring:
		switch {
		case file < len(j.Files) && j.Files[file].Transferred:
			return job.StartConnecting{Agent: agent, FileIndex: j.NextFile()}
		case n < 35:
			return job.Checkpoint{Agent: agent, FileIndex: file, BytesTransferred: min(size, done+1+rng.Int64N(size/2+1)), BytesTotal: size}
		case n < 65:
			return job.FileDone{Agent: agent, FileIndex: file, Bytes: size, SHA256: fmt.Sprintf("%064x", rng.Uint64()),
				TempName: fmt.Sprintf("t/%s-%d.part", j.ID, file), ETag: `"e"`, ResponseHeaders: map[string]string{"Content-Type": "x/y"}}
		case n < 72:
			return job.StartTransferring{Agent: agent, FileIndex: file, BytesTotal: size, Restarted: "no-range-support"}
		case n < 78:
			return fail(rng, agent, file)
		case n < 81:
			return job.Yield{Agent: agent}
		case n < 83:
			return job.Suspend{}
		}
		return job.Lease{Agent: agents[rng.IntN(len(agents))], DispatchSeq: j.Version} // a takeover
	case j.State == job.Transferred:
		if n < 60 {
			return job.Complete{}
		}
		return userCommand(rng, j)
	}
	return anyCommand(rng, j, agent, file, size, done)
}

func fail(rng *rand.Rand, agent string, file int) job.Command {
	return job.Fail{Agent: agent, Transient: rng.IntN(5) > 0, RetryAfter: time.Duration(rng.IntN(120)) * time.Second,
		Error: events.ErrorInfo{Context: job.ContextRemoteFile, Code: "ERROR_WINHTTP_TIMEOUT", HResult: "0x80072EE2", FileIndex: file}}
}

// userCommand is what an owner or administrator might do at any time.
func userCommand(rng *rand.Rand, j *job.Job) job.Command {
	switch rng.IntN(10) {
	case 0, 1, 2:
		p := []job.Priority{job.Foreground, job.High, job.Normal, job.Low}[rng.IntN(4)]
		name := fmt.Sprintf("name %d", rng.IntN(5))
		d := time.Duration(5+rng.IntN(100)) * time.Second
		return job.Modify{Priority: &p, DisplayName: &name, MinimumRetryDelay: &d}
	case 3, 4:
		return job.SetClientCertificate{Location: 0, LocationName: "CURRENT_USER", Store: "MY",
			SHA1: fmt.Sprintf("%040x", rng.IntN(3)), By: job.CertByID, CallerPrincipal: j.Owner}
	case 5:
		return job.RemoveClientCertificate{CallerPrincipal: j.Owner}
	case 6:
		return job.TakeOwnership{NewOwner: []string{"alice", "bob"}[rng.IntN(2)]}
	case 7:
		return job.AddFiles{Files: []events.FileSpec{{RemoteURL: "https://o.test/more", LocalName: fmt.Sprintf("/d/more-%d", rng.IntN(1000))}}}
	case 8:
		return job.Suspend{}
	}
	return job.Timeout{}
}

// anyCommand is any command at all, the rare final ones included.
func anyCommand(rng *rand.Rand, j *job.Job, agent string, file int, size, done int64) job.Command {
	switch rng.IntN(14) {
	case 0:
		return job.Resume{}
	case 1:
		return job.Suspend{}
	case 2:
		return job.Lease{Agent: agent, DispatchSeq: j.Version}
	case 3:
		return job.StartConnecting{Agent: agent, FileIndex: file}
	case 4:
		return job.StartTransferring{Agent: agent, FileIndex: file, BytesTotal: size, Offset: done}
	case 5:
		return job.Checkpoint{Agent: agent, FileIndex: file, BytesTransferred: done + 1, BytesTotal: size}
	case 6:
		return fail(rng, agent, file)
	case 7:
		return job.Yield{Agent: agent}
	case 8:
		if rng.IntN(4) == 0 {
			return job.Cancel{}
		}
	case 9:
		if rng.IntN(4) == 0 {
			return job.Complete{}
		}
	case 10:
		return job.Timeout{}
	}
	return userCommand(rng, j)
}

// TestSnapshotPlusTailIsReplay: for random histories, the state loaded from
// a snapshot taken at any of a job's sequences (stored as JSON, as the read
// model stores it) plus the events after it is the state a full replay
// gives; Load reads only the events from the snapshot's sequence on.
func TestSnapshotPlusTailIsReplay(t *testing.T) {
	for name, newStore := range stores(t) {
		t.Run(name, func(t *testing.T) {
			jobs, steps := 30, 3000
			if name == "jetstream" || testing.Short() {
				jobs, steps = 6, 250
			}
			store := &countingStore{Store: newStore(t)}
			ids := randomHistories(t, store, 1, jobs, steps)
			snaps := newSnapshotAt()
			var unusable []error
			full := &jobstore.Repo{Store: store}
			fromSnap := &jobstore.Repo{Store: store, Snapshots: snaps, SnapshotUnusable: func(_ string, err error) { unusable = append(unusable, err) }}
			ctx := context.Background()
			checked := 0
			types := map[string]bool{}
			for _, id := range ids {
				evs, err := store.Load(ctx, events.JobSubject(id), 0)
				if err != nil {
					t.Fatal(err)
				}
				want, err := full.Load(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				var j job.Job
				for k := range evs {
					types[evs[k].Type] = true
					if err := job.Evolve(&j, &evs[k]); err != nil {
						t.Fatal(err)
					}
					snaps.put(t, j, evs[k].Seq)
					store.reset()
					got, err := fromSnap.Load(ctx, id)
					if err != nil {
						t.Fatal(err)
					}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Fatalf("%s: snapshot at event %d (seq %d) + tail != replay of %d events (-replay +snapshot):\n%s", id, k+1, evs[k].Seq, len(evs), diff)
					}
					if !slices.Equal(store.afters, []uint64{evs[k].Seq - 1}) || store.loaded != len(evs)-k {
						t.Fatalf("%s: snapshot at seq %d: Load after %v read %d events, want after %d and %d", id, evs[k].Seq, store.afters, store.loaded, evs[k].Seq-1, len(evs)-k)
					}
					checked++
				}
			}
			if len(unusable) > 0 {
				t.Fatalf("usable snapshots refused: %v", unusable)
			}
			t.Logf("%d jobs, %d snapshots checked, event types: %d", len(ids), checked, len(types))
			if len(types) < 15 {
				t.Errorf("the random histories used only %d event types: %v", len(types), types)
			}
		})
	}
}

// TestExecuteFromLaggingSnapshots: commands run on a Repo whose snapshots lag
// the log by random amounts see the same job as a full replay, and decide
// the same.
func TestExecuteFromLaggingSnapshots(t *testing.T) {
	store := events.NewMemoryStore()
	ids := randomHistories(t, store, 2, 8, 300)
	snaps := newSnapshotAt()
	rng := rand.New(rand.NewPCG(3, 4))
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	full := &jobstore.Repo{Store: store, Now: func() time.Time { return now }}
	fromSnap := &jobstore.Repo{Store: store, Snapshots: snaps, Now: func() time.Time { return now },
		SnapshotUnusable: func(id string, err error) { t.Errorf("%s: %v", id, err) }}
	ctx := context.Background()
	for range 400 {
		id := ids[rng.IntN(len(ids))]
		evs, err := store.Load(ctx, events.JobSubject(id), 0)
		if err != nil {
			t.Fatal(err)
		}
		k := rng.IntN(len(evs)) + 1 // a snapshot of the first k events
		snap, err := job.Replay(evs[:k])
		if err != nil {
			t.Fatal(err)
		}
		snaps.put(t, snap, evs[k-1].Seq)
		want, err := full.Load(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		now = now.Add(randomDelay(rng))
		c := randomCommand(rng, &want)
		wantEvs, wantErr := job.Decide(&want, c, now)
		res, err := fromSnap.Execute(ctx, id, c, events.Meta{Time: now}, nil)
		if job.CodeOf(err) != job.CodeOf(wantErr) || len(res.Events) != len(wantEvs) {
			t.Fatalf("%s on %s: got %d events, %v; a full replay decides %d events, %v", job.CommandName(c), id, len(res.Events), err, len(wantEvs), wantErr)
		}
		for i := range res.Events {
			if res.Events[i].Type != wantEvs[i].EventType() {
				t.Fatalf("%s: event %d is %s, want %s", job.CommandName(c), i, res.Events[i].Type, wantEvs[i].EventType())
			}
		}
	}
}

// TestUnusableSnapshotsFallBack: a snapshot that does not fit the log is
// never used; Load replays the whole job and says why.
func TestUnusableSnapshotsFallBack(t *testing.T) {
	store := events.NewMemoryStore()
	r := &jobstore.Repo{Store: store}
	ctx := context.Background()
	create(t, r, "j", file)
	create(t, r, "other", file)
	for _, c := range []job.Command{job.Resume{}, job.Lease{Agent: "a"}, job.StartConnecting{Agent: "a"}} {
		if _, err := r.Execute(ctx, "j", c, events.Meta{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	want, err := r.Load(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := store.Load(ctx, events.JobSubject("j"), 0)
	otherSeq, _ := store.LastSeq(ctx, events.JobSubject("other"))
	early, _ := job.Replay(evs[:2])
	early.Version = evs[1].Seq
	ahead := want.Clone()
	ahead.Version += 100
	ahead.State = job.Transferring // what a newer log would say
	mismatch := early.Clone()
	mismatch.Version++
	wrongID := early.Clone()
	wrongID.ID = "other"
	onOther := early.Clone()
	onOther.Version = otherSeq

	for _, c := range []struct {
		name     string
		snap     job.Job
		seq      uint64
		err      error
		unusable bool
	}{
		{"ahead of the log", ahead, ahead.Version, nil, true},
		{"sequence of another job", onOther, otherSeq, nil, true},
		{"version is not the sequence", mismatch, evs[1].Seq, nil, true},
		{"state of another job", wrongID, evs[1].Seq, nil, true},
		{"sequence 0", job.Job{ID: "j"}, 0, nil, true},
		{"source failed", early, evs[1].Seq, errors.New("kv: timeout"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			snaps := newSnapshotAt()
			b, _ := json.Marshal(&c.snap)
			snaps.state["j"], snaps.seq["j"], snaps.err = b, c.seq, c.err
			var reasons []error
			rs := &jobstore.Repo{Store: store, Snapshots: snaps, SnapshotUnusable: func(id string, err error) {
				if id != "j" {
					t.Errorf("unusable snapshot of %s", id)
				}
				reasons = append(reasons, err)
			}}
			got, err := rs.Load(ctx, "j")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("(-replay +got):\n%s", diff)
			}
			if len(reasons) != 1 || !errors.Is(reasons[0], jobstore.ErrSnapshotUnusable) || (c.err != nil && !errors.Is(reasons[0], c.err)) {
				t.Fatalf("reasons %v", reasons)
			}
			t.Log(reasons[0])
		})
	}

	// No snapshot is no problem, and says nothing.
	rs := &jobstore.Repo{Store: store, Snapshots: newSnapshotAt(), SnapshotUnusable: func(id string, err error) { t.Errorf("%s: %v", id, err) }}
	if got, err := rs.Load(ctx, "j"); err != nil || !cmp.Equal(want, got) {
		t.Fatalf("no snapshot: %v\n%s", err, cmp.Diff(want, got))
	}
	if _, err := rs.Load(ctx, "nope"); job.CodeOf(err) != job.BG_E_NOT_FOUND {
		t.Fatalf("unknown job: %v", err)
	}
}

// sharedSnapshot hands out the same state every time, slices and all, as an
// in-memory cache would.
type sharedSnapshot struct{ j *job.Job }

func (s sharedSnapshot) Snapshot(context.Context, string) (job.Job, uint64, bool, error) {
	return *s.j, s.j.Version, true, nil
}

// TestSnapshotNotModified: Load applies the tail to a copy of the snapshot.
func TestSnapshotNotModified(t *testing.T) {
	store := events.NewMemoryStore()
	r := &jobstore.Repo{Store: store}
	ctx := context.Background()
	create(t, r, "j", file)
	snap, err := r.Load(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	before := snap.Clone()
	for _, c := range []job.Command{job.Resume{}, job.Lease{Agent: "a"}, job.StartConnecting{Agent: "a"},
		job.StartTransferring{Agent: "a", BytesTotal: 10}, job.FileDone{Agent: "a", Bytes: 10, SHA256: "x", TempName: "t"}} {
		if _, err := r.Execute(ctx, "j", c, events.Meta{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	rs := &jobstore.Repo{Store: store, Snapshots: sharedSnapshot{&snap}}
	got, err := rs.Load(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != job.Transferred || !got.Files[0].Transferred {
		t.Fatalf("loaded %+v", got)
	}
	if diff := cmp.Diff(before, snap); diff != "" {
		t.Fatalf("the snapshot source's state changed (-before +after):\n%s", diff)
	}
}
