package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferry-dev/ferry/job"
	"go.uber.org/goleak"
)

// schedHarness drives a Scheduler inside a synctest bubble: every Acquire
// runs in its own goroutine, as an agent's transfers do, and every step
// returns once the bubble is idle again, so the scheduler's state can be
// checked between steps.
type schedHarness struct {
	t    *testing.T
	s    *Scheduler
	wg   sync.WaitGroup
	mu   sync.Mutex
	held map[string]*heldJob
}

type heldJob struct {
	cancel   context.CancelFunc
	returned bool
	ticket   *Ticket
	err      error
}

func newSchedHarness(t *testing.T, cfg SchedulerConfig) *schedHarness {
	h := &schedHarness{t: t, s: NewScheduler(cfg), held: map[string]*heldJob{}}
	t.Cleanup(func() {
		h.mu.Lock()
		for _, j := range h.held {
			j.cancel()
		}
		h.mu.Unlock()
		h.wg.Wait()
		for _, j := range h.held {
			if j.ticket != nil {
				j.ticket.Release() // stops its time-slice timer
			}
		}
	})
	return h
}

func (h *schedHarness) job(id string) *heldJob {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.held[id]
	if j == nil {
		h.t.Fatalf("no job %s", id)
	}
	return j
}

// A step changes the scheduler (or checks a ticket) and waits until the
// bubble is idle.
type step func(h *schedHarness)

func acquire(id string, p job.Priority) step {
	return func(h *schedHarness) {
		ctx, cancel := context.WithCancel(context.Background())
		j := &heldJob{cancel: cancel}
		h.mu.Lock()
		h.held[id] = j
		h.mu.Unlock()
		h.wg.Go(func() {
			t, err := h.s.Acquire(ctx, id, p)
			h.mu.Lock()
			j.returned, j.ticket, j.err = true, t, err
			h.mu.Unlock()
		})
		synctest.Wait()
	}
}

// yield calls Yield on id's ticket in a new goroutine: its result becomes
// id's ticket or error.
func yield(id string) step {
	return func(h *schedHarness) {
		old := h.job(id)
		ctx, cancel := context.WithCancel(context.Background())
		j := &heldJob{cancel: cancel}
		h.mu.Lock()
		t := old.ticket
		h.held[id] = j
		h.mu.Unlock()
		if t == nil {
			h.t.Fatalf("yield %s: it holds no ticket", id)
		}
		h.wg.Go(func() {
			t, err := t.Yield(ctx)
			h.mu.Lock()
			j.returned, j.ticket, j.err = true, t, err
			h.mu.Unlock()
		})
		synctest.Wait()
	}
}

func release(id string) step {
	return func(h *schedHarness) {
		j := h.job(id)
		h.mu.Lock()
		t := j.ticket
		h.mu.Unlock()
		if t == nil {
			h.t.Fatalf("release %s: it holds no ticket", id)
		}
		t.Release()
		synctest.Wait()
	}
}

func setPriority(id string, p job.Priority) step {
	return func(h *schedHarness) {
		if !h.s.SetPriority(id, p) {
			h.t.Errorf("SetPriority(%s): the scheduler does not hold it", id)
		}
		synctest.Wait()
	}
}

func remove(id string) step {
	return func(h *schedHarness) {
		if !h.s.Remove(id) {
			h.t.Errorf("Remove(%s): the scheduler does not hold it", id)
		}
		synctest.Wait()
	}
}

// cancelAcquire ends the context of id's Acquire.
func cancelAcquire(id string) step {
	return func(h *schedHarness) {
		h.job(id).cancel()
		synctest.Wait()
	}
}

func sleep(d time.Duration) step {
	return func(h *schedHarness) {
		time.Sleep(d)
		synctest.Wait()
	}
}

// stopped checks why id's ticket was told to stop ("" = it was not).
func stopped(id string, want StopReason) step {
	return func(h *schedHarness) {
		h.t.Helper()
		j := h.job(id)
		h.mu.Lock()
		t := j.ticket
		h.mu.Unlock()
		if t == nil {
			h.t.Fatalf("%s holds no ticket", id)
		}
		closed := false
		select {
		case <-t.Preempted():
			closed = true
		default:
		}
		if got := t.Reason(); got != want || closed != (want != "") {
			h.t.Errorf("%s: reason %q, Preempted closed %v; want %q", id, got, closed, want)
		}
	}
}

// failed checks that id's Acquire returned err.
func failed(id string, want error) step {
	return func(h *schedHarness) {
		h.t.Helper()
		j := h.job(id)
		h.mu.Lock()
		defer h.mu.Unlock()
		if !j.returned || j.ticket != nil || !errors.Is(j.err, want) {
			h.t.Errorf("Acquire(%s): returned %v, ticket %v, err %v; want err %v", id, j.returned, j.ticket != nil, j.err, want)
		}
	}
}

