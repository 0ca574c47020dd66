package notify

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
)

// TestFlags: each job gets exactly the notifications its flags ask for,
// signed, with the state right after the event, in event order per job;
// progress checkpoints never notify, and jobs without settings get nothing.
func TestFlags(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	r := startNotifier(t, st, w, Config{})
	d := &driver{t: t, repo: st.repo}

	// a: files and the whole job, with a custom header that must not leak.
	d.create("a", notifyTo(w.url("/a"), "FILE_TRANSFERRED", "JOB_TRANSFERRED"), 2, "X-Api-Key: hunter2")
	// b: every modification.
	d.create("b", notifyTo(w.url("/b"), "JOB_MODIFICATION"), 1)
	// c: errors only.
	d.create("c", notifyTo(w.url("/c"), "JOB_ERROR"), 1)
	// e: no notifications.
	d.create("e", nil, 1)

	d.transfer("a", 3)
	d.complete("a")
	d.transfer("b", 3)
	d.rename("b", "renamed")
	d.exec("b", job.AddFiles{Files: []events.FileSpec{{RemoteURL: "https://origin.test/b/x", LocalName: "/data/b/x"}}})
	d.exec("b", job.Suspend{})
	d.exec("b", job.Resume{})
	d.exec("b", job.Cancel{})
	j := d.exec("c", job.Resume{})
	d.exec("c", job.Lease{Agent: "agent/a1", DispatchSeq: j.Version})
	d.exec("c", job.StartConnecting{Agent: "agent/a1"})
	d.exec("c", job.Fail{Agent: "agent/a1", Error: events.ErrorInfo{Context: "REMOTE_FILE", Code: "BG_E_HTTP_ERROR_404", HResult: "0x80190194", Description: "not found", FileIndex: 0}})
	d.transfer("e", 2)

	ws := expected(t, d.events())
	r.outcomes.waitFor(t, "every event handled", settled(d.lastSeq()))
	w.waitFor(t, "every notification", hasAll(ws))
	checkDeliveries(t, w, ws)

	// The expectation itself covers what the flags promise.
	types := map[string]map[string]int{}
	for _, x := range ws {
		if types[x.ev.AggregateID] == nil {
			types[x.ev.AggregateID] = map[string]int{}
		}
		types[x.ev.AggregateID][x.ev.Type]++
	}
	if a := types["a"]; a["FileTransferred"] != 2 || a["JobTransferred"] != 1 || len(a) != 2 {
		t.Errorf("job a notifications: %v", a)
	}
	if c := types["c"]; c["JobFailed"] != 1 || len(c) != 1 {
		t.Errorf("job c notifications: %v", c)
	}
	for _, typ := range []string{"JobQueued", "JobConnecting", "JobTransferring", "JobModified", "FilesAdded", "JobSuspended", "JobCancelled"} {
		if types["b"][typ] == 0 {
			t.Errorf("job b: no %s notification (%v)", typ, types["b"])
		}
	}
	if len(types["e"]) != 0 {
		t.Errorf("job e has no settings but got %v", types["e"])
	}
	for _, g := range w.snapshot() {
		if g.n.Type == events.TypeFileProgressed || g.n.Type == events.TypeJobLeased || g.n.Type == events.TypeJobCreated {
			t.Errorf("notified a %s event", g.n.Type)
		}
	}

	// A healthy webhook sees each job's notifications in event order.
	last := map[string]uint64{}
	for _, g := range w.snapshot() {
		if g.n.Seq <= last[g.n.JobID] {
			t.Errorf("job %s: seq %d after seq %d", g.n.JobID, g.n.Seq, last[g.n.JobID])
		}
		last[g.n.JobID] = g.n.Seq
	}
}

