package services_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// oneSlotStack is a stack whose agent runs one background job at a time.
func oneSlotStack(t *testing.T) *stack {
	t.Helper()
	o := servicestest.NewOrigin(t)
	s := startStackWith(t, stackOptions{caFiles: []string{o.CAFile}, tune: func(c *services.DevConfig) {
		c.Slots, c.TimeSlice = 1, time.Hour
	}})
	s.origin = o
	return s
}

func (s *stack) createPrio(name string, p job.Priority, f events.FileSpec) string {
	s.t.Helper()
	j, err := s.client.Create(context.Background(), coordinator.CreateRequest{DisplayName: name, Priority: string(p), Files: []events.FileSpec{f}, Resume: true})
	if err != nil {
		s.t.Fatal(err)
	}
	return j.ID
}

// TestHigherPriorityPreemptsLower: on an agent with one background slot, a
// HIGH job arriving while a LOW job transfers takes the slot; the LOW job
// goes back to QUEUED ("preempted"), waits, and then resumes from its
// checkpoint with a Range request. Both files are exact.
func TestHigherPriorityPreemptsLower(t *testing.T) {
	s := oneSlotStack(t)
	const big, small = 8 << 20, 1 << 20
	gate := s.origin.GateNext(big, 3<<20)
	t.Cleanup(gate.Open)
	low := s.createPrio("low", job.Low, events.FileSpec{RemoteURL: s.origin.URL(big), LocalName: s.dest("low.bin")})
	waitGate(t, gate)
	s.until(low, "a checkpoint of the LOW job", func(j *job.Job) bool { return len(j.Files) > 0 && j.Files[0].BytesTransferred > 0 })

	high := s.createPrio("high", job.High, events.FileSpec{RemoteURL: s.origin.URL(small), LocalName: s.dest("high.bin")})
	hj := s.until(high, "HIGH transferred", state(job.Transferred))
	lj := s.until(low, "LOW transferred", state(job.Transferred))
	gate.Open()

	// The LOW job yielded before the HIGH one finished, and finished after it.
	var preemptedAt uint64
	var offsets []int64
	evs := s.events(low)
	for _, ev := range evs {
		p, _ := ev.Payload()
		switch e := p.(type) {
		case *events.JobQueued:
			if e.Reason == job.QueuedPreempted {
				preemptedAt = ev.Seq
			}
		case *events.JobTransferring:
			offsets = append(offsets, e.Offset)
		}
	}
	if preemptedAt == 0 || preemptedAt > hj.Version {
		t.Fatalf("LOW job preempted at seq %d, HIGH transferred at %d", preemptedAt, hj.Version)
	}
	if lj.Version < hj.Version {
		t.Fatalf("LOW finished (seq %d) before HIGH (seq %d)", lj.Version, hj.Version)
	}
	if len(offsets) != 2 || offsets[1] == 0 {
		t.Fatalf("LOW transfer offsets %v: want a resume from its checkpoint", offsets)
	}
	if lj.FilesAgent != hj.FilesAgent || lj.Attempt < 2 {
		t.Fatalf("LOW job: files on %q (attempt %d)", lj.FilesAgent, lj.Attempt)
	}
	for id, size := range map[string]int64{low: big, high: small} {
		s.action(id, "complete")
		j := s.until(id, "ACKNOWLEDGED", state(job.Acknowledged))
		if got := servicestest.FileSum(t, j.Files[0].LocalName); got != servicestest.Sum(size) {
			t.Fatalf("%s: file differs", j.DisplayName)
		}
	}
}

// TestPriorityOrderOnOneAgent: while the agent's only background slot is
// busy, jobs of every class queue up; once it frees, they run strictly by
// class — HIGH, then NORMAL, then LOW — and FOREGROUND jobs never wait for
// the slot.
func TestPriorityOrderOnOneAgent(t *testing.T) {
	s := oneSlotStack(t)
	const blockSize = 4 << 20
	gate := s.origin.GateNext(blockSize, 1<<20)
	t.Cleanup(gate.Open)
	blocker := s.createPrio("blocker", job.High, events.FileSpec{RemoteURL: s.origin.URL(blockSize), LocalName: s.dest("blocker.bin")})
	waitGate(t, gate)

	type queued struct {
		id string
		p  job.Priority
	}
	var jobs []queued
	for i, p := range []job.Priority{job.Low, job.Normal, job.Low, job.Normal, job.High} {
		size := int64(64<<10 + i) // distinct files
		id := s.createPrio(string(p), p, events.FileSpec{RemoteURL: s.origin.URL(size), LocalName: s.dest(string(p) + "-" + string(rune('a'+i)) + ".bin")})
		jobs = append(jobs, queued{id, p})
	}
	// The agent holds them all (QUEUED, waiting for the slot).
	s.waitAgentWaiting(len(jobs))
	fg := s.createPrio("foreground", job.Foreground, events.FileSpec{RemoteURL: s.origin.URL(32 << 10), LocalName: s.dest("fg.bin")})
	s.until(fg, "FOREGROUND transferred while the slot is busy", state(job.Transferred))
	if j, _ := s.client.Get(context.Background(), blocker); j.State != job.Transferring && j.State != job.Connecting {
		t.Fatalf("the blocker is %s: the foreground job must not take the background slot", j.State)
	}

	gate.Open() // the blocker's connection is cut: it fails over to a retry
	s.action(blocker, "suspend")

	type done struct {
		p   job.Priority
		seq uint64
	}
	var order []done
	for _, q := range jobs {
		j := s.until(q.id, "TRANSFERRED", state(job.Transferred))
		order = append(order, done{q.p, j.Version})
	}
	sort.Slice(order, func(a, b int) bool { return order[a].seq < order[b].seq })
	for i := 1; i < len(order); i++ {
		if order[i].p.Rank() < order[i-1].p.Rank() {
			t.Fatalf("completion order by class: %v", order)
		}
	}
}

