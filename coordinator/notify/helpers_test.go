package notify

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var testSecret = []byte("test-secret-0123456789abcdef-xyz")

// waitTimeout bounds every wait on a condition.
const waitTimeout = 20 * time.Second

// recorder collects values from other goroutines and lets a test wait for
// a condition on them without sleeping: every add wakes the waiters.
type recorder[T any] struct {
	mu      sync.Mutex
	items   []T
	changed chan struct{}
}

func newRecorder[T any]() *recorder[T] { return &recorder[T]{changed: make(chan struct{})} }

func (r *recorder[T]) add(v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.items = append(r.items, v)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder[T]) snapshot() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]T(nil), r.items...)
}

// waitFor returns the recorded values once cond holds for them, or fails
// the test after waitTimeout.
func (r *recorder[T]) waitFor(t *testing.T, what string, cond func([]T) bool) []T {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		items := append([]T(nil), r.items...)
		ch := r.changed
		r.mu.Unlock()
		if cond(items) {
			return items
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s (%d recorded)", what, len(items))
		}
	}
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stack is an embedded JetStream with the event stream and a job repo on it.
type stack struct {
	js    jetstream.JetStream
	store *events.JetStreamStore
	repo  *jobstore.Repo
	// notifyStore, if set, is the store the notifier reads.
	notifyStore events.Store
}

func newStack(t *testing.T) *stack {
	t.Helper()
	_, _, js := eventstest.StartServer(t)
	ctx := context.Background()
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return &stack{js: js, store: store, repo: &jobstore.Repo{Store: store}}
}

// received is one request a webhook got.
type received struct {
	path    string
	n       Notification
	body    []byte
	eventID string
	attempt int
	sigErr  error
	status  int
}

// webhook is an HTTPS receiver that checks every request's signature and
// answers with respond (200 when nil).
type webhook struct {
	*recorder[received]
	srv     *httptest.Server
	respond func(r *http.Request, got received) int
}

func newWebhook(t *testing.T) *webhook {
	t.Helper()
	w := &webhook{recorder: newRecorder[received]()}
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got := received{path: r.URL.Path, body: body, eventID: r.Header.Get(HeaderEventID)}
		got.attempt, _ = strconv.Atoi(r.Header.Get(HeaderAttempt))
		got.sigErr = VerifySignature(testSecret, r.Header.Get(HeaderSignature), body, time.Now(), time.Minute)
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			got.sigErr = fmt.Errorf("bad request: %s %s", r.Method, r.Header.Get("Content-Type"))
		}
		if err := json.Unmarshal(body, &got.n); err != nil {
			got.sigErr = fmt.Errorf("bad body: %w", err)
		}
		got.status = http.StatusOK
		if w.respond != nil {
			got.status = w.respond(r, got)
		}
		w.add(got)
		if got.status/100 == 3 {
			// Were redirects followed, /up would see the extra request.
			rw.Header().Set("Location", "/up")
		}
		rw.WriteHeader(got.status)
	}))
	// Closing the server at the end of a test cuts connections the
	// notifier is opening; that is expected, not worth a log line.
	w.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	return w
}

func (w *webhook) url(path string) string { return w.srv.URL + path }

func (w *webhook) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(w.srv.Certificate())
	return p
}

// running is a notifier running in the background.
type running struct {
	n        *Notifier
	outcomes *recorder[outcome]
	stop     func()
}

// startNotifier runs a notifier with fast test defaults (tiny backoff)
// until stop or the end of the test.
func startNotifier(t *testing.T, st *stack, w *webhook, cfg Config) *running {
	t.Helper()
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	if cfg.RootCAs == nil && w != nil {
		cfg.RootCAs = w.roots()
	}
	if cfg.Backoff == nil {
		cfg.Backoff = []time.Duration{10 * time.Millisecond}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	var store events.Store = st.store
	if st.notifyStore != nil {
		store = st.notifyStore
	}
	n, err := New(cfg, testLogger(t), st.js, store)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{n: n, outcomes: newRecorder[outcome]()}
	n.observe = r.outcomes.add
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	r.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(r.stop)
	return r
}

// settled reports whether every sequence 1..last has a final outcome.
func settled(last uint64) func([]outcome) bool {
	return func(os []outcome) bool {
		done := map[uint64]bool{}
		for _, o := range os {
			switch o.result {
			case resultSkipped, resultDelivered, resultGaveUp, resultRefused, resultDropped:
				done[o.seq] = true
			}
		}
		for s := uint64(1); s <= last; s++ {
			if !done[s] {
				return false
			}
		}
		return true
	}
}

// driver writes job events through the job model, as the coordinator and
// the agents do, and remembers every event written.
type driver struct {
	t    *testing.T
	repo *jobstore.Repo
	mu   sync.Mutex
	evs  []events.Event
}

func (d *driver) exec(id string, c job.Command) job.Job {
	d.t.Helper()
	res, err := d.repo.Execute(context.Background(), id, c, events.Meta{Actor: "alice"}, nil)
	if err != nil {
		d.t.Fatalf("%s %s: %v", job.CommandName(c), id, err)
	}
	d.mu.Lock()
	d.evs = append(d.evs, res.Events...)
	d.mu.Unlock()
	return res.Job
}

func (d *driver) events() []events.Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]events.Event(nil), d.evs...)
}

