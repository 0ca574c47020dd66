package agent

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/job"
)

// SchedulerConfig tunes a Scheduler. The zero value works.
type SchedulerConfig struct {
	// Slots is how many background (HIGH, NORMAL, LOW) jobs may transfer
	// at once (default 4).
	Slots int
	// MaxForeground is how many FOREGROUND jobs may transfer at once,
	// besides the background slots (default 16).
	MaxForeground int
	// TimeSlice is how long a job runs before it yields to a waiting job of
	// its class (default 1 minute; negative: jobs never yield to their own
	// class).
	TimeSlice time.Duration
}

// Defaults of SchedulerConfig.
const (
	DefaultSlots         = 4
	DefaultMaxForeground = 16
	DefaultTimeSlice     = time.Minute
)

func (c *SchedulerConfig) defaults() {
	if c.Slots <= 0 {
		c.Slots = DefaultSlots
	}
	if c.MaxForeground <= 0 {
		c.MaxForeground = DefaultMaxForeground
	}
	if c.TimeSlice == 0 {
		c.TimeSlice = DefaultTimeSlice
	}
}

// ErrRemoved is what Acquire returns when the job was removed (Remove, or a
// newer Acquire of the same job) before it got a slot.
var ErrRemoved = errors.New("agent: job removed from the scheduler")

// StopReason says why a ticket's Preempted channel was closed.
type StopReason string

// Why a job stops running.
const (
	// StopPriority: a job of a higher class needs the slot, or the job's
	// own class changed and left it no slot.
	StopPriority StopReason = "priority"
	// StopTimeSlice: a time slice ended while a job of its class waited,
	// and this job had run longest of its class.
	StopTimeSlice StopReason = "time-slice"
	// StopRemoved: Remove, or a newer Acquire of the same job.
	StopRemoved StopReason = "removed"
	// StopReleased: the caller released the ticket.
	StopReleased StopReason = "released"
)

// classes are the scheduling classes, indexed by job.Priority.Rank.
var classes = [...]job.Priority{job.Foreground, job.High, job.Normal, job.Low}

// The two pools of slots: foreground (rank 0) and background (ranks 1-3).
const (
	foregroundPool = 0
	backgroundPool = 1
)

func poolOf(rank int) int {
	if rank == 0 {
		return foregroundPool
	}
	return backgroundPool
}

type entryState int

const (
	waiting  entryState = iota
	running             // holds a slot
	stopping            // holds a slot, told to stop
	gone                // released, removed, or replaced
)

// entry is one job held by the scheduler. Its fields are guarded by the
// scheduler's mutex.
type entry struct {
	id    string
	rank  int
	state entryState
	// pool is the pool whose slot a running or stopping job holds. It is
	// the pool of its class except after a priority change moved the job
	// to the other pool's class while it ran ("misplaced"): it then waits
	// for a slot of its new pool while it keeps transferring.
	pool int
	// waitSeq orders candidates for a slot: longest waiting first. runSeq
	// orders running jobs: longest running (since they got their slot)
	// first. Both come from one counter, so jobs that arrived or started
	// at the same (virtual) instant are ordered by arrival.
	waitSeq, runSeq uint64
	since           time.Time // when it began waiting for a slot
	// requeueSeq and requeueAt are its place in line if it Yields after
	// being told to stop: the moment it was told.
	requeueSeq uint64
	requeueAt  time.Time
	sliceEnd   time.Time     // when its current time slice ends
	slice      int           // the current time slice's number, to ignore stale timers
	granted    chan struct{} // closed when it leaves the queue (granted or dropped)
	stop       chan struct{} // closed when it must stop or holds no slot any more
	reason     StopReason
	timer      *time.Timer // the current slice's end
}

// misplaced reports whether e runs in a slot of the pool its class does not
// belong to (its priority changed while it ran).
func (e *entry) misplaced() bool { return e.state == running && e.pool != poolOf(e.rank) }