// render shows a snapshot compactly: "run[H:a N:b*] wait[L:c,d]", classes
// highest first, running jobs longest running first (* = told to stop, ^ =
// holds a slot of the other pool), waiting jobs in the order they will
// run; "idle" when empty.
func render(snap Snapshot) string {
	var run, wait []string
	for _, c := range snap.Classes {
		letter := string(c.Priority[0])
		if len(c.Running) > 0 {
			ids := make([]string, len(c.Running))
			for i, id := range c.Running {
				ids[i] = id
				if slices.Contains(c.Elsewhere, id) {
					ids[i] += "^"
				}
				if slices.Contains(c.Stopping, id) {
					ids[i] += "*"
				}
			}
			run = append(run, letter+":"+strings.Join(ids, ","))
		}
		if len(c.Waiting) > 0 {
			wait = append(wait, letter+":"+strings.Join(c.Waiting, ","))
		}
	}
	var parts []string
	if len(run) > 0 {
		parts = append(parts, "run["+strings.Join(run, " ")+"]")
	}
	if len(wait) > 0 {
		parts = append(parts, "wait["+strings.Join(wait, " ")+"]")
	}
	if len(parts) == 0 {
		return "idle"
	}
	return strings.Join(parts, " ")
}

const (
	fg   = job.Foreground
	high = job.High
	norm = job.Normal
	low  = job.Low
)