// waitAgentWaiting waits until the agent's scheduler holds n waiting jobs.
func (s *stack) waitAgentWaiting(n int) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		snap := s.dev.Agent().Scheduler().Snapshot()
		w := 0
		for _, c := range snap.Classes {
			w += len(c.Waiting)
		}
		if w >= n {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the agent holds %d waiting jobs, want %d: %+v", w, n, snap)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not timing
	}
}

// events returns every event of a job, with sequences.
func (s *stack) events(id string) []events.Event {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j, err := s.client.Get(ctx, id)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []events.Event
	err = s.client.Events(ctx, id, 0, func(ev events.Event) error {
		out = append(out, ev)
		if ev.Seq >= j.Version {
			return services.ErrStop
		}
		return nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

func waitGate(t *testing.T, g *servicestest.Gate) {
	t.Helper()
	select {
	case <-g.Reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the origin's gate was never reached")
	}
}

// TestPriorityRaisedWhileWaiting: a job waiting on the agent for the slot
// is raised from LOW to HIGH; the agent learns it from the job's events
// (the waiting job writes nothing) and the job preempts the NORMAL one.
func TestPriorityRaisedWhileWaiting(t *testing.T) {
	s := oneSlotStack(t)
	const big = 4 << 20
	gate := s.origin.GateNext(big, 1<<20)
	t.Cleanup(gate.Open)
	normal := s.createPrio("normal", job.Normal, events.FileSpec{RemoteURL: s.origin.URL(big), LocalName: s.dest("normal.bin")})
	waitGate(t, gate)
	low := s.createPrio("low", job.Low, events.FileSpec{RemoteURL: s.origin.URL(96 << 10), LocalName: s.dest("low.bin")})
	s.waitAgentWaiting(1)
	high := string(job.High)
	if _, err := s.client.Patch(context.Background(), low, coordinator.PatchRequest{Priority: &high}); err != nil {
		t.Fatal(err)
	}
	s.until(low, "the raised job transferred", state(job.Transferred))
	var preempted bool
	for _, ev := range s.events(normal) {
		if p, _ := ev.Payload(); p != nil {
			if q, ok := p.(*events.JobQueued); ok && q.Reason == job.QueuedPreempted {
				preempted = true
			}
		}
	}
	if !preempted {
		t.Fatal("the NORMAL job was not preempted by the job raised to HIGH")
	}
}

// TestSuspendStopsAStalledTransferAtOnce: a transfer stalled mid-body (no
// checkpoint, no write) stops as soon as the job is suspended — the agent
// follows the job's events — and its slot goes to the next job, long
// before the idle-read timeout.
func TestSuspendStopsAStalledTransferAtOnce(t *testing.T) {
	s := oneSlotStack(t)
	const big = 4 << 20
	gate := s.origin.GateNext(big, 1<<20)
	t.Cleanup(gate.Open)
	stalled := s.createPrio("stalled", job.Normal, events.FileSpec{RemoteURL: s.origin.URL(big), LocalName: s.dest("stalled.bin")})
	waitGate(t, gate)
	next := s.createPrio("next", job.Normal, events.FileSpec{RemoteURL: s.origin.URL(64 << 10), LocalName: s.dest("next.bin")})
	s.waitAgentWaiting(1)
	start := time.Now()
	s.action(stalled, "suspend")
	s.until(next, "the next job transferred", state(job.Transferred))
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("the slot was freed after %s: the stalled transfer was not stopped by the suspend", d)
	}
	j, err := s.client.Get(context.Background(), stalled)
	if err != nil || j.State != job.Suspended {
		t.Fatalf("stalled job: %s %v", j.State, err)
	}
}