// Scheduler decides which of the jobs an agent holds may transfer now, with
// BITS priority semantics:
//
//   - FOREGROUND jobs run concurrently (up to MaxForeground) beside the
//     background slots; they neither use nor preempt background slots.
//   - HIGH, NORMAL and LOW jobs share Slots background slots (BITS runs one
//     background job at a time; ferry allows N). A higher class always runs
//     first: a lower-class job gets a slot only when no higher-class job
//     waits, and a higher-class job that arrives while every slot holds a
//     lower-class job preempts the lowest-class one (of those, the one that
//     has run longest since it got its slot).
//   - Jobs of one class take turns: when a running job's time slice ends
//     and a job of its class has been waiting during the slice, the job of
//     that class that has run longest (among those whose slice has ended)
//     yields to the one that has waited longest (round robin). With no one
//     waiting it starts another slice and keeps running, so a waiter waits
//     at most one slice for the first job to yield.
//
// A job told to stop keeps its slot until its caller has stopped it at a
// checkpoint and released it, so never more than Slots background jobs and
// MaxForeground foreground jobs transfer at once; the slot then goes to
// the best waiting job.
//
// A priority change that moves a running job to the other pool moves its
// slot at once if the new pool has one free. Otherwise a job promoted to
// FOREGROUND keeps running in its background slot until a foreground slot
// frees (it outranks every background job); a job demoted from FOREGROUND
// keeps running in its foreground slot only while it can claim a
// background slot (a free one soon, or by preempting a lower class), and
// is otherwise told to stop and waits like any job of its new class.
//
// The scheduler does no I/O and uses the clock only through package time,
// so it runs in virtual time under testing/synctest. It starts no goroutine
// of its own: time slices are timers (time.AfterFunc), stopped when their
// job stops. It is safe for concurrent use.
type Scheduler struct {
	limit [2]int // slots per pool
	slice time.Duration

	mu      sync.Mutex
	seq     uint64
	jobs    map[string]*entry
	queue   [len(classes)][]*entry // waiting jobs per class, in waitSeq order
	holders map[*entry]struct{}    // running and stopping jobs
}

// NewScheduler returns a scheduler with no jobs.
func NewScheduler(cfg SchedulerConfig) *Scheduler {
	cfg.defaults()
	return &Scheduler{
		limit:   [2]int{foregroundPool: cfg.MaxForeground, backgroundPool: cfg.Slots},
		slice:   cfg.TimeSlice,
		jobs:    map[string]*entry{},
		holders: map[*entry]struct{}{},
	}
}

// Ticket is a job's permission to transfer, from Acquire until Release.
type Ticket struct {
	s *Scheduler
	e *entry
}

// Preempted is closed when the job must stop: a higher-class job needs its
// slot, its time slice ended while a job of its class waits, or it was
// removed. The caller stops the transfer at a checkpoint and calls Yield
// to wait for its next turn (or Release, and Acquire again later). It is
// also closed by Release, so a goroutine watching it always ends.
func (t *Ticket) Preempted() <-chan struct{} { return t.e.stop }

// Reason says why Preempted was closed ("" while the job may run).
func (t *Ticket) Reason() StopReason {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	return t.e.reason
}

// Release tells the scheduler the job stopped running (finished, failed,
// yielded) and gives its slot to the best waiting job. It is idempotent,
// and a no-op once the job was removed.
func (t *Ticket) Release() {
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.e.state == running || t.e.state == stopping {
		s.drop(t.e, StopReleased)
		s.reconcile()
	}
}

// Yield gives up the job's slot and queues the job again in its current
// class (with any SetPriority applied), blocking like Acquire until it may
// run again. A job told to stop keeps the place in line it got when it was
// told, so jobs told to stop together keep their order whatever the order
// their callers yield in; a job that yields unasked queues last. Yield
// returns ErrRemoved if the ticket holds no slot any more (released,
// removed, replaced), and ctx.Err() (with the slot released) if ctx ends
// first.
func (t *Ticket) Yield(ctx context.Context) (*Ticket, error) {
	if err := ctx.Err(); err != nil {
		t.Release()
		return nil, err
	}
	s, old := t.s, t.e
	s.mu.Lock()
	if old.state != running && old.state != stopping {
		s.mu.Unlock()
		return nil, ErrRemoved
	}
	e := newEntry(old.id, old.rank)
	if old.state == stopping {
		e.waitSeq, e.since = old.requeueSeq, old.requeueAt
	} else {
		s.seq++
		e.waitSeq, e.since = s.seq, time.Now()
	}
	s.drop(old, StopReleased)
	s.jobs[e.id] = e
	s.enqueue(e)
	s.reconcile()
	s.mu.Unlock()
	return s.wait(ctx, e)
}