// TestRetryThenDelivered: a webhook that fails twice gets the notification
// on the third attempt, with the same signed body each time.
func TestRetryThenDelivered(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	var calls atomic.Int32
	w.respond = func(_ *http.Request, got received) int {
		if got.n.Flag == "JOB_TRANSFERRED" && calls.Add(1) <= 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	r := startNotifier(t, st, w, Config{Backoff: []time.Duration{5 * time.Millisecond, 20 * time.Millisecond}})
	d := &driver{t: t, repo: st.repo}
	d.create("j", notifyTo(w.url("/hook"), "JOB_TRANSFERRED"), 1)
	d.transfer("j", 1)

	ws := expected(t, d.events())
	if len(ws) != 1 {
		t.Fatalf("want one notification, expected %d", len(ws))
	}
	w.waitFor(t, "the notification", hasAll(ws))
	r.outcomes.waitFor(t, "every event handled", settled(d.lastSeq()))
	checkDeliveries(t, w, ws)

	got := w.snapshot()
	if len(got) != 3 {
		t.Fatalf("%d requests, want 3 (two failures, then success)", len(got))
	}
	for i, g := range got {
		if g.attempt != i+1 || g.status != []int{500, 500, 200}[i] {
			t.Errorf("request %d: attempt %d answered %d", i, g.attempt, g.status)
		}
		if !bytes.Equal(g.body, got[0].body) {
			t.Errorf("request %d: body differs from the first attempt's", i)
		}
	}
	var results []string
	for _, o := range r.outcomes.snapshot() {
		if o.flag == "JOB_TRANSFERRED" && o.result != resultQueued {
			results = append(results, o.result.String())
		}
	}
	if strings.Join(results, ",") != "retry,retry,delivered" {
		t.Errorf("outcomes %v, want retry,retry,delivered", results)
	}
}

// TestGiveUp: after MaxDeliver failed attempts a notification is dropped
// (and logged); other jobs' notifications still flow. A redirect is a
// failure and is not followed.
func TestGiveUp(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	w.respond = func(r *http.Request, _ received) int {
		switch r.URL.Path {
		case "/down":
			return http.StatusServiceUnavailable
		case "/moved":
			return http.StatusFound // no Location needed: it is never followed
		}
		return http.StatusOK
	}
	r := startNotifier(t, st, w, Config{MaxDeliver: 3})
	d := &driver{t: t, repo: st.repo}
	// No files: one notification per job, for the rename.
	d.create("down", notifyTo(w.url("/down"), "JOB_MODIFICATION"), 0)
	d.create("moved", notifyTo(w.url("/moved"), "JOB_MODIFICATION"), 0)
	d.rename("down", "x")
	d.rename("moved", "x")
	d.create("up", notifyTo(w.url("/up"), "JOB_MODIFICATION"), 0)
	d.rename("up", "x")

	r.outcomes.waitFor(t, "every event handled", settled(d.lastSeq()))
	count := map[string]int{}
	for _, g := range w.snapshot() {
		count[g.path]++
	}
	if count["/down"] != 3 || count["/moved"] != 3 || count["/up"] != 1 {
		t.Errorf("requests per path: %v, want 3 to /down and /moved, 1 to /up", count)
	}
	gaveUp := 0
	for _, o := range r.outcomes.snapshot() {
		if o.result == resultGaveUp {
			gaveUp++
			if o.attempt != 3 {
				t.Errorf("gave up at attempt %d", o.attempt)
			}
		}
	}
	if gaveUp != 2 {
		t.Errorf("%d notifications given up, want 2", gaveUp)
	}
}

// TestSlowWebhookQueueKeptAlive: notifications waiting behind a slow
// webhook longer than AckWait are not redelivered meanwhile: every
// redelivery follows a failed attempt.
func TestSlowWebhookQueueKeptAlive(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	w.respond = func(r *http.Request, _ received) int {
		// A slow receiver (this is its processing time, not a wait for
		// something in the test).
		select {
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
		}
		return http.StatusOK
	}
	r := startNotifier(t, st, w, Config{Timeout: time.Second, AckWait: 1200 * time.Millisecond})
	d := &driver{t: t, repo: st.repo}
	d.create("slow", notifyTo(w.url("/slow"), "JOB_MODIFICATION"), 0)
	for i := range 10 {
		d.rename("slow", strconv.Itoa(i)) // 10 × 300 ms queued in one lane
	}
	ws := expected(t, d.events())
	w.waitFor(t, "every notification", hasAll(ws))
	r.outcomes.waitFor(t, "every event handled", settled(d.lastSeq()))
	failed := map[uint64]bool{}
	for _, o := range r.outcomes.snapshot() {
		switch {
		case o.result == resultRetry:
			failed[o.seq] = true
		case o.result == resultQueued && o.attempt > 1 && !failed[o.seq]:
			t.Errorf("seq %d redelivered (attempt %d) without a failed attempt: the queue was not kept alive", o.seq, o.attempt)
		}
	}
}

// TestRestart: a notifier stopped in the middle (one request in flight,
// more waiting) and a new one on the same consumer deliver everything
// between them, including what was written while none ran.
func TestRestart(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	var hold atomic.Bool
	hold.Store(true)
	var ok atomic.Int32
	held := newRecorder[string]()
	w.respond = func(r *http.Request, _ received) int {
		if hold.Load() && ok.Load() >= 4 {
			held.add(r.URL.Path)
			<-r.Context().Done() // until the notifier gives up the request
			return http.StatusServiceUnavailable
		}
		ok.Add(1)
		return http.StatusOK
	}
	cfg := Config{Consumer: "restart"}
	first := startNotifier(t, st, w, cfg)
	d := &driver{t: t, repo: st.repo}
	for _, id := range []string{"r1", "r2", "r3"} {
		d.create(id, notifyTo(w.url("/"+id), "JOB_MODIFICATION", "FILE_TRANSFERRED", "JOB_TRANSFERRED"), 2)
	}
	for _, id := range []string{"r1", "r2", "r3"} {
		d.transfer(id, 1)
	}
	held.waitFor(t, "a request in flight", func(h []string) bool { return len(h) > 0 })
	first.stop()

	stopped := 0
	for _, o := range first.outcomes.snapshot() {
		if o.result == resultStopped {
			stopped++
		}
	}
	if stopped == 0 {
		t.Error("the stopped notifier handed nothing back")
	}

	// Events written while no notifier runs.
	for _, id := range []string{"r1", "r2", "r3"} {
		d.complete(id)
	}
	hold.Store(false)
	second := startNotifier(t, st, w, cfg)

	ws := expected(t, d.events())
	w.waitFor(t, "every notification", hasAll(ws))
	second.outcomes.waitFor(t, "every event handled", func(os []outcome) bool {
		return settled(d.lastSeq())(append(first.outcomes.snapshot(), os...))
	})
	checkDeliveries(t, w, ws)
	redelivered := 0
	for _, o := range second.outcomes.snapshot() {
		if o.attempt > 1 {
			redelivered++
		}
	}
	if redelivered == 0 {
		t.Error("the second notifier saw no redelivery of what the first handed back")
	}
}

// TestDisable: DISABLE stops notifications from the event that sets it on,
// and clearing it resumes them.
func TestDisable(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	r := startNotifier(t, st, w, Config{})
	d := &driver{t: t, repo: st.repo}
	url := w.url("/hook")
	d.create("j", notifyTo(url, "JOB_MODIFICATION"), 1)
	d.rename("j", "one")
	d.setNotify("j", events.NotifySettings{URL: url, Flags: []string{"JOB_MODIFICATION", "DISABLE"}})
	d.rename("j", "two")
	d.exec("j", job.Resume{})
	d.exec("j", job.Suspend{})
	d.setNotify("j", events.NotifySettings{URL: url, Flags: []string{"JOB_MODIFICATION"}})
	d.rename("j", "three")

	r.outcomes.waitFor(t, "every event handled", settled(d.lastSeq()))
	ws := expected(t, d.events())
	w.waitFor(t, "every notification", hasAll(ws))
	checkDeliveries(t, w, ws)
	var names []string
	for _, g := range w.snapshot() {
		names = append(names, g.n.Job.DisplayName)
	}
	// Files added at creation, rename one, the change that re-enables
	// (after rename two, which was not notified), rename three.
	if got := strings.Join(names, ","); got != "job j,one,two,three" {
		t.Errorf("notified display names %q, want job j,one,two,three", got)
	}
}

// TestSettingsApplyFromTheirEvent: notifications follow the settings as
// they were at each event, however late the notifier reads them: a later
// change of flags or URL does not reach back. The notifier starts after
// everything is written, once with a cache of one job for two interleaved
// jobs (every event reads the store) and once with the default cache.
func TestSettingsApplyFromTheirEvent(t *testing.T) {
	for _, size := range []int{1, 0} {
		t.Run(map[int]string{1: "cache1", 0: "default"}[size], func(t *testing.T) {
			st := newStack(t)
			w := newWebhook(t)
			d := &driver{t: t, repo: st.repo}
			for _, id := range []string{"p", "q"} {
				d.create(id, notifyTo(w.url("/"+id+"/old"), "JOB_ERROR"), 1)
			}
			for _, id := range []string{"p", "q"} {
				d.rename(id, "before") // not wanted when it happened
				d.exec(id, job.Resume{})
			}
			for _, id := range []string{"p", "q"} {
				d.setNotify(id, events.NotifySettings{URL: w.url("/" + id + "/new"), Flags: []string{"JOB_MODIFICATION"}})
				d.rename(id, "after")
			}
			for _, id := range []string{"p", "q"} {
				d.setNotify(id, events.NotifySettings{URL: w.url("/" + id + "/newer"), Flags: []string{"FILE_TRANSFERRED"}})
				d.exec(id, job.Suspend{}) // not wanted any more
			}
			r := startNotifier(t, st, w, Config{CacheSize: size})
			r.outcomes.waitFor(t, "every event handled", settled(d.lastSeq()))
			ws := expected(t, d.events())
			if len(ws) != 4 {
				t.Fatalf("expected %d notifications, want 4 (the change and the rename after it, per job)", len(ws))
			}
			w.waitFor(t, "every notification", hasAll(ws))
			checkDeliveries(t, w, ws)
			for _, g := range w.snapshot() {
				if !strings.HasSuffix(g.path, "/new") {
					t.Errorf("notification %s (%q) went to %s", g.n.Type, g.n.Job.DisplayName, g.path)
				}
			}
		})
	}
}

// TestLinkLocalRefused: a webhook on a link-local (metadata) address is
// never connected to; the notification is dropped at once, not retried.
func TestLinkLocalRefused(t *testing.T) {
	st := newStack(t)
	r := startNotifier(t, st, nil, Config{})
	d := &driver{t: t, repo: st.repo}
	d.create("j", notifyTo("https://169.254.169.254/latest/meta-data", "JOB_MODIFICATION"), 0)
	d.rename("j", "x")
	os := r.outcomes.waitFor(t, "every event handled", settled(d.lastSeq()))
	var refused []outcome
	for _, o := range os {
		if o.flag == "JOB_MODIFICATION" && o.result != resultSkipped && o.result != resultQueued {
			refused = append(refused, o)
		}
	}
	if len(refused) != 1 || refused[0].result != resultRefused || refused[0].attempt != 1 || !isBlocked(refused[0].err) {
		t.Fatalf("outcomes %+v, want one refusal at the first attempt", refused)
	}
}

// TestExistingConsumerKeepsItsStart: an operator may create the consumer
// to start from now; the notifier keeps that start and applies its other
// settings.
func TestExistingConsumerKeepsItsStart(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	d := &driver{t: t, repo: st.repo}
	d.create("j", notifyTo(w.url("/hook"), "JOB_MODIFICATION"), 0)
	d.rename("j", "before")
	cc := ConsumerConfig(Config{Consumer: "fromnow", AckWait: time.Minute, MaxDeliver: 5, MaxAckPending: 10})
	cc.DeliverPolicy = jetstream.DeliverNewPolicy
	if _, err := st.js.CreateConsumer(context.Background(), events.StreamName, cc); err != nil {
		t.Fatal(err)
	}
	startNotifier(t, st, w, Config{Consumer: "fromnow"})
	d.rename("j", "after")
	ws := expected(t, d.events())
	w.waitFor(t, "the notification after the start", hasAll(ws[len(ws)-1:]))
	for _, g := range w.snapshot() {
		if g.n.Job.DisplayName != "after" {
			t.Errorf("notified %s %q from before the consumer's start", g.n.Type, g.n.Job.DisplayName)
		}
	}
	c, err := st.js.Consumer(context.Background(), events.StreamName, "fromnow")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config; got.DeliverPolicy != jetstream.DeliverNewPolicy || got.MaxDeliver != 30 || got.MaxAckPending != 1024 {
		t.Errorf("consumer config after the start: %+v", got)
	}
}

// flakyStore fails its first failures reads.
type flakyStore struct {
	events.Store
	failures atomic.Int32
}

func (s *flakyStore) Load(ctx context.Context, subject string, after uint64) ([]events.Event, error) {
	if s.failures.Add(-1) >= 0 {
		return nil, errors.New("store unavailable")
	}
	return s.Store.Load(ctx, subject, after)
}

// TestStoreHiccup: when a job's history cannot be read, the event is
// retried later, not lost.
func TestStoreHiccup(t *testing.T) {
	st := newStack(t)
	w := newWebhook(t)
	d := &driver{t: t, repo: st.repo}
	d.create("j", notifyTo(w.url("/hook"), "JOB_MODIFICATION"), 0)
	// The notifier's consumer starts after the job's creation, so the
	// notifier must read the job's history.
	cc := ConsumerConfig(Config{Consumer: "hiccup", AckWait: time.Minute, MaxDeliver: 30, MaxAckPending: 10})
	cc.DeliverPolicy = jetstream.DeliverNewPolicy
	if _, err := st.js.CreateConsumer(context.Background(), events.StreamName, cc); err != nil {
		t.Fatal(err)
	}
	flaky := &flakyStore{Store: st.store}
	flaky.failures.Store(2)
	startNotifier(t, &stack{js: st.js, store: st.store, repo: st.repo, notifyStore: flaky}, w, Config{Consumer: "hiccup"})
	d.rename("j", "x")
	ws := expected(t, d.events())
	got := w.waitFor(t, "the notification", hasAll(ws))
	checkDeliveries(t, w, ws)
	if len(got) != 1 || got[0].attempt != 3 {
		t.Errorf("requests %+v, want one, at the third delivery (after two failed reads)", got)
	}
}

// TestRunErrors: Run reports a missing stream; it returns nil
// when its context ends.
func TestRunErrors(t *testing.T) {
	st := newStack(t)
	ctx := context.Background()
	if err := st.js.DeleteStream(ctx, events.StreamName); err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Secret: testSecret}, testLogger(t), st.js, st.store)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Run(ctx); err == nil || !strings.Contains(err.Error(), events.StreamName) {
		t.Errorf("Run without the stream: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := n.Run(cctx); err != nil {
		t.Errorf("Run with a cancelled context: %v", err)
	}
}

