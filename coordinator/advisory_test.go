package coordinator_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// waitFor polls cond until it holds; 20 s without it fails the test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// crashingAgent plays the pool's agents, each of which crashes on every
// dispatch it gets: it fetches from the pool consumer and hands every
// message back at once. It returns the deliveries it saw per job and a stop
// function.
func crashingAgent(t *testing.T, c jetstream.Consumer) (deliveries func(id string) []uint64, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu   sync.Mutex
		seen = map[string][]uint64{}
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		for ctx.Err() == nil {
			fctx, fcancel := context.WithTimeout(ctx, time.Second)
			batch, err := c.Fetch(1, jetstream.FetchContext(fctx))
			if err != nil {
				fcancel()
				continue
			}
			for m := range batch.Messages() {
				cmd, err := dispatch.Decode(m)
				md, merr := m.Metadata()
				if err != nil || merr != nil {
					t.Errorf("crashing agent: %v %v", err, merr)
					continue
				}
				mu.Lock()
				seen[cmd.JobID] = append(seen[cmd.JobID], md.NumDelivered)
				mu.Unlock()
				_ = m.Nak()
			}
			fcancel()
		}
	})
	return func(id string) []uint64 {
			mu.Lock()
			defer mu.Unlock()
			return append([]uint64(nil), seen[id]...)
		}, func() {
			cancel()
			wg.Wait()
		}
}

// deadLettersReady waits until the coordinator listens for max-deliveries
// advisories (an advisory sent earlier would not be kept).
func (e *env) deadLettersReady() {
	e.t.Helper()
	waitFor(e.t, "the dead-dispatch consumer", func() bool {
		_, err := e.js.Consumer(context.Background(), coordinator.DeadDispatchStream, "coordinator")
		return err == nil
	})
}