func newEntry(id string, rank int) *entry {
	return &entry{id: id, rank: rank, granted: make(chan struct{}), stop: make(chan struct{})}
}

// Acquire queues job jobID in class p and blocks until it may transfer. It
// returns ctx.Err() if ctx ends first (the job is then no longer queued),
// or ErrRemoved if the job is removed while it waits. An unknown priority
// counts as NORMAL (as job.Priority.Rank does). Acquiring a job the
// scheduler already holds replaces it: the older Acquire returns ErrRemoved
// or the older ticket is preempted with StopRemoved and loses its slot.
func (s *Scheduler) Acquire(ctx context.Context, jobID string, p job.Priority) (*Ticket, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e := newEntry(jobID, p.Rank())
	s.mu.Lock()
	if old := s.jobs[jobID]; old != nil {
		s.drop(old, StopRemoved)
	}
	s.jobs[jobID] = e
	s.seq++
	e.waitSeq, e.since = s.seq, time.Now()
	s.enqueue(e)
	s.reconcile()
	s.mu.Unlock()
	return s.wait(ctx, e)
}

// wait blocks until queued job e gets a slot, is removed, or ctx ends.
func (s *Scheduler) wait(ctx context.Context, e *entry) (*Ticket, error) {
	select {
	case <-e.granted:
		s.mu.Lock()
		defer s.mu.Unlock()
		if e.state == gone {
			return nil, ErrRemoved
		}
		return &Ticket{s: s, e: e}, nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if e.state != gone {
			// Still waiting, or granted at the same moment: either way
			// the caller will not run it.
			s.drop(e, StopReleased)
			s.reconcile()
		}
		return nil, ctx.Err()
	}
}

// SetPriority moves a held job to class p and re-evaluates at once: a
// promoted job may preempt lower-class ones or take a free slot, a demoted
// one may be preempted (see Scheduler for moves between foreground and
// background). A waiting job keeps its place (how long it has waited) in
// its new class. It reports whether the scheduler holds the job.
func (s *Scheduler) SetPriority(jobID string, p job.Priority) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.jobs[jobID]
	if e == nil {
		return false
	}
	r := p.Rank()
	if r == e.rank {
		return true
	}
	if e.state == waiting {
		s.dequeue(e)
		e.rank = r
		s.enqueue(e)
	} else {
		was := e.misplaced()
		e.rank = r
		if e.misplaced() && !was {
			// It starts waiting for a slot of its new pool.
			s.seq++
			e.waitSeq = s.seq
			e.since = time.Now()
		}
	}
	s.reconcile()
	return true
}

// Remove drops a waiting or running job (it was cancelled, suspended,
// completed elsewhere). A waiting Acquire returns ErrRemoved; a running
// job's slot is freed at once and its ticket's Preempted is closed with
// StopRemoved (its Release is then a no-op). It reports whether the
// scheduler held the job.
func (s *Scheduler) Remove(jobID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.jobs[jobID]
	if e == nil {
		return false
	}
	s.drop(e, StopRemoved)
	s.reconcile()
	return true
}

// ClassSnapshot is one class's jobs at one moment.
type ClassSnapshot struct {
	Priority job.Priority
	// Running are the jobs holding a slot, longest running first; they
	// include Stopping and Elsewhere.
	Running []string
	// Stopping are running jobs told to stop that have not released yet.
	Stopping []string
	// Elsewhere are running jobs that hold a slot of the other pool: their
	// priority changed while they ran and no slot of their new pool was
	// free yet.
	Elsewhere []string
	// Waiting are the jobs waiting for a slot, in the order they get one.
	Waiting []string
}

// Snapshot is what the scheduler holds at one moment, for status and tests.
type Snapshot struct {
	Slots, MaxForeground int
	// BackgroundHeld and ForegroundHeld count the slots held (by running
	// and stopping jobs) in each pool.
	BackgroundHeld, ForegroundHeld int
	// Classes are indexed by job.Priority.Rank: FOREGROUND, HIGH, NORMAL, LOW.
	Classes [len(classes)]ClassSnapshot
}

