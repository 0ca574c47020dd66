package main

// Chaos with real processes: a nats-server started by the test (JetStream on
// a temp dir, TCP on loopback), `ferry coordinator run`, and three `ferry
// agent run` processes sharing one root (--shared-root: one host stands for
// a pool mounting the same storage). While 200 jobs of mixed sizes run
// against a throttled HTTPS origin, agents are killed (SIGKILL) and
// restarted, paused (SIGSTOP) past their AckWait and resumed (SIGCONT), and
// restarted gracefully (SIGTERM). Afterwards the event log must tell a
// consistent story: every job TRANSFERRED once and then ACKNOWLEDGED with
// the right bytes, no write of a fenced agent accepted, the read model equal
// to a replay, and no staged file left behind.
//
// FERRY_CHAOS_SEED=<n> repeats a run's schedule of jobs and faults (the
// timing of processes still varies; the outcome must not).

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/time/rate"
)

// Chaos parameters.
const (
	chaosJobs     = 200
	chaosInFlight = 12 // jobs created and not yet TRANSFERRED, at most
	chaosAckWait  = 3 * time.Second
	chaosOriginBP = 2 << 20 // bytes/s of each origin response
	// chaosBudget bounds the time faults are injected; the jobs still
	// running then finish on healed agents.
	chaosBudget = 70 * time.Second
)

// throttledOrigin serves /f/<size> (services.Pattern bytes, with Range and
// ETag) over HTTPS at bps bytes/s per response, so that transfers take long
// enough for faults to hit them in the middle.
type throttledOrigin struct {
	srv    *httptest.Server
	caFile string
	bps    int
}