// pendingCommand returns the command waiting on subject, or false.
func (e *env) pendingCommand(subject string) (dispatch.Command, uint64, bool) {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), dispatch.StreamName)
	if err != nil {
		e.t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(context.Background(), subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return dispatch.Command{}, 0, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var c dispatch.Command
	if err := json.Unmarshal(raw.Data, &c); err != nil {
		e.t.Fatal(err)
	}
	return c, raw.Sequence, true
}

func (e *env) events(id string) []events.Event {
	e.t.Helper()
	evs, err := e.store.Load(context.Background(), events.JobSubject(id), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

func failures(evs []events.Event) []events.ErrorInfo {
	var out []events.ErrorInfo
	for i := range evs {
		if evs[i].Type == events.TypeJobFailed {
			p, err := evs[i].Payload()
			if err != nil {
				panic(err)
			}
			out = append(out, p.(*events.JobFailed).Error)
		}
	}
	return out
}

func (e *env) state(id string) job.State {
	e.t.Helper()
	_, m, _ := e.do("GET", "/v1/jobs/"+id, "")
	s, _ := m["state"].(string)
	return job.State(s)
}

// TestDeadDispatchFailsJob: agents that crash on a job's dispatch make NATS
// give up on it after MaxDeliver deliveries; the coordinator then fails the
// job (ERROR, E_FAIL in the queue manager's context, exactly one JobFailed)
// and deletes the dead command, so that a Resume dispatches the job again.
func TestDeadDispatchFailsJob(t *testing.T) {
	e := newEnv(t)
	e.deadLettersReady()
	ctx := t.Context()
	const maxDeliver = 3
	pool, err := dispatch.EnsureConsumer(ctx, e.js, dispatch.PoolConsumer(job.DefaultPool), dispatch.PoolFilter(job.DefaultPool),
		dispatch.ConsumerOptions{AckWait: 5 * time.Second, MaxDeliver: maxDeliver})
	if err != nil {
		t.Fatal(err)
	}
	if pool.CachedInfo().Config.MaxDeliver != maxDeliver {
		t.Fatalf("consumer MaxDeliver %d", pool.CachedInfo().Config.MaxDeliver)
	}

	id := e.create(`{"display_name":"poison","resume":true,"files":[` + goodFile + `]}`)
	subject := dispatch.PoolSubject(job.DefaultPool, id)
	first, _, ok := e.pendingCommand(subject)
	if !ok {
		t.Fatal("no dispatch after create+resume")
	}

	deliveries, stop := crashingAgent(t, pool)
	waitFor(t, "the job to fail", func() bool { return len(failures(e.events(id))) > 0 })
	stop()

	if got := deliveries(id); len(got) != maxDeliver || got[maxDeliver-1] != maxDeliver {
		t.Fatalf("deliveries %v, want 1..%d", got, maxDeliver)
	}
	fails := failures(e.events(id))
	if len(fails) != 1 {
		t.Fatalf("%d JobFailed events, want 1: %+v", len(fails), fails)
	}
	f := fails[0]
	if f.Code != job.E_FAIL.Symbol || f.HResult != job.E_FAIL.HResultString() || f.Context != job.ContextGeneralQueueManager ||
		!strings.Contains(f.Description, "no agent could run the job: its dispatch was delivered 3 times") {
		t.Fatalf("error %+v", f)
	}
	if st := e.state(id); st != job.Errored {
		t.Fatalf("state %s, want ERROR", st)
	}
	// The dead command was deleted before the job was failed.
	if c, _, ok := e.pendingCommand(subject); ok {
		t.Fatalf("dead command still pending: %+v", c)
	}

	// Resume: a new dispatch is accepted and delivered.
	if st, m, _ := e.do("POST", "/v1/jobs/"+id+"/resume", ""); st != 200 {
		t.Fatalf("resume: %d %v", st, m)
	}
	again, _, ok := e.pendingCommand(subject)
	if !ok || again.JobSeq <= first.JobSeq || again.Kind != dispatch.KindTransfer {
		t.Fatalf("after resume: pending %v %+v (first dispatch %+v)", ok, again, first)
	}
	batch, err := pool.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []dispatch.Command
	for m := range batch.Messages() {
		c, err := dispatch.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		if md, _ := m.Metadata(); md.NumDelivered != 1 {
			t.Errorf("new dispatch delivered %d times", md.NumDelivered)
		}
		got = append(got, c)
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 1 || got[0] != again {
		t.Fatalf("fetched %+v, want %+v", got, again)
	}
	if st := e.state(id); st != job.Queued {
		t.Fatalf("state after resume %s", st)
	}
	if n := len(failures(e.events(id))); n != 1 {
		t.Fatalf("%d JobFailed events after resume", n)
	}
}

// TestDeadDispatchRepeatedAdvisory: an advisory handled twice (a redelivery,
// or two coordinators) changes nothing the second time, even after the job
// was resumed.
func TestDeadDispatchRepeatedAdvisory(t *testing.T) {
	e := newEnv(t)
	e.deadLettersReady()
	ctx := t.Context()
	pool, err := dispatch.EnsureConsumer(ctx, e.js, dispatch.PoolConsumer(job.DefaultPool), dispatch.PoolFilter(job.DefaultPool),
		dispatch.ConsumerOptions{AckWait: 5 * time.Second, MaxDeliver: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Capture the server's advisory to replay it.
	nc := e.js.Conn()
	advisories := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe(dispatch.MaxDeliveriesAdvisories, advisories)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	id := e.create(`{"display_name":"poison","resume":true,"files":[` + goodFile + `]}`)
	_, stop := crashingAgent(t, pool)
	var adv *nats.Msg
	select {
	case adv = <-advisories:
	case <-time.After(20 * time.Second):
		t.Fatal("no max-deliveries advisory")
	}
	stop()
	waitFor(t, "the job to fail", func() bool { return len(failures(e.events(id))) > 0 })
	if st, m, _ := e.do("POST", "/v1/jobs/"+id+"/resume", ""); st != 200 {
		t.Fatalf("resume: %d %v", st, m)
	}
	before := len(e.events(id))

	if _, err := e.js.Publish(ctx, adv.Subject, adv.Data); err != nil {
		t.Fatal(err)
	}
	c, err := e.js.Consumer(ctx, coordinator.DeadDispatchStream, "coordinator")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the repeated advisory to be handled", func() bool {
		i, err := c.Info(ctx)
		return err == nil && i.NumPending == 0 && i.NumAckPending == 0 && i.AckFloor.Stream >= 2
	})
	if n := len(e.events(id)); n != before {
		t.Fatalf("repeated advisory wrote %d events", n-before)
	}
	if st := e.state(id); st != job.Queued {
		t.Fatalf("state %s, want QUEUED", st)
	}
	if _, _, ok := e.pendingCommand(dispatch.PoolSubject(job.DefaultPool, id)); !ok {
		t.Fatal("the resumed job's dispatch was deleted")
	}
}

// TestDeadDispatchOfJobThatMovedOn: a dead dispatch of a job that no longer
// needs it (suspended meanwhile) is deleted without failing the job, and the
// job's next dispatch is not blocked by it.
func TestDeadDispatchOfJobThatMovedOn(t *testing.T) {
	e := newEnv(t)
	e.deadLettersReady()
	ctx := t.Context()
	pool, err := dispatch.EnsureConsumer(ctx, e.js, dispatch.PoolConsumer(job.DefaultPool), dispatch.PoolFilter(job.DefaultPool),
		dispatch.ConsumerOptions{AckWait: 5 * time.Second, MaxDeliver: 2})
	if err != nil {
		t.Fatal(err)
	}
	id := e.create(`{"display_name":"suspended","files":[` + goodFile + `]}`) // SUSPENDED
	subject := dispatch.PoolSubject(job.DefaultPool, id)
	// A dispatch left over from before the Suspend.
	if err := dispatch.Publish(ctx, e.js, subject, dispatch.Command{Kind: dispatch.KindTransfer, JobID: id, JobSeq: 1}); err != nil {
		t.Fatal(err)
	}
	before := len(e.events(id))
	_, stop := crashingAgent(t, pool)
	waitFor(t, "the dead command to be deleted", func() bool {
		_, _, ok := e.pendingCommand(subject)
		return !ok
	})
	stop()
	if n := len(e.events(id)); n != before {
		t.Fatalf("%d events written for a job the dispatch no longer mattered to", n-before)
	}
	if st := e.state(id); st != job.Suspended {
		t.Fatalf("state %s", st)
	}
	if st, m, _ := e.do("POST", "/v1/jobs/"+id+"/resume", ""); st != 200 {
		t.Fatalf("resume: %d %v", st, m)
	}
	if c, _, ok := e.pendingCommand(subject); !ok || c.JobSeq <= 1 {
		t.Fatalf("no new dispatch after resume: %v %+v", ok, c)
	}
}

// TestMaxDeliveriesKeepsCommand pins down the server behaviour the
// coordinator's handling exists for: after MaxDeliver deliveries the
// command is never delivered again but stays in the work-queue stream, and
// it refuses the job's next command (one pending command per subject).
func TestMaxDeliveriesKeepsCommand(t *testing.T) {
	_, nc, js := eventstest.StartServer(t)
	ctx := t.Context()
	cmds, err := dispatch.EnsureStream(ctx, js, dispatch.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := dispatch.EnsureConsumer(ctx, js, dispatch.PoolConsumer("p"), dispatch.PoolFilter("p"),
		dispatch.ConsumerOptions{AckWait: 5 * time.Second, MaxDeliver: 2})
	if err != nil {
		t.Fatal(err)
	}
	advisories := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe(dispatch.MaxDeliveriesAdvisories, advisories)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	subject := dispatch.PoolSubject("p", "job1")
	if err := dispatch.Publish(ctx, js, subject, dispatch.Command{Kind: dispatch.KindTransfer, JobID: "job1", JobSeq: 3}); err != nil {
		t.Fatal(err)
	}
	deliveries, stop := crashingAgent(t, pool)
	var adv struct {
		Type       string `json:"type"`
		Stream     string `json:"stream"`
		Consumer   string `json:"consumer"`
		StreamSeq  uint64 `json:"stream_seq"`
		Deliveries uint64 `json:"deliveries"`
	}
	select {
	case m := <-advisories:
		if err := json.Unmarshal(m.Data, &adv); err != nil {
			t.Fatal(err)
		}
		if m.Subject != "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.FERRY_CMDS.pool-p" {
			t.Errorf("advisory subject %s", m.Subject)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no max-deliveries advisory")
	}
	stop()
	if adv.Type != "io.nats.jetstream.advisory.v1.max_deliver" || adv.Stream != dispatch.StreamName ||
		adv.Consumer != "pool-p" || adv.Deliveries != 2 || adv.StreamSeq == 0 {
		t.Fatalf("advisory %+v", adv)
	}
	if got := deliveries("job1"); len(got) != 2 {
		t.Fatalf("deliveries %v", got)
	}
	raw, err := cmds.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		t.Fatalf("dead command gone from the stream: %v", err)
	}
	if raw.Subject != subject {
		t.Fatalf("advisory names %s", raw.Subject)
	}
	err = dispatch.Publish(ctx, js, subject, dispatch.Command{Kind: dispatch.KindTransfer, JobID: "job1", JobSeq: 9})
	if !errors.Is(err, dispatch.ErrPending) {
		t.Fatalf("next dispatch: %v, want ErrPending", err)
	}
	// Deleted, the subject takes the next command.
	if err := cmds.DeleteMsg(ctx, adv.StreamSeq); err != nil {
		t.Fatal(err)
	}
	if err := dispatch.Publish(ctx, js, subject, dispatch.Command{Kind: dispatch.KindTransfer, JobID: "job1", JobSeq: 9}); err != nil {
		t.Fatalf("dispatch after delete: %v", err)
	}
}