// Class returns the snapshot of p's class.
func (s Snapshot) Class(p job.Priority) ClassSnapshot { return s.Classes[p.Rank()] }

// Snapshot returns the jobs waiting and running, per class.
func (s *Scheduler) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Slots: s.limit[backgroundPool], MaxForeground: s.limit[foregroundPool]}
	hs := make([]*entry, 0, len(s.holders))
	for e := range s.holders {
		hs = append(hs, e)
	}
	slices.SortFunc(hs, func(a, b *entry) int { return cmp.Compare(a.runSeq, b.runSeq) })
	for r, p := range classes {
		c := &snap.Classes[r]
		c.Priority = p
		for _, e := range s.queue[r] {
			c.Waiting = append(c.Waiting, e.id)
		}
	}
	for _, e := range hs {
		c := &snap.Classes[e.rank]
		c.Running = append(c.Running, e.id)
		if e.state == stopping {
			c.Stopping = append(c.Stopping, e.id)
		}
		if e.pool != poolOf(e.rank) {
			c.Elsewhere = append(c.Elsewhere, e.id)
		}
		if e.pool == foregroundPool {
			snap.ForegroundHeld++
		} else {
			snap.BackgroundHeld++
		}
	}
	return snap
}

// reconcile brings both pools to the state the rules ask for: free slots
// go to the best candidates, and running jobs that a better candidate
// outranks are told to stop. A job moving between pools frees a slot in
// the pool it leaves, hence the loop.
func (s *Scheduler) reconcile() {
	for {
		movedF := s.balance(foregroundPool)
		movedB := s.balance(backgroundPool)
		if !movedF && !movedB {
			return
		}
	}
}

// balance reconciles one pool and reports whether a running job moved
// into it from the other pool.
func (s *Scheduler) balance(pool int) (moved bool) {
	capacity := s.limit[pool]
	run, nstopping := s.holding(pool)
	cands := s.candidates(pool)
	for len(run)+nstopping < capacity && len(cands) > 0 {
		c := cands[0]
		cands = cands[1:]
		if c.state == running {
			c.pool = pool // misplaced: its slot moves, it keeps running
			moved = true
		} else {
			s.start(c, pool)
		}
		run = append(run, c)
	}
	// The best candidates get the slots that stopping jobs will free; each
	// candidate after them that outranks a running job preempts the worst.
	covered := max(0, capacity-len(run))
	if covered >= len(cands) {
		return moved
	}
	uncovered := cands[covered:]
	sortVictims(run)
	i := 0
	for ; i < len(uncovered) && i < len(run) && uncovered[i].rank < run[i].rank; i++ {
		s.preempt(run[i], StopPriority)
	}
	if pool == backgroundPool {
		// A job demoted out of the foreground that can claim no slot
		// here stops, and waits like any job of its class.
		for _, c := range uncovered[i:] {
			if c.state == running {
				s.preempt(c, StopPriority)
			}
		}
	}
	return moved
}

// holding returns the running (not stopping) jobs that hold a slot of
// pool, and how many stopping ones do.
func (s *Scheduler) holding(pool int) (run []*entry, nstopping int) {
	for e := range s.holders {
		if e.pool != pool {
			continue
		}
		if e.state == running {
			run = append(run, e)
		} else {
			nstopping++
		}
	}
	return run, nstopping
}