func TestSchedulerRules(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	type check struct {
		do   step
		want string // the scheduler's state after the step; "" = not checked
	}
	one := SchedulerConfig{Slots: 1}
	tests := []struct {
		name  string
		cfg   SchedulerConfig
		steps []check
	}{
		{"higher class first", one, []check{
			{acquire("a", high), "run[H:a]"},
			{acquire("l", low), "run[H:a] wait[L:l]"},
			{acquire("n", norm), "run[H:a] wait[N:n L:l]"},
			{acquire("h", high), "run[H:a] wait[H:h N:n L:l]"},
			{release("a"), "run[H:h] wait[N:n L:l]"},
			{release("h"), "run[N:n] wait[L:l]"},
			{release("n"), "run[L:l]"},
			{release("l"), "idle"},
		}},
		{"a waiting HIGH preempts the LOW that has run longest", SchedulerConfig{Slots: 2}, []check{
			{acquire("l1", low), "run[L:l1]"},
			{sleep(10 * time.Second), "run[L:l1]"},
			{acquire("l2", low), "run[L:l1,l2]"},
			{acquire("h", high), "run[L:l1*,l2] wait[H:h]"},
			{stopped("l1", StopPriority), ""},
			{stopped("l2", ""), ""},
			// The preempted job keeps its slot until it has stopped.
			{sleep(5 * time.Second), "run[L:l1*,l2] wait[H:h]"},
			{release("l1"), "run[H:h L:l2]"},
			{acquire("l1", low), "run[H:h L:l2] wait[L:l1]"},
			{release("h"), "run[L:l2,l1]"},
		}},
		{"the victim among jobs that started together is the first to arrive", SchedulerConfig{Slots: 2}, []check{
			{acquire("l1", low), ""},
			{acquire("l2", low), "run[L:l1,l2]"},
			{acquire("n", norm), "run[L:l1*,l2] wait[N:n]"},
		}},
		{"the lowest class is preempted first, even if it ran less", SchedulerConfig{Slots: 2}, []check{
			{acquire("n", norm), ""},
			{sleep(time.Second), ""},
			{acquire("l", low), "run[N:n L:l]"},
			{acquire("h", high), "run[N:n L:l*] wait[H:h]"},
		}},
		{"LOW gets nothing while HIGH or NORMAL wait", one, []check{
			{acquire("n", norm), "run[N:n]"},
			{acquire("l", low), "run[N:n] wait[L:l]"},
			{acquire("h", high), "run[N:n*] wait[H:h L:l]"},
			{release("n"), "run[H:h] wait[L:l]"},
			{acquire("n", norm), "run[H:h] wait[N:n L:l]"},
			{sleep(10 * time.Minute), "run[H:h] wait[N:n L:l]"},
			{stopped("h", ""), ""},
			{release("h"), "run[N:n] wait[L:l]"},
			{sleep(10 * time.Minute), "run[N:n] wait[L:l]"},
			{release("n"), "run[L:l]"},
		}},
		{"each slot a stopping job frees goes to one waiter: no job is preempted twice for it", SchedulerConfig{Slots: 2}, []check{
			{acquire("l1", low), ""},
			{acquire("l2", low), "run[L:l1,l2]"},
			{acquire("h1", high), "run[L:l1*,l2] wait[H:h1]"},
			{acquire("h2", high), "run[L:l1*,l2*] wait[H:h1,h2]"},
			{acquire("h3", high), "run[L:l1*,l2*] wait[H:h1,h2,h3]"},
			{release("l1"), "run[H:h1 L:l2*] wait[H:h2,h3]"},
			{release("l2"), "run[H:h1,h2] wait[H:h3]"},
		}},
		{"a job yielding its slice gives the slot to the best waiter", one, []check{
			{acquire("n1", norm), ""},
			{acquire("n2", norm), "run[N:n1] wait[N:n2]"},
			{sleep(61 * time.Second), "run[N:n1*] wait[N:n2]"},
			{stopped("n1", StopTimeSlice), ""},
			{acquire("h", high), "run[N:n1*] wait[H:h N:n2]"},
			{release("n1"), "run[H:h] wait[N:n2]"},
		}},
		{"foreground runs beside full slots and preempts nothing", SchedulerConfig{Slots: 1, MaxForeground: 2}, []check{
			{acquire("n", norm), "run[N:n]"},
			{acquire("l", low), "run[N:n] wait[L:l]"},
			{acquire("f1", fg), "run[F:f1 N:n] wait[L:l]"},
			{acquire("f2", fg), "run[F:f1,f2 N:n] wait[L:l]"},
			{acquire("f3", fg), "run[F:f1,f2 N:n] wait[F:f3 L:l]"},
			{stopped("n", ""), ""},
			{release("f1"), "run[F:f2,f3 N:n] wait[L:l]"},
			{release("n"), "run[F:f2,f3 L:l]"},
		}},
		{"foreground jobs beyond MaxForeground take turns", SchedulerConfig{MaxForeground: 1}, []check{
			{acquire("f1", fg), ""},
			{acquire("f2", fg), "run[F:f1] wait[F:f2]"},
			{sleep(59 * time.Second), "run[F:f1] wait[F:f2]"},
			{sleep(2 * time.Second), "run[F:f1*] wait[F:f2]"},
			{stopped("f1", StopTimeSlice), ""},
			{release("f1"), "run[F:f2]"},
		}},
		{"a job alone keeps running past its slice, and yields at the end of the slice in which another arrives", one, []check{
			{acquire("a", norm), ""},
			{sleep(10*time.Minute + 30*time.Second), "run[N:a]"},
			{stopped("a", ""), ""},
			{acquire("b", norm), "run[N:a] wait[N:b]"},
			{sleep(29 * time.Second), "run[N:a] wait[N:b]"},
			{sleep(2 * time.Second), "run[N:a*] wait[N:b]"},
			{stopped("a", StopTimeSlice), ""},
			{release("a"), "run[N:b]"},
		}},
		{"a negative TimeSlice never rotates", SchedulerConfig{Slots: 1, TimeSlice: -1}, []check{
			{acquire("a", norm), ""},
			{acquire("b", norm), "run[N:a] wait[N:b]"},
			{sleep(time.Hour), "run[N:a] wait[N:b]"},
			{stopped("a", ""), ""},
		}},
		{"promoting a waiting job preempts", one, []check{
			{acquire("n", norm), ""},
			{acquire("l", low), "run[N:n] wait[L:l]"},
			{setPriority("l", high), "run[N:n*] wait[H:l]"},
			{stopped("n", StopPriority), ""},
			{release("n"), "run[H:l]"},
		}},
		{"demoting a running job makes it yield", one, []check{
			{acquire("h", high), ""},
			{acquire("n", norm), "run[H:h] wait[N:n]"},
			{setPriority("h", low), "run[L:h*] wait[N:n]"},
			{stopped("h", StopPriority), ""},
			{release("h"), "run[N:n]"},
		}},
		{"a waiting job keeps its seniority across classes", one, []check{
			{acquire("a", high), ""},
			{acquire("b", norm), ""},
			{acquire("c", norm), ""},
			{acquire("d", low), "run[H:a] wait[N:b,c L:d]"},
			{setPriority("d", norm), "run[H:a] wait[N:b,c,d]"},
			{setPriority("b", low), "run[H:a] wait[N:c,d L:b]"},
			{setPriority("b", norm), "run[H:a] wait[N:b,c,d]"},
			{setPriority("d", high), "run[H:a] wait[H:d N:b,c]"},
			{stopped("a", ""), ""},
		}},
		{"promotion to foreground frees a background slot", one, []check{
			{acquire("n", norm), ""},
			{acquire("m", norm), "run[N:n] wait[N:m]"},
			{setPriority("n", fg), "run[F:n N:m]"},
			{stopped("n", ""), ""},
		}},
		{"demotion from foreground with a background slot free moves the job at once", one, []check{
			{acquire("f", fg), ""},
			{acquire("g", fg), "run[F:f,g]"},
			{setPriority("f", norm), "run[F:g N:f]"},
			{stopped("f", ""), ""},
		}},
		{"a job demoted from foreground that outranks a background job keeps running until that one stops", one, []check{
			{acquire("f", fg), ""},
			{acquire("n", norm), "run[F:f N:n]"},
			{setPriority("f", high), "run[H:f^ N:n*]"},
			{stopped("f", ""), ""},
			{stopped("n", StopPriority), ""},
			{release("n"), "run[H:f]"},
			{stopped("f", ""), ""},
			{acquire("n", norm), "run[H:f] wait[N:n]"},
			{setPriority("f", low), "run[L:f*] wait[N:n]"},
			{release("f"), "run[N:n]"},
		}},
		{"a job demoted from foreground stops at once if a foreground job waits for its slot", SchedulerConfig{Slots: 1, MaxForeground: 1}, []check{
			{acquire("f", fg), ""},
			{acquire("n", norm), ""},
			{acquire("g", fg), "run[F:f N:n] wait[F:g]"},
			{setPriority("f", high), "run[H:f^* N:n] wait[F:g]"},
			{stopped("f", StopPriority), ""},
			{release("f"), "run[F:g N:n]"},
			{acquire("f", high), "run[F:g N:n*] wait[H:f]"},
		}},
		{"a job demoted from foreground that can claim no background slot stops", one, []check{
			{acquire("f", fg), ""},
			{acquire("n", norm), "run[F:f N:n]"},
			{setPriority("f", low), "run[N:n L:f^*]"},
			{stopped("f", StopPriority), ""},
			{stopped("n", ""), ""},
			{release("f"), "run[N:n]"},
		}},
		{"a job demoted from foreground into its own class stops too", one, []check{
			{acquire("f", fg), ""},
			{acquire("n", norm), ""},
			{setPriority("f", norm), "run[N:f^*,n]"},
			{stopped("n", ""), ""},
		}},
		{"a job promoted into full foreground keeps its background slot until a foreground slot frees", SchedulerConfig{Slots: 1, MaxForeground: 1}, []check{
			{acquire("f", fg), ""},
			{acquire("n", norm), ""},
			{acquire("l", low), "run[F:f N:n] wait[L:l]"},
			{setPriority("n", fg), "run[F:f,n^] wait[L:l]"},
			{acquire("h", high), "run[F:f,n^] wait[H:h L:l]"},
			{stopped("n", ""), ""},
			{sleep(30 * time.Second), "run[F:f,n^] wait[H:h L:l]"},
			// f's slice ends while n waited for a foreground slot.
			{sleep(31 * time.Second), "run[F:f*,n^] wait[H:h L:l]"},
			{stopped("f", StopTimeSlice), ""},
			{release("f"), "run[F:n H:h] wait[L:l]"},
			{stopped("n", ""), ""},
		}},
		{"a job promoted to foreground and demoted back before it moved keeps its slot", SchedulerConfig{Slots: 1, MaxForeground: 1}, []check{
			{acquire("f", fg), ""},
			{acquire("n", norm), ""},
			{setPriority("n", fg), "run[F:f,n^]"},
			{setPriority("n", high), "run[F:f H:n]"},
			{stopped("n", ""), ""},
		}},
		{"remove a waiting job", one, []check{
			{acquire("a", norm), ""},
			{acquire("b", norm), "run[N:a] wait[N:b]"},
			{remove("b"), "run[N:a]"},
			{failed("b", ErrRemoved), ""},
		}},
		{"remove a running job", one, []check{
			{acquire("a", norm), ""},
			{acquire("b", norm), "run[N:a] wait[N:b]"},
			{remove("a"), "run[N:b]"},
			{stopped("a", StopRemoved), ""},
			{release("a"), "run[N:b]"},
		}},
		{"remove a stopping job", one, []check{
			{acquire("l", low), ""},
			{acquire("h", high), "run[L:l*] wait[H:h]"},
			{remove("l"), "run[H:h]"},
			{stopped("l", StopPriority), ""},
		}},
		{"cancel while waiting", one, []check{
			{acquire("a", norm), ""},
			{acquire("b", norm), "run[N:a] wait[N:b]"},
			{cancelAcquire("b"), "run[N:a]"},
			{failed("b", context.Canceled), ""},
			{release("a"), "idle"},
		}},
		{"release is idempotent and closes Preempted", one, []check{
			{acquire("a", norm), ""},
			{acquire("b", norm), ""},
			{release("a"), "run[N:b]"},
			{release("a"), "run[N:b]"},
			{stopped("a", StopReleased), ""},
			{acquire("c", norm), "run[N:b] wait[N:c]"},
			{release("a"), "run[N:b] wait[N:c]"},
		}},
		{"jobs told to stop together keep their order in line whatever order they yield in", SchedulerConfig{Slots: 2}, []check{
			{acquire("l1", low), ""},
			{acquire("l2", low), ""},
			{acquire("h1", high), ""},
			{acquire("h2", high), "run[L:l1*,l2*] wait[H:h1,h2]"},
			{acquire("l3", low), "run[L:l1*,l2*] wait[H:h1,h2 L:l3]"},
			{yield("l2"), "run[H:h1 L:l1*] wait[H:h2 L:l2,l3]"},
			{yield("l1"), "run[H:h1,h2] wait[L:l1,l2,l3]"},
			{release("h1"), "run[H:h2 L:l1] wait[L:l2,l3]"},
		}},
		{"a job that yields unasked queues last", one, []check{
			{acquire("a", norm), ""},
			{acquire("b", norm), ""},
			{acquire("c", norm), "run[N:a] wait[N:b,c]"},
			{yield("a"), "run[N:b] wait[N:c,a]"},
			{stopped("b", ""), ""},
		}},
		{"a job yields in the class SetPriority gave it", one, []check{
			{acquire("a", norm), ""},
			{acquire("b", high), "run[N:a*] wait[H:b]"},
			{setPriority("a", low), "run[L:a*] wait[H:b]"},
			{acquire("c", norm), "run[L:a*] wait[H:b N:c]"},
			{yield("a"), "run[H:b] wait[N:c L:a]"},
		}},
		{"yield after release fails", one, []check{
			{acquire("a", norm), ""},
			{release("a"), "idle"},
			{yield("a"), "idle"},
			{failed("a", ErrRemoved), ""},
		}},
		{"a removed job cannot yield", one, []check{
			{acquire("a", norm), ""},
			{remove("a"), "idle"},
			{yield("a"), "idle"},
			{failed("a", ErrRemoved), ""},
		}},
		{"an unknown priority counts as NORMAL", one, []check{
			{acquire("h", high), ""},
			{acquire("x", job.Priority("")), ""},
			{acquire("l", low), "run[H:h] wait[N:x L:l]"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newSchedHarness(t, tc.cfg)
				for i, c := range tc.steps {
					c.do(h)
					if c.want == "" {
						continue
					}
					if got := render(h.s.Snapshot()); got != c.want {
						t.Fatalf("after step %d: %s, want %s", i+1, got, c.want)
					}
				}
			})
		})
	}
}

func TestSchedulerSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newSchedHarness(t, SchedulerConfig{})
		acquire("a", high)(h)
		snap := h.s.Snapshot()
		if snap.Slots != DefaultSlots || snap.MaxForeground != DefaultMaxForeground {
			t.Errorf("slots %d, foreground %d; want the defaults", snap.Slots, snap.MaxForeground)
		}
		if c := snap.Class(job.High); c.Priority != job.High || !slices.Equal(c.Running, []string{"a"}) {
			t.Errorf("HIGH: %+v", c)
		}
		for r, c := range snap.Classes {
			if c.Priority.Rank() != r {
				t.Errorf("class %d is %s", r, c.Priority)
			}
		}
	})
}

// TestSchedulerAcquireAgainReplaces: a second Acquire of a job the
// scheduler holds (a redelivered dispatch) replaces the first.
func TestSchedulerAcquireAgainReplaces(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	synctest.Test(t, func(t *testing.T) {
		s := NewScheduler(SchedulerConfig{Slots: 1})
		ctx := t.Context()
		a, err := s.Acquire(ctx, "a", job.Normal)
		if err != nil {
			t.Fatal(err)
		}
		var b1err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, b1err = s.Acquire(ctx, "b", job.Normal)
		}()
		synctest.Wait()
		b2 := make(chan *Ticket, 1)
		go func() {
			tk, _ := s.Acquire(ctx, "b", job.High)
			b2 <- tk
		}()
		<-done
		if !errors.Is(b1err, ErrRemoved) {
			t.Errorf("first Acquire of b: %v, want ErrRemoved", b1err)
		}
		synctest.Wait()
		if got := render(s.Snapshot()); got != "run[N:a*] wait[H:b]" {
			t.Errorf("got %s", got)
		}
		a.Release()
		b := <-b2
		b3, err := s.Acquire(ctx, "b", job.Low) // replaces the running b
		if err != nil {
			t.Fatal(err)
		}
		<-b.Preempted()
		if b.Reason() != StopRemoved {
			t.Errorf("replaced running ticket: reason %q", b.Reason())
		}
		b.Release() // the old ticket's Release must not free the new one's slot
		if got := render(s.Snapshot()); got != "run[L:b]" {
			t.Errorf("got %s", got)
		}
		b3.Release()
	})
}

func TestSchedulerAcquireEndedContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewScheduler(SchedulerConfig{})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := s.Acquire(ctx, "a", job.High); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
		if got := render(s.Snapshot()); got != "idle" {
			t.Errorf("got %s", got)
		}
		ctx, cancel = context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		first, err := s.Acquire(ctx, "a", job.Foreground)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Release()
		s2 := NewScheduler(SchedulerConfig{Slots: 1})
		t1, _ := s2.Acquire(t.Context(), "x", job.Normal)
		defer t1.Release()
		start := time.Now()
		if _, err := s2.Acquire(ctx, "y", job.Normal); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err %v", err)
		}
		if d := time.Since(start); d != 30*time.Second {
			t.Errorf("Acquire returned after %v, want 30s", d)
		}
		if got := render(s2.Snapshot()); got != "run[N:x]" {
			t.Errorf("got %s", got)
		}
	})
}

// turn is one stretch during which a job held a slot.
type turn struct {
	id       string
	from, to time.Duration
}

// TestSchedulerRoundRobin runs jobs of one class that never finish for 30
// virtual minutes and measures how long each held a slot: each gets its
// share (slots/jobs of the time) within one time slice, no slot is ever
// idle, no turn lasts more than one slice per slot, and they take turns in
// arrival order. Callers either Yield, or Release and Acquire again; the
// latter keeps the order only while one job yields at a time (when several
// yield at once, the order in which their callers ask again decides).
func TestSchedulerRoundRobin(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const (
		slice = time.Minute
		total = 30 * time.Minute
	)
	for _, tc := range []struct {
		slots int
		jobs  string // one letter each, in arrival order
		prio  job.Priority
		yield bool
	}{
		{1, "abc", job.Normal, false},
		{1, "abc", job.Low, true},
		{2, "abc", job.High, false},
		{3, "abcd", job.Foreground, true},
		{2, "abcde", job.High, true},
		{3, "abcdefg", job.Normal, true},
	} {
		how := "release and acquire"
		if tc.yield {
			how = "yield"
		}
		t.Run(fmt.Sprintf("%d slots %d %s jobs %s", tc.slots, len(tc.jobs), tc.prio, how), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := SchedulerConfig{Slots: tc.slots, MaxForeground: tc.slots, TimeSlice: slice}
				s := NewScheduler(cfg)
				ctx, cancel := context.WithCancel(t.Context())
				start := time.Now()
				var (
					mu    sync.Mutex
					turns []turn
					wg    sync.WaitGroup
				)
				jobs := strings.Split(tc.jobs, "")
				for _, id := range jobs {
					wg.Go(func() {
						tk, err := s.Acquire(ctx, id, tc.prio)
						for err == nil {
							from := time.Since(start)
							select {
							case <-tk.Preempted():
								if r := tk.Reason(); r != StopTimeSlice {
									t.Errorf("%s stopped: %s", id, r)
								}
							case <-ctx.Done():
							}
							mu.Lock()
							turns = append(turns, turn{id, from, time.Since(start)})
							mu.Unlock()
							if tc.yield {
								tk, err = tk.Yield(ctx)
							} else {
								tk.Release()
								tk, err = s.Acquire(ctx, id, tc.prio)
							}
						}
					})
					synctest.Wait() // they arrive in order
				}
				time.Sleep(total)
				cancel()
				wg.Wait()

				ran := map[string]time.Duration{}
				var sum time.Duration
				for _, tr := range turns {
					if d := tr.to - tr.from; d > time.Duration(tc.slots)*slice {
						t.Errorf("%s ran %v in one turn, longer than %d slices", tr.id, d, tc.slots)
					}
					ran[tr.id] += tr.to - tr.from
					sum += tr.to - tr.from
				}
				if want := time.Duration(tc.slots) * total; sum != want {
					t.Errorf("slots were busy %v in all, want %v (never idle while jobs wait)", sum, want)
				}
				share := time.Duration(tc.slots) * total / time.Duration(len(jobs))
				for _, id := range jobs {
					if d := ran[id] - share; d < -slice || d > slice {
						t.Errorf("%s ran %v, want %v ± %v", id, ran[id], share, slice)
					}
				}
				t.Logf("run time per job: %v", ran)
				// The jobs that began a turn at the same moment are the
				// next ones in round-robin order. (Turns that began as
				// the test ended, racing with its end, do not count.)
				turns = slices.DeleteFunc(turns, func(tr turn) bool { return tr.from >= total })
				slices.SortFunc(turns, func(a, b turn) int {
					return cmp.Or(cmp.Compare(a.from, b.from), cmp.Compare(a.id, b.id))
				})
				next := 0
				for i := 0; i < len(turns); {
					k := i
					var got, want []string
					for ; k < len(turns) && turns[k].from == turns[i].from; k++ {
						got = append(got, turns[k].id)
						want = append(want, jobs[next%len(jobs)])
						next++
					}
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Fatalf("at %v turns went to %v, want %v (round robin)", turns[i].from, got, want)
					}
					i = k
				}
			})
		})
	}
}