// TestConfig: defaults fill the zero value, every problem is reported at
// once, and the secret never prints.
func TestConfig(t *testing.T) {
	c, err := Config{Secret: testSecret}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Consumer != "ferry_notify" || c.Timeout != 10*time.Second || c.MaxDeliver != 30 || c.AckWait != 30*time.Second ||
		c.MaxAckPending != 1024 || c.Concurrency != 16 || c.CacheSize != 10000 || len(c.Backoff) != 5 {
		t.Errorf("defaults: %+v", c)
	}
	cc := ConsumerConfig(c)
	if cc.Durable != "ferry_notify" || cc.FilterSubject != "ferry.evt.job.>" || cc.MaxAckPending != 1024 || cc.MaxDeliver != 30 {
		t.Errorf("consumer config: %+v", cc)
	}

	_, err = New(Config{Secret: []byte("short"), Consumer: "a.b", Timeout: -1, MaxDeliver: -1,
		Backoff: []time.Duration{0}, MaxAckPending: -1, Concurrency: -1, CacheSize: -1}, testLogger(t), nil, nil)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, s := range []string{"16 are required", "consumer name", "timeout", "max deliver", "backoff step 0", "max ack pending", "concurrency", "cache size"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("config error %q does not mention %q", err, s)
		}
	}
	if _, err := New(Config{}, testLogger(t), nil, nil); err == nil || !strings.Contains(err.Error(), "secret is required") {
		t.Errorf("no secret: %v", err)
	}
	if _, err := (Config{Secret: testSecret, Timeout: time.Minute, AckWait: time.Minute}).withDefaults(); err == nil {
		t.Error("an ack wait not longer than the timeout was accepted")
	}
	if _, err := New(Config{Secret: testSecret}, testLogger(t), nil, nil); err == nil {
		t.Error("a notifier without JetStream was built")
	}

	for _, s := range []string{
		sprintf("%v %s %x %X %d %q %#v %+v", c.Secret, c.Secret, c.Secret, c.Secret, c.Secret, c.Secret, c.Secret, c),
		string(mustJSON(t, c)),
	} {
		if strings.Contains(s, string(testSecret)) || strings.Contains(s, "746573742d") || strings.Contains(s, "116 101 115") || strings.Contains(s, "dGVzdC1zZWNyZXQ") {
			t.Errorf("the secret leaks: %s", s)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for h, want := range map[string]time.Duration{
		"": 0, "7": 7 * time.Second, "-1": 0, "soon": 0,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
	} {
		if got := retryAfter(h, now); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", h, got, want)
		}
	}
}

func TestFlagFor(t *testing.T) {
	for _, typ := range events.TypeNames() {
		if got, want := FlagFor(typ), testFlags[typ]; got != want {
			t.Errorf("FlagFor(%s) = %q, want %q", typ, got, want)
		}
		if f := FlagFor(typ); f != "" {
			if _, ok := job.NotifyFlagValues[f]; !ok {
				t.Errorf("FlagFor(%s) = %q is not a BG_NOTIFY flag", typ, f)
			}
		}
	}
	if FlagFor(events.TypeFileProgressed) != "" {
		t.Error("FileProgressed raises a flag")
	}
}