// candidates returns the jobs that want a slot of pool, in the order they
// get one: class first; within a class, jobs already running in the other
// pool's slot (moving them frees that slot), then the longest waiting.
func (s *Scheduler) candidates(pool int) []*entry {
	var c []*entry
	for e := range s.holders {
		if e.misplaced() && poolOf(e.rank) == pool {
			c = append(c, e)
		}
	}
	lo, hi := 1, len(classes)
	if pool == foregroundPool {
		lo, hi = 0, 1
	}
	for r := lo; r < hi; r++ {
		c = append(c, s.queue[r]...)
	}
	waits := func(e *entry) bool { return e.state == waiting }
	slices.SortFunc(c, func(a, b *entry) int {
		if a.rank != b.rank {
			return cmp.Compare(a.rank, b.rank)
		}
		if waits(a) != waits(b) {
			if waits(a) {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.waitSeq, b.waitSeq)
	})
	return c
}

// sortVictims orders running jobs worst first: lowest class, then longest
// running since it got its slot (ties in time by arrival, through runSeq).
func sortVictims(run []*entry) {
	slices.SortFunc(run, func(a, b *entry) int {
		return cmp.Or(cmp.Compare(b.rank, a.rank), cmp.Compare(a.runSeq, b.runSeq))
	})
}

// start gives waiting job e a slot of pool.
func (s *Scheduler) start(e *entry, pool int) {
	s.dequeue(e)
	e.state = running
	e.pool = pool
	s.holders[e] = struct{}{}
	s.seq++
	e.runSeq = s.seq
	s.newSlice(e)
	close(e.granted)
}

// newSlice starts e's next time slice.
func (s *Scheduler) newSlice(e *entry) {
	if s.slice <= 0 {
		return
	}
	e.slice++
	n := e.slice
	e.sliceEnd = time.Now().Add(s.slice)
	e.timer = time.AfterFunc(s.slice, func() { s.sliceEnded(e, n) })
}

// sliceEnded runs when time slice n of e is over. For each candidate for a
// slot of e's pool that no stopping job will free and that has been
// waiting during the slice, the job of its class that has run longest
// among those whose slice is over (e or others) yields; e runs on unless
// it yielded.
//
// Only jobs whose slice is over may yield, and only to a job that waited
// before their slice ended: when several slices end at once, one job
// yields per waiter whichever timer fires first, and a job that has just
// yielded is not handed back the slot of a job whose slice ended at the
// same moment.
func (s *Scheduler) sliceEnded(e *entry, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.state != running || e.slice != n {
		return // stopped, or a stale timer
	}
	e.timer = nil
	now := time.Now()
	run, _ := s.holding(e.pool)
	cands := s.candidates(e.pool)
	if covered := max(0, s.limit[e.pool]-len(run)); covered < len(cands) {
		uncovered := cands[covered:]
		over := slices.DeleteFunc(run, func(r *entry) bool { return r.sliceEnd.After(now) })
		sortVictims(over)
		for i := 0; i < len(uncovered) && i < len(over); i++ {
			w, v := uncovered[i], over[i]
			if w.rank > v.rank || !w.since.Before(v.sliceEnd) {
				break
			}
			why := StopTimeSlice
			if w.rank < v.rank {
				why = StopPriority // balance does this first; kept for safety
			}
			s.preempt(v, why)
		}
	}
	if e.state == running {
		s.newSlice(e)
	}
}

// preempt tells running job e to stop; it keeps its slot until released.
func (s *Scheduler) preempt(e *entry, why StopReason) {
	e.state = stopping
	e.reason = why
	s.seq++
	e.requeueSeq, e.requeueAt = s.seq, time.Now()
	s.stopTimer(e)
	close(e.stop)
}

// drop forgets e, whatever its state; a slot it held is free.
func (s *Scheduler) drop(e *entry, why StopReason) {
	switch e.state {
	case waiting:
		s.dequeue(e)
		close(e.granted)
	case running:
		e.reason = why
		close(e.stop)
		fallthrough
	case stopping:
		s.stopTimer(e)
		delete(s.holders, e)
	case gone:
		return
	}
	e.state = gone
	if s.jobs[e.id] == e {
		delete(s.jobs, e.id)
	}
}

func (s *Scheduler) stopTimer(e *entry) {
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
}

func (s *Scheduler) enqueue(e *entry) {
	q := s.queue[e.rank]
	i, _ := slices.BinarySearchFunc(q, e.waitSeq, byWaitSeq)
	s.queue[e.rank] = slices.Insert(q, i, e)
}

func (s *Scheduler) dequeue(e *entry) {
	q := s.queue[e.rank]
	if i, ok := slices.BinarySearchFunc(q, e.waitSeq, byWaitSeq); ok {
		s.queue[e.rank] = slices.Delete(q, i, i+1)
	}
}

func byWaitSeq(e *entry, seq uint64) int { return cmp.Compare(e.waitSeq, seq) }