// TestSchedulerManyJobs runs 200 jobs of random classes, arrival times and
// amounts of work, with random priority changes while they are held, and
// checks the rules at every step of virtual time (every event falls on a
// whole second): never more jobs holding slots than there are, never a
// lower-class job running while a higher-class one waits, no slot idle
// while a job waits, and every job finishes having run exactly its work.
func TestSchedulerManyJobs(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for i, cfg := range []SchedulerConfig{
		{Slots: 4, MaxForeground: 3, TimeSlice: 5 * time.Second},
		{Slots: 1, MaxForeground: 1, TimeSlice: time.Second},
		{Slots: 2, MaxForeground: 16, TimeSlice: 3 * time.Second},
		{Slots: 3, MaxForeground: 2, TimeSlice: time.Minute},
	} {
		t.Run(fmt.Sprintf("%d slots %d foreground %v slice", cfg.Slots, cfg.MaxForeground, cfg.TimeSlice), func(t *testing.T) {
			manyJobs(t, cfg, uint64(i))
		})
	}
}

func manyJobs(t *testing.T, cfg SchedulerConfig, seed uint64) {
	synctest.Test(t, func(t *testing.T) {
		const n = 200
		s := NewScheduler(cfg)
		rng := rand.New(rand.NewPCG(seed, 11))
		type simJob struct {
			id             string
			prio           job.Priority // guarded by mu
			arrive, work   time.Duration
			ran            time.Duration // guarded by mu
			turns, preempt int           // guarded by mu
			done           bool          // guarded by mu
		}
		var mu sync.Mutex
		jobs := make([]*simJob, n)
		for i := range jobs {
			jobs[i] = &simJob{
				id:     fmt.Sprintf("j%03d", i),
				prio:   classes[rng.IntN(len(classes))],
				arrive: time.Duration(rng.IntN(300)) * time.Second,
				work:   time.Duration(1+rng.IntN(30)) * time.Second,
			}
		}
		ctx := t.Context()
		var wg sync.WaitGroup
		acquire := func(j *simJob) (*Ticket, error) {
			mu.Lock()
			p := j.prio
			mu.Unlock()
			return s.Acquire(ctx, j.id, p)
		}
		for i, j := range jobs {
			// Half the jobs Yield when told to stop, the others Release
			// and Acquire again.
			yields := i%2 == 0
			wg.Go(func() {
				time.Sleep(j.arrive)
				left := j.work
				tk, err := acquire(j)
				for {
					if err != nil {
						if ctx.Err() == nil { // else the test failed and ended
							t.Errorf("Acquire(%s): %v", j.id, err)
						}
						return
					}
					checkSlots(t, cfg, s.Snapshot())
					began := time.Now()
					timer := time.NewTimer(left)
					preempted := false
					select {
					case <-timer.C:
					case <-tk.Preempted():
						timer.Stop()
						preempted = true
					}
					d := time.Since(began)
					left -= d
					mu.Lock()
					j.ran += d
					j.turns++
					if preempted {
						j.preempt++
					}
					mu.Unlock()
					if left <= 0 {
						tk.Release()
						break
					}
					if yields {
						tk, err = tk.Yield(ctx)
					} else {
						tk.Release()
						tk, err = acquire(j)
					}
				}
				mu.Lock()
				j.done = true
				mu.Unlock()
			})
		}

		start := time.Now()
		changes := 0
		for step := 0; ; step++ {
			// Every goroutine is blocked: each job is waiting, running,
			// not yet arrived, or done, and every job told to stop has
			// released its slot.
			synctest.Wait()
			snap := s.Snapshot()
			checkSlots(t, cfg, snap)
			checkSettled(t, cfg, snap)
			if t.Failed() {
				t.Fatalf("at %v: %s", time.Since(start), render(snap))
			}
			mu.Lock()
			all := true
			for _, j := range jobs {
				all = all && j.done
			}
			// Now and then a held job changes class, as with
			// `ferry job set --priority`.
			if !all && rng.IntN(5) == 0 {
				j := jobs[rng.IntN(n)]
				if !j.done {
					p := classes[rng.IntN(len(classes))]
					// Every job that arrived and is not done is held: it
					// runs or waits (no caller is between Release and
					// Acquire while the bubble is idle).
					if held := s.SetPriority(j.id, p); held != (time.Since(start) >= j.arrive) {
						t.Errorf("SetPriority(%s) at %v: held %v, arrival at %v", j.id, time.Since(start), held, j.arrive)
					}
					j.prio = p
					changes++
				}
			}
			mu.Unlock()
			if all {
				break
			}
			if step > 100_000 {
				t.Fatalf("jobs still unfinished after %v: %s", time.Since(start), render(snap))
			}
			time.Sleep(time.Second)
		}
		wg.Wait()
		var turns, preempts int
		for _, j := range jobs {
			if j.ran != j.work {
				t.Errorf("%s ran %v, want %v", j.id, j.ran, j.work)
			}
			turns += j.turns
			preempts += j.preempt
		}
		if got := render(s.Snapshot()); got != "idle" {
			t.Errorf("after all jobs: %s", got)
		}
		t.Logf("%d jobs done after %v: %d turns, %d preemptions, %d priority changes", n, time.Since(start), turns, preempts, changes)
		if preempts == 0 || changes == 0 {
			t.Errorf("the simulation exercised too little: %d preemptions, %d priority changes", preempts, changes)
		}
	})
}