func newThrottledOrigin(t *testing.T, bps int) *throttledOrigin {
	o := &throttledOrigin{bps: bps}
	o.srv = httptest.NewUnstartedServer(http.HandlerFunc(o.serve))
	o.srv.EnableHTTP2 = false
	o.srv.StartTLS()
	t.Cleanup(func() {
		o.srv.CloseClientConnections()
		o.srv.Close()
	})
	o.caFile = filepath.Join(t.TempDir(), "origin-ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.srv.Certificate().Raw})
	if err := os.WriteFile(o.caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return o
}

func (o *throttledOrigin) url(size int64, name string) string {
	return o.srv.URL + "/f/" + strconv.FormatInt(size, 10) + "?n=" + name
}

func (o *throttledOrigin) serve(w http.ResponseWriter, r *http.Request) {
	s, ok := strings.CutPrefix(r.URL.Path, "/f/")
	size, err := strconv.ParseInt(s, 10, 64)
	if !ok || err != nil || size < 0 {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"gen-`+s+`"`)
	body := &throttled{ReadSeeker: services.NewPattern(size), ctx: r.Context(),
		lim: rate.NewLimiter(rate.Limit(o.bps), throttleChunk)}
	http.ServeContent(w, r, "f.bin", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), body)
}

const throttleChunk = 64 << 10

type throttled struct {
	io.ReadSeeker
	ctx context.Context
	lim *rate.Limiter
}

func (r *throttled) Read(b []byte) (int, error) {
	if len(b) > throttleChunk {
		b = b[:throttleChunk]
	}
	n, err := r.ReadSeeker.Read(b)
	if n > 0 {
		if werr := r.lim.WaitN(r.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// chaosJob is one job of the run.
type chaosJob struct {
	idx      int
	id       string
	size     int64
	url      string
	priority job.Priority
	dest     string
	sum      string
}

// chaosAgent is one agent ID and the processes that ran as it.
type chaosAgent struct {
	id      string
	dataDir string
	procs   []*roleProc
	started time.Time // of the current process
	state   string    // "up", "stopped", "down"
	calm    time.Time // no new fault before this
}

func (a *chaosAgent) proc() *roleProc { return a.procs[len(a.procs)-1] }

// fault is one injected fault.
type fault struct {
	kind  string // "kill" (SIGKILL, restart later), "stop" (SIGSTOP, SIGCONT later), "term" (SIGTERM, restart at once)
	agent string
	at    time.Time // the signal
	end   time.Time // SIGCONT or the restart
	proc  *roleProc // the process signalled
	since time.Time // when it started
}

// feeder creates the jobs (at most chaosInFlight unfinished at a time),
// completes each once it is TRANSFERRED, and watches until every job is
// ACKNOWLEDGED (or failed).
type feeder struct {
	t      *testing.T
	client *services.Client
	jobs   []*chaosJob

	mu          sync.Mutex
	created     int
	transferred int
	settled     int // ACKNOWLEDGED or ERROR
	failures    []string
	stuck       []*chaosJob // unsettled when the feeder gave up
}

func (f *feeder) progress() (created, transferred, settled int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.created, f.transferred, f.settled
}

func (f *feeder) fail(format string, args ...any) {
	f.mu.Lock()
	f.failures = append(f.failures, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

func (f *feeder) run(ctx context.Context) {
	type watch struct {
		j           *chaosJob
		transferred bool
		completed   bool
		transient   bool
	}
	var open []*watch
	next := 0
	giveUp := func() {
		f.fail("gave up with %d jobs unsettled: %v", len(open), ctx.Err())
		f.mu.Lock()
		for _, w := range open {
			f.stuck = append(f.stuck, w.j)
		}
		f.mu.Unlock()
	}
	tick := time.NewTicker(100 * time.Millisecond) // polling the API for conditions
	defer tick.Stop()
	for {
		unfinished := 0
		for _, w := range open {
			if !w.transferred {
				unfinished++
			}
		}
		for next < len(f.jobs) && unfinished < chaosInFlight {
			j := f.jobs[next]
			retry := int64(job.MinimumRetryDelayFloor / time.Second)
			created, err := f.client.Create(ctx, coordinator.CreateRequest{
				DisplayName: fmt.Sprintf("chaos-%03d", j.idx), Priority: string(j.priority), Resume: true,
				MinimumRetryDelayS: &retry,
				Files:              []events.FileSpec{{RemoteURL: j.url, LocalName: j.dest}},
			})
			if err != nil {
				f.fail("create job %d: %v", j.idx, err)
				return
			}
			j.id = created.ID
			open = append(open, &watch{j: j})
			next++
			unfinished++
			f.mu.Lock()
			f.created = next
			f.mu.Unlock()
		}
		if next == len(f.jobs) && len(open) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			giveUp()
			return
		case <-tick.C:
		}
		keep := open[:0]
		for _, w := range open {
			cur, err := f.client.Get(ctx, w.j.id)
			if err != nil {
				if ctx.Err() != nil {
					giveUp()
					return
				}
				f.fail("get job %d (%s): %v", w.j.idx, w.j.id, err)
				return
			}
			switch cur.State {
			case job.TransientError:
				if !w.transient {
					f.t.Logf("job %d (%s) in TRANSIENT_ERROR: %+v", w.j.idx, w.j.id, cur.Error)
					w.transient = true
				}
			case job.Errored, job.Cancelled:
				f.fail("job %d (%s) is %s: %+v", w.j.idx, w.j.id, cur.State, cur.Error)
				f.mu.Lock()
				f.settled++
				f.mu.Unlock()
				continue
			case job.Transferred, job.Acknowledged:
				if !w.transferred {
					w.transferred = true
					f.mu.Lock()
					f.transferred++
					f.mu.Unlock()
				}
			}
			if cur.State == job.Acknowledged {
				f.mu.Lock()
				f.settled++
				f.mu.Unlock()
				continue
			}
			if cur.State == job.Transferred && !w.completed {
				if _, err := f.client.Action(ctx, w.j.id, "complete"); err != nil {
					f.fail("complete job %d (%s): %v", w.j.idx, w.j.id, err)
					return
				}
				w.completed = true
			}
			keep = append(keep, w)
		}
		open = keep
	}
}

// TestChaosAgents: see the top of this file.
func TestChaosAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test: real processes for a few minutes")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FERRY_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("FERRY_CHAOS_SEED=%q: %v", s, err)
		}
	}
	t.Logf("chaos seed %d (FERRY_CHAOS_SEED=%d repeats it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	dur := func(d time.Duration) time.Duration { return time.Duration(rng.Int64N(int64(d))) }
	began := time.Now()

	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	for _, args := range [][]string{
		{"ca", "init", "--dir", pki, "--trust-domain", "chaos.test"},
		{"ca", "issue", "--dir", pki, "--role", "service", "--name", "coordinator", "--host", "127.0.0.1", "--host", "localhost"},
		{"ca", "issue", "--dir", pki, "--role", "admin", "--name", "root"},
	} {
		if _, code := ferry(t, dir, args...); code != 0 {
			t.Fatalf("ferry %v exited %d", args, code)
		}
	}
	file := func(name string) string { return filepath.Join(pki, name) }

	ns, _, js := eventstest.StartServer(t)
	natsURL := ns.ClientURL()
	origin := newThrottledOrigin(t, chaosOriginBP)

	coord := startRole(t, "coordinator", []string{"FERRY_NOTIFY_DISABLED=true"},
		"coordinator", "run", "--id", "c1", "--listen", "127.0.0.1:0", "--nats-url", natsURL,
		"--reconcile-interval", "1s", "--cert", file("coordinator.pem"), "--key", file("coordinator-key.pem"),
		"--ca-cert", file("ca.pem"), "--log-level", "info")
	coordURL := coord.waitLog("coordinator API listening", 30*time.Second)["url"].(string)
	coord.waitLog("coordinator running", 30*time.Second)
	client, err := services.Discover(services.ClientConfig{Addr: coordURL, DataDir: dir,
		CACert: file("ca.pem"), Cert: file("root.pem"), Key: file("root-key.pem")})
	if err != nil {
		t.Fatal(err)
	}

	// The agents share one root: a pool on shared storage.
	root := filepath.Join(dir, "root")
	agents := map[string]*chaosAgent{}
	var agentIDs []string
	startAgent := func(a *chaosAgent) {
		t.Helper()
		p := startRole(t, fmt.Sprintf("agent %s#%d", a.id, len(a.procs)+1), nil,
			"agent", "run", "--id", a.id, "--nats-url", natsURL, "--root", root, "--shared-root",
			"--data-dir", a.dataDir, "--ack-wait", chaosAckWait.String(),
			"--checkpoint-interval", "250ms", "--checkpoint-bytes", strconv.Itoa(1<<20),
			"--origin-ca", origin.caFile, "--drain-timeout", "10s", "--log-level", "debug")
		a.procs, a.started = append(a.procs, p), time.Now()
		p.waitLog("agent running", 30*time.Second)
		a.state = "up"
	}
	for i := 1; i <= 3; i++ {
		a := &chaosAgent{id: fmt.Sprintf("a%d", i), dataDir: filepath.Join(dir, fmt.Sprintf("agent%d", i))}
		agents[a.id] = a
		agentIDs = append(agentIDs, a.id)
		startAgent(a)
	}

	// The jobs: mostly small files, some that take seconds, a few that take
	// many; priorities mixed so that the agents' schedulers preempt.
	jobs := make([]*chaosJob, chaosJobs)
	var totalBytes int64
	for i := range jobs {
		var size int64
		switch r := rng.IntN(100); {
		case r < 60:
			size = 16<<10 + rng.Int64N(1<<20)
		case r < 90:
			size = 1<<20 + rng.Int64N(5<<20)
		default:
			size = 8<<20 + rng.Int64N(16<<20)
		}
		prio := job.Normal
		switch r := rng.IntN(100); {
		case r < 5:
			prio = job.Foreground
		case r < 15:
			prio = job.High
		case r < 25:
			prio = job.Low
		}
		name := fmt.Sprintf("j%03d.bin", i)
		jobs[i] = &chaosJob{idx: i, size: size, priority: prio, url: origin.url(size, name),
			dest: filepath.Join(root, fmt.Sprintf("d%d", i%7), name)}
		totalBytes += size
	}
	sums := map[int64]string{}
	for _, j := range jobs {
		if _, ok := sums[j.size]; !ok {
			sums[j.size] = servicestest.Sum(j.size)
		}
		j.sum = sums[j.size]
	}
	t.Logf("%d jobs, %d MiB in all; origin %d KiB/s per response; agents' AckWait %s",
		len(jobs), totalBytes>>20, chaosOriginBP>>10, chaosAckWait)

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	f := &feeder{t: t, client: client, jobs: jobs}
	feederDone := make(chan struct{})
	go func() { defer close(feederDone); f.run(ctx) }()
	// Should the test fail before the feeder ends, stop and wait for it.
	t.Cleanup(func() { cancel(); <-feederDone })

	// The faults, from this goroutine: the next injection at a random
	// moment, SIGCONTs and restarts when they are due.
	var faults []*fault
	type due struct {
		at time.Time
		do func()
	}
	var pending []due
	impaired := func() int {
		n := 0
		for _, a := range agents {
			if a.state != "up" {
				n++
			}
		}
		return n
	}
	restart := func(a *chaosAgent, fl *fault) func() {
		return func() {
			fl.end = time.Now()
			startAgent(a)
			a.calm = time.Now().Add(chaosAckWait)
		}
	}
	inject := func() {
		var cands []*chaosAgent
		for _, id := range agentIDs {
			if a := agents[id]; a.state == "up" && time.Now().After(a.calm) {
				cands = append(cands, a)
			}
		}
		if len(cands) == 0 || impaired() >= 2 {
			return
		}
		a := cands[rng.IntN(len(cands))]
		p := a.proc()
		fl := &fault{agent: a.id, proc: p, since: a.started}
		switch r := rng.IntN(100); {
		case r < 40:
			fl.kind, fl.at = "kill", time.Now()
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			_ = p.cmd.Wait()
			a.state = "down"
			down := chaosAckWait/2 + dur(2*chaosAckWait)
			pending = append(pending, due{time.Now().Add(down), restart(a, fl)})
		case r < 75:
			fl.kind, fl.at = "stop", time.Now()
			_ = p.cmd.Process.Signal(syscall.SIGSTOP)
			a.state = "stopped"
			paused := chaosAckWait + time.Second + dur(2*time.Second)
			pending = append(pending, due{time.Now().Add(paused), func() {
				fl.end = time.Now()
				_ = p.cmd.Process.Signal(syscall.SIGCONT)
				a.state = "up"
				a.calm = time.Now().Add(chaosAckWait)
			}})
		default:
			fl.kind, fl.at = "term", time.Now()
			if exit, took := p.stop(syscall.SIGTERM); exit != 0 {
				t.Fatalf("agent %s exited %d after SIGTERM (%s)", a.id, exit, took)
			}
			a.state = "down"
			restart(a, fl)()
		}
		faults = append(faults, fl)
		t.Logf("%6.1fs %s %s", time.Since(began).Seconds(), fl.kind, a.id)
	}

	chaosStart := time.Now()
	nextFault := time.Now().Add(time.Second + dur(2*time.Second))
	injecting := true
	for {
		created, transferred, _ := f.progress()
		if injecting && (time.Since(chaosStart) > chaosBudget || created == len(jobs) && transferred >= len(jobs)-3) {
			injecting = false
			t.Logf("%6.1fs no more faults (%d injected); healing", time.Since(began).Seconds(), len(faults))
			for _, d := range pending {
				d.do()
			}
			pending = nil
		}
		if !injecting {
			break
		}
		wake := nextFault
		for _, d := range pending {
			if d.at.Before(wake) {
				wake = d.at
			}
		}
		timer := time.NewTimer(time.Until(wake))
		select {
		case <-feederDone:
			timer.Stop()
		case <-timer.C:
		}
		now := time.Now()
		var later []due
		for _, d := range pending {
			if !now.Before(d.at) {
				d.do()
			} else {
				later = append(later, d)
			}
		}
		pending = later
		if !now.Before(nextFault) {
			inject()
			nextFault = time.Now().Add(time.Second + dur(3*time.Second))
		}
	}
	<-feederDone
	jobsDone := time.Now()
	created, transferred, settled := f.progress()
	t.Logf("%6.1fs jobs settled: %d created, %d transferred, %d settled", time.Since(began).Seconds(), created, transferred, settled)
	for _, msg := range f.failures {
		t.Error(msg)
	}
	if len(f.stuck) > 0 {
		store, err := events.NewJetStreamStore(context.Background(), js)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range f.stuck {
			evs, err := store.Load(context.Background(), events.JobSubject(j.id), 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("unsettled job %d (%s, %s, %d bytes):\n%s", j.idx, j.id, j.priority, j.size, timeline(evs, began))
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Every job is ACKNOWLEDGED with the origin's bytes.
	store, err := events.NewJetStreamStore(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	history := map[string][]events.Event{}
	for _, j := range jobs {
		evs, err := store.Load(context.Background(), events.JobSubject(j.id), 0)
		if err != nil {
			t.Fatal(err)
		}
		history[j.id] = evs
		served, err := client.Get(context.Background(), j.id)
		if err != nil {
			t.Fatal(err)
		}
		if served.State != job.Acknowledged || !served.Files[0].Completed || served.Files[0].SHA256 != j.sum {
			t.Errorf("job %d (%s): %s, file %+v; want ACKNOWLEDGED with sha256 %s", j.idx, j.id, served.State, served.Files[0], j.sum)
		}
		if got := servicestest.FileSum(t, j.dest); got != j.sum {
			t.Errorf("job %d (%s): %s has sha256 %s, want %s (%d bytes)", j.idx, j.id, j.dest, got, j.sum, j.size)
		}
		// The read model equals a fresh replay of the log.
		replayed, err := job.Replay(evs)
		if err != nil {
			t.Fatalf("job %d (%s): replay: %v", j.idx, j.id, err)
		}
		if diff := cmp.Diff(replayed, served); diff != "" {
			t.Errorf("job %d (%s): read model differs from a fresh replay (-replay +served):\n%s", j.idx, j.id, diff)
		}
		checkJobHistory(t, j, evs)
	}

	// No staged file (or its sidecar) is left anywhere.
	for _, d := range append([]string{root}, dataDirs(agents)...) {
		_ = filepath.WalkDir(d, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if strings.Contains(e.Name(), ".ferry-") && strings.Contains(e.Name(), ".part") {
				t.Errorf("stray staged file %s", path)
				for _, j := range jobs {
					if strings.Contains(e.Name(), j.id) {
						t.Logf("job %d (%s):\n%s%s", j.idx, j.id, timeline(history[j.id], began), agentLines(agents, j.id))
					}
				}
			}
			return nil
		})
	}

	// An agent resumed after losing jobs while it was paused stopped their
	// transfers.
	checkPaused(t, faults, history)

	// Failover: from a SIGKILL to each job the killed agent held running
	// on another agent.
	reportFailover(t, faults, history)

	// Every agent and the coordinator stop cleanly on SIGTERM.
	for _, id := range agentIDs {
		if exit, took := agents[id].proc().stop(syscall.SIGTERM); exit != 0 {
			t.Errorf("agent %s exited %d after SIGTERM (%s)", id, exit, took)
		}
	}
	if exit, took := coord.stop(syscall.SIGTERM); exit != 0 {
		t.Errorf("coordinator exited %d after SIGTERM (%s)", exit, took)
	}
	t.Logf("chaos run: %d faults, jobs settled after %s, whole test %s", len(faults),
		jobsDone.Sub(began).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

func dataDirs(agents map[string]*chaosAgent) []string {
	var out []string
	for _, a := range agents {
		out = append(out, a.dataDir)
	}
	slices.Sort(out)
	return out
}

// agentOf returns the agent ID of an agent's principal ("agent/<id>").
func agentOf(actor string) (string, bool) {
	return strings.CutPrefix(actor, "agent/")
}

// checkJobHistory checks one job's events: exactly one JobTransferred, and
// no event of a fenced agent. An agent A is fenced from the moment a
// JobLeased names another agent while A held the lease (or had leased the
// job before), until A leases the job again; no event whose actor is A may
// be stored meanwhile.
func checkJobHistory(t *testing.T, j *chaosJob, evs []events.Event) {
	t.Helper()
	transferred := 0
	holder := ""
	fenced := map[string]uint64{} // agent -> seq of the lease that fenced it
	for i := range evs {
		ev := &evs[i]
		if ev.Type == events.TypeJobTransferred {
			transferred++
		}
		if a, ok := agentOf(ev.Actor); ok {
			if seq, ok := fenced[a]; ok && ev.Type != events.TypeJobLeased {
				t.Errorf("job %d (%s): %s (seq %d) by agent %s, fenced by the lease at seq %d", j.idx, j.id, ev.Type, ev.Seq, a, seq)
			}
		}
		if ev.Type != events.TypeJobLeased {
			continue
		}
		p, err := ev.Payload()
		if err != nil {
			t.Fatal(err)
		}
		l := p.(*events.JobLeased)
		if a, _ := agentOf(ev.Actor); a != l.Agent {
			t.Errorf("job %d (%s): JobLeased (seq %d) for %s written by %s", j.idx, j.id, ev.Seq, l.Agent, ev.Actor)
		}
		if holder != "" && holder != l.Agent {
			fenced[holder] = ev.Seq
		}
		delete(fenced, l.Agent)
		holder = l.Agent
	}
	if transferred != 1 {
		t.Errorf("job %d (%s): %d JobTransferred events, want 1", j.idx, j.id, transferred)
	}
}

// heldAt replays evs up to time at and reports whether agent held the job
// then (leased, active, no complete pending) with a lease taken after since
// (by the process that ran from since, not an earlier one of the same ID).
func heldAt(evs []events.Event, agent string, since, at time.Time) bool {
	var j job.Job
	var leased time.Time
	for i := range evs {
		if evs[i].Time.After(at) {
			break
		}
		if err := job.Evolve(&j, &evs[i]); err != nil {
			return false
		}
		if evs[i].Type == events.TypeJobLeased {
			leased = evs[i].Time
		}
	}
	return j.State.Active() && j.Agent == agent && !j.PendingComplete && !leased.Before(since)
}

// takeover finds, after time at, the first JobLeased of the job and the
// first JobTransferring of that lease.
func takeover(evs []events.Event, at time.Time) (lease, running *events.Event, by string) {
	for i := range evs {
		ev := &evs[i]
		if !ev.Time.After(at) {
			continue
		}
		if lease == nil {
			if ev.Type == events.TypeJobLeased {
				p, _ := ev.Payload()
				lease, by = ev, p.(*events.JobLeased).Agent
			}
			continue
		}
		if ev.Type == events.TypeJobLeased {
			break
		}
		if ev.Type == events.TypeJobTransferring {
			return lease, ev, by
		}
	}
	return lease, nil, by
}

// checkPaused: for every SIGSTOP, the jobs the agent held that another
// agent leased before its SIGCONT are jobs the resumed agent says it
// stopped.
func checkPaused(t *testing.T, faults []*fault, history map[string][]events.Event) {
	t.Helper()
	lost := 0
	for _, fl := range faults {
		if fl.kind != "stop" {
			continue
		}
		stopped := stoppedJobs(fl.proc.logText())
		for id, evs := range history {
			if !heldAt(evs, fl.agent, fl.since, fl.at) {
				continue
			}
			lease, _, by := takeover(evs, fl.at)
			if lease == nil || by == fl.agent || !lease.Time.Before(fl.end) {
				continue
			}
			lost++
			if !stopped[id] {
				t.Errorf("agent %s lost job %s to %s while paused (%s, SIGCONT %s), and did not say it stopped it after SIGCONT:\n%s[%s]\n%s",
					fl.agent, id, by, fl.at.Format("15:04:05.000"), fl.end.Format("15:04:05.000"), timeline(evs, fl.at), fl.proc.name, procLines(fl.proc, id))
			}
		}
	}
	t.Logf("paused agents lost %d jobs to other agents while stopped; each was stopped after SIGCONT", lost)
}

// stoppedJobs are the jobs an agent's log says it stopped because it no
// longer held them.
func stoppedJobs(log string) map[string]bool {
	out := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Message string `json:"message"`
			Job     string `json:"job"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Job == "" {
			continue
		}
		switch line.Message {
		case "stopped: the agent no longer holds the job", "the job changed: stopping its transfer":
			out[line.Job] = true
		}
	}
	return out
}

// reportFailover logs, for every SIGKILL, how long each job the agent held
// took to be leased (and to transfer) on another agent.
func reportFailover(t *testing.T, faults []*fault, history map[string][]events.Event) {
	t.Helper()
	var leased, running []time.Duration
	self := 0
	for _, fl := range faults {
		if fl.kind != "kill" {
			continue
		}
		for _, evs := range history {
			if !heldAt(evs, fl.agent, fl.since, fl.at) {
				continue
			}
			lease, run, by := takeover(evs, fl.at)
			switch {
			case lease == nil:
				continue
			case by == fl.agent:
				self++ // the restarted agent took it back first
				continue
			}
			leased = append(leased, lease.Time.Sub(fl.at))
			if run != nil {
				running = append(running, run.Time.Sub(fl.at))
			}
		}
	}
	stats := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "no samples"
		}
		slices.Sort(ds)
		r := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
		return fmt.Sprintf("%d jobs: min %s, median %s, max %s", len(ds), r(ds[0]), r(ds[len(ds)/2]), r(ds[len(ds)-1]))
	}
	t.Logf("failover after SIGKILL (AckWait %s): to JobLeased on another agent: %s", chaosAckWait, stats(leased))
	t.Logf("failover after SIGKILL (AckWait %s): to JobTransferring on another agent: %s", chaosAckWait, stats(running))
	if self > 0 {
		t.Logf("failover after SIGKILL: %d jobs were taken back by the restarted agent itself (not counted)", self)
	}
}

// timeline is a job's events, one line each, for failure reports.
func timeline(evs []events.Event, began time.Time) string {
	var b strings.Builder
	for i := range evs {
		ev := &evs[i]
		data := string(ev.Data)
		if len(data) > 200 {
			data = data[:200] + "…"
		}
		fmt.Fprintf(&b, "  %7.3fs seq %d %s by %s %s\n", ev.Time.Sub(began).Seconds(), ev.Seq, ev.Type, ev.Actor, data)
	}
	return b.String()
}

// agentLines are the lines of every agent process's log that name job id.
func agentLines(agents map[string]*chaosAgent, id string) string {
	var b strings.Builder
	for _, a := range agents {
		for _, p := range a.procs {
			for _, line := range strings.Split(p.logText(), "\n") {
				if strings.Contains(line, id) {
					fmt.Fprintf(&b, "  [%s] %s\n", p.name, line)
				}
			}
		}
	}
	return b.String()
}

// procLines are the lines of one process's log that name job id.
func procLines(p *roleProc, id string) string {
	var b strings.Builder
	for _, line := range strings.Split(p.logText(), "\n") {
		if strings.Contains(line, id) {
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	return b.String()
}