func (d *driver) lastSeq() uint64 {
	evs := d.events()
	return evs[len(evs)-1].Seq
}

func notifyTo(url string, flags ...string) *events.NotifySettings {
	return &events.NotifySettings{URL: url, Flags: flags}
}

func (d *driver) create(id string, n *events.NotifySettings, files int, headers ...string) {
	d.t.Helper()
	c := job.Create{JobID: id, DisplayName: "job " + id, Owner: "alice", Options: &job.OptionsPatch{Notify: n}}
	if len(headers) > 0 {
		c.Options.CustomHeaders = &headers
	}
	for i := range files {
		c.Files = append(c.Files, events.FileSpec{
			RemoteURL: fmt.Sprintf("https://origin.test/%s/%d", id, i), LocalName: fmt.Sprintf("/data/%s/%d", id, i)})
	}
	d.exec(id, c)
}

// transfer resumes the job and runs every file to the end as an agent
// would, with checkpoints progress events per file.
func (d *driver) transfer(id string, checkpoints int) {
	d.t.Helper()
	const agent = "agent/a1"
	j := d.exec(id, job.Resume{})
	j = d.exec(id, job.Lease{Agent: agent, DispatchSeq: j.Version})
	for i := range j.Files {
		d.exec(id, job.StartConnecting{Agent: agent, FileIndex: i})
		d.exec(id, job.StartTransferring{Agent: agent, FileIndex: i, BytesTotal: 100})
		for k := 1; k <= checkpoints; k++ {
			d.exec(id, job.Checkpoint{Agent: agent, FileIndex: i, BytesTransferred: int64(10 * k), BytesTotal: 100})
		}
		d.exec(id, job.FileDone{Agent: agent, FileIndex: i, Bytes: 100, SHA256: strings.Repeat("ab", 32), TempName: "t"})
	}
}

func (d *driver) complete(id string) {
	d.t.Helper()
	j := d.exec(id, job.Complete{})
	files := make([]int, len(j.Files))
	for i := range files {
		files[i] = i
	}
	d.exec(id, job.CompleteDone{Agent: j.FilesAgent, Files: files})
}

func (d *driver) rename(id, name string) {
	d.t.Helper()
	d.exec(id, job.Modify{DisplayName: &name})
}

func (d *driver) setNotify(id string, n events.NotifySettings) {
	d.t.Helper()
	d.exec(id, job.Modify{Options: &job.OptionsPatch{Notify: &n}})
}

// testFlags is the specification of which event raises which flag, written
// out independently of FlagFor.
var testFlags = map[string]string{
	"FileTransferred":          "FILE_TRANSFERRED",
	"JobTransferred":           "JOB_TRANSFERRED",
	"JobFailed":                "JOB_ERROR",
	"FilesAdded":               "JOB_MODIFICATION",
	"JobModified":              "JOB_MODIFICATION",
	"JobQueued":                "JOB_MODIFICATION",
	"JobSuspended":             "JOB_MODIFICATION",
	"JobConnecting":            "JOB_MODIFICATION",
	"JobTransferring":          "JOB_MODIFICATION",
	"JobTransientError":        "JOB_MODIFICATION",
	"JobCompleteRequested":     "JOB_MODIFICATION",
	"JobAcknowledged":          "JOB_MODIFICATION",
	"JobCancelled":             "JOB_MODIFICATION",
	"ClientCertificateSet":     "JOB_MODIFICATION",
	"ClientCertificateRemoved": "JOB_MODIFICATION",
	"JobOwnerChanged":          "JOB_MODIFICATION",
}

// want is a notification a test expects: the event, its flag, the URL and
// the job's state after the event.
type want struct {
	ev    events.Event
	flag  string
	url   string
	state job.Job
}