// checkSlots checks what holds at every moment: the slots held in each
// pool, counted from the job lists, are what the snapshot says and never
// more than the pool has. Jobs told to stop keep their slot until they
// release it, so they count.
func checkSlots(t *testing.T, cfg SchedulerConfig, snap Snapshot) {
	t.Helper()
	fgHeld := len(snap.Classes[0].Running) - len(snap.Classes[0].Elsewhere)
	bgHeld := len(snap.Classes[0].Elsewhere)
	for _, c := range snap.Classes[1:] {
		bgHeld += len(c.Running) - len(c.Elsewhere)
		fgHeld += len(c.Elsewhere)
	}
	if fgHeld != snap.ForegroundHeld || bgHeld != snap.BackgroundHeld {
		t.Errorf("slots held: foreground %d, background %d; snapshot says %d, %d", fgHeld, bgHeld, snap.ForegroundHeld, snap.BackgroundHeld)
	}
	if bgHeld > cfg.Slots {
		t.Errorf("%d background slots held, more than %d: %s", bgHeld, cfg.Slots, render(snap))
	}
	if fgHeld > cfg.MaxForeground {
		t.Errorf("%d foreground slots held, more than %d: %s", fgHeld, cfg.MaxForeground, render(snap))
	}
}

// checkSettled checks the rules on a scheduler whose callers have all
// reacted: no job told to stop still holds a slot, no slot is idle while a
// job of its pool waits, no background job runs while a job of a higher
// class waits, and only FOREGROUND jobs (waiting for a full foreground)
// run in a slot of the other pool.
func checkSettled(t *testing.T, cfg SchedulerConfig, snap Snapshot) {
	t.Helper()
	bgWait := 0
	worstRunning, bestWaiting := -1, len(classes)
	for r, c := range snap.Classes {
		if len(c.Stopping) > 0 {
			t.Errorf("%s jobs told to stop still hold their slots: %v", c.Priority, c.Stopping)
		}
		if r == 0 {
			if len(c.Waiting) > 0 && snap.ForegroundHeld < cfg.MaxForeground {
				t.Errorf("foreground jobs wait with %d of %d slots held", snap.ForegroundHeld, cfg.MaxForeground)
			}
			if len(c.Elsewhere) > 0 && snap.ForegroundHeld < cfg.MaxForeground {
				t.Errorf("foreground jobs %v hold background slots with %d of %d foreground slots held", c.Elsewhere, snap.ForegroundHeld, cfg.MaxForeground)
			}
			continue
		}
		if len(c.Elsewhere) > 0 {
			t.Errorf("%s jobs %v hold foreground slots", c.Priority, c.Elsewhere)
		}
		bgWait += len(c.Waiting)
		if len(c.Running) > 0 {
			worstRunning = r
		}
		if len(c.Waiting) > 0 && r < bestWaiting {
			bestWaiting = r
		}
	}
	if bgWait > 0 && snap.BackgroundHeld < cfg.Slots {
		t.Errorf("background jobs wait with %d of %d slots held", snap.BackgroundHeld, cfg.Slots)
	}
	if worstRunning > bestWaiting {
		t.Errorf("a %s job runs while a %s job waits", classes[worstRunning], classes[bestWaiting])
	}
}

// TestSchedulerConcurrentUse hammers one scheduler from many goroutines in
// real time (for the race detector) with a tiny time slice, and checks the
// slot limits from inside.
func TestSchedulerConcurrentUse(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := SchedulerConfig{Slots: 3, MaxForeground: 2, TimeSlice: 50 * time.Microsecond}
	s := NewScheduler(cfg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range 300 {
				id := fmt.Sprintf("j%d", rng.IntN(24))
				switch rng.IntN(8) {
				case 0:
					s.SetPriority(id, classes[rng.IntN(len(classes))])
					continue
				case 1:
					s.Remove(id)
					continue
				}
				actx, acancel := context.WithCancel(ctx)
				if i%7 == 0 {
					acancel() // sometimes give up at once
				}
				tk, err := s.Acquire(actx, id, classes[rng.IntN(len(classes))])
				acancel()
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					continue
				}
				checkSlots(t, cfg, s.Snapshot())
				if rng.IntN(2) == 0 {
					select {
					case <-tk.Preempted():
					case <-time.After(100 * time.Microsecond):
					}
				}
				tk.Release()
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("workers did not finish in time")
	}
	if got := render(s.Snapshot()); got != "idle" {
		t.Errorf("after all workers: %s", got)
	}
}