// expected computes, by replaying each job's history up to each event (the
// slow, obvious way), which notifications evs must produce.
func expected(t *testing.T, evs []events.Event) []want {
	t.Helper()
	byJob := map[string][]events.Event{}
	var out []want
	for _, ev := range evs {
		byJob[ev.AggregateID] = append(byJob[ev.AggregateID], ev)
		flag, ok := testFlags[ev.Type]
		if !ok {
			continue
		}
		j, err := job.Replay(byJob[ev.AggregateID])
		if err != nil {
			t.Fatal(err)
		}
		n := j.Options.Notify
		if n == nil || n.URL == "" || !contains(n.Flags, flag) || contains(n.Flags, "DISABLE") {
			continue
		}
		out = append(out, want{ev: ev, flag: flag, url: n.URL, state: j})
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// firstOK returns, per event ID, the first request answered 2xx.
func firstOK(got []received) map[string]received {
	out := map[string]received{}
	for _, g := range got {
		if g.status/100 != 2 {
			continue
		}
		if _, ok := out[g.eventID]; !ok {
			out[g.eventID] = g
		}
	}
	return out
}

// hasAll reports whether every wanted notification was answered 2xx.
func hasAll(ws []want) func([]received) bool {
	return func(got []received) bool {
		ok := firstOK(got)
		for _, w := range ws {
			if _, found := ok[w.ev.ID.String()]; !found {
				return false
			}
		}
		return true
	}
}

// checkDeliveries verifies that the webhook received exactly the wanted
// notifications (each at least once), signed, at the right URL, with the
// right body.
func checkDeliveries(t *testing.T, w *webhook, ws []want) {
	t.Helper()
	got := w.snapshot()
	wantByID := map[string]want{}
	for _, x := range ws {
		wantByID[x.ev.ID.String()] = x
	}
	for _, g := range got {
		if g.sigErr != nil {
			t.Errorf("request %s: %v", g.eventID, g.sigErr)
		}
		x, ok := wantByID[g.eventID]
		if !ok {
			t.Errorf("unexpected notification %s %s (seq %d, %s)", g.n.Type, g.n.Flag, g.n.Seq, g.path)
			continue
		}
		if g.path != strings.TrimPrefix(x.url, w.srv.URL) {
			t.Errorf("seq %d went to %s, want %s", x.ev.Seq, g.path, x.url)
		}
		checkBody(t, g, x)
	}
	ok := firstOK(got)
	for _, x := range ws {
		if _, found := ok[x.ev.ID.String()]; !found {
			t.Errorf("missing notification %s %s (seq %d)", x.ev.Type, x.flag, x.ev.Seq)
		}
	}
}

func checkBody(t *testing.T, g received, x want) {
	t.Helper()
	n := g.n
	if n.ID != x.ev.ID.String() || n.Seq != x.ev.Seq || n.Type != x.ev.Type || n.Flag != x.flag ||
		n.JobID != x.ev.AggregateID || n.State != x.state.State || !n.Time.Equal(x.ev.Time) {
		t.Errorf("seq %d: body %+v does not describe event %s %s of %s", x.ev.Seq, n, x.ev.ID, x.ev.Type, x.ev.AggregateID)
	}
	js := n.Job
	if js.ID != x.state.ID || js.DisplayName != x.state.DisplayName || js.State != x.state.State ||
		js.Priority != x.state.Priority || js.Progress != x.state.Progress || (js.Error == nil) != (x.state.Error == nil) {
		t.Errorf("seq %d: job summary %+v does not match the state after the event", x.ev.Seq, js)
	}
	if (n.FileIndex != nil) != (x.ev.Type == events.TypeFileTransferred) {
		t.Errorf("seq %d: file_index %v on a %s notification", x.ev.Seq, n.FileIndex, x.ev.Type)
	}
	// The body is exactly these members: nothing else leaks.
	var members map[string]json.RawMessage
	_ = json.Unmarshal(g.body, &members)
	for k := range members {
		switch k {
		case "id", "seq", "type", "flag", "job_id", "state", "time", "job", "file_index":
		default:
			t.Errorf("seq %d: unexpected member %q in %s", x.ev.Seq, k, g.body)
		}
	}
	if bytes.Contains(g.body, []byte("hunter2")) || bytes.Contains(g.body, []byte("X-Api-Key")) {
		t.Errorf("seq %d: the body leaks a custom header: %s", x.ev.Seq, g.body)
	}
}
