package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
)

// r3JS gives every stream and bucket the coordinator creates three
// replicas, as services does on a cluster (its replicatedJS).
type r3JS struct{ jetstream.JetStream }

func (r r3JS) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = 3
	return r.JetStream.CreateStream(ctx, cfg)
}

func (r r3JS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = 3
	return r.JetStream.CreateOrUpdateStream(ctx, cfg)
}

func (r r3JS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = 3
	return r.JetStream.CreateKeyValue(ctx, cfg)
}

func (r r3JS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = 3
	return r.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
}

// createAnswer is one answer to POST /v1/jobs.
type createAnswer struct {
	status      int
	contentType string
	body        []byte
	err         error // transport error
}

// TestClusterCreateBurstSurvivesLeaderLoss: a coordinator on a 3-node
// JetStream cluster (every stream and bucket R3) takes a burst of POST
// /v1/jobs while the leader of FERRY_EVENTS (the server the coordinator is
// connected to) is shut down. Every 201 names a job whose JobCreated is in
// the log at the version the answer gave, and that the read model reaches;
// every other answer is a problem document with a 5xx status.
func TestClusterCreateBurstSurvivesLeaderLoss(t *testing.T) {
	const (
		clients          = 8
		createsPerClient = 20
	)
	start := time.Now()
	servers, conns := eventstest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	// Create the event stream, then connect the coordinator through the
	// server that leads it: its connection dies with the leader.
	js0, err := jetstream.New(conns[0], jetstream.WithDefaultTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := events.EnsureStream(ctx, js0, events.StreamOptions{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	leader := eventstest.WaitStreamCurrent(t, servers, events.StreamName)
	li := 0
	for i, s := range servers {
		if s == leader {
			li = i
		}
	}
	js, err := jetstream.New(conns[li], jetstream.WithDefaultTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA("ferry.test")
	if err != nil {
		t.Fatal(err)
	}
	auth := &identity.Authenticator{Roots: ca.Pool(), Roles: identity.RoleMap{TrustDomain: "ferry.test"}}
	logs := &syncBuffer{}
	svc, err := coordinator.New(ctx, coordinator.Config{Auth: auth, ReconcileInterval: time.Hour}, zerolog.New(logs).Level(zerolog.WarnLevel), r3JS{js}, store)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("coordinator warnings and errors:\n%s", logs)
		}
	}()
	// Not ctx: JetStream calls without a deadline get the client's
	// default timeout, as they do in production.
	runCtx, stopRun := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Run restarted whenever it ends early, as services restarts a role
	// whose component stopped: today a read-model write that times out
	// during the failover stops the projector and with it Run (which then
	// returns nil, the projector's error lost).
	var restarts atomic.Int64
	wg.Go(func() {
		for {
			err := svc.Run(runCtx)
			if runCtx.Err() != nil {
				return
			}
			restarts.Add(1)
			fmt.Fprintf(logs, "Run ended early (%v); restarting it\n", err)
		}
	})
	srv := httptest.NewUnstartedServer(svc.Handler())
	srv.TLS = identity.ServerTLSConfig(issue(t, ca, identity.RoleService, "coordinator", "127.0.0.1"), ca.Pool())
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); stopRun(); wg.Wait() })
	t.Logf("cluster and coordinator up: %v (coordinator connected to stream leader %s)", time.Since(start).Round(time.Millisecond), leader.Name())

	// The leader dies once a third of the creations were answered 201.
	var (
		created  atomic.Int64
		killNow  = make(chan struct{})
		killOnce sync.Once
		killedAt atomic.Pointer[time.Time]
		after201 atomic.Int64 // 201s to requests sent after the kill
	)
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		select {
		case <-killNow:
		case <-ctx.Done():
			return
		}
		now := time.Now()
		killedAt.Store(&now)
		leader.Shutdown()
	}()

	answers := make([][]createAnswer, clients)
	var burst sync.WaitGroup
	for c := range clients {
		// Users of their own, so that no quota is shared.
		hc := &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{TLSClientConfig: identity.ClientTLSConfig(issue(t, ca, identity.RoleUser, fmt.Sprintf("user%d", c)), ca.Pool())},
		}
		burst.Go(func() {
			defer hc.CloseIdleConnections()
			for n := range createsPerClient {
				began := time.Now()
				body := fmt.Sprintf(`{"display_name":"burst-%d-%d","files":[%s]}`, c, n, goodFile)
				a := postJob(ctx, hc, srv.URL, body)
				answers[c] = append(answers[c], a)
				if a.status == http.StatusCreated {
					if created.Add(1) >= clients*createsPerClient/3 {
						killOnce.Do(func() { close(killNow) })
					}
					if k := killedAt.Load(); k != nil && began.After(*k) {
						after201.Add(1)
					}
				}
			}
		})
	}
	burst.Wait()
	<-killerDone
	if killedAt.Load() == nil {
		t.Fatal("the stream leader was never shut down")
	}
	burstTime := time.Since(*killedAt.Load())

	newLeader := eventstest.WaitStreamCurrent(t, servers, events.StreamName)
	if newLeader == leader {
		t.Fatalf("stream leader is still %s, which was shut down", leader.Name())
	}

	var ok []string
	statuses := map[int]int{}
	for _, as := range answers {
		for _, a := range as {
			if a.err != nil {
				t.Errorf("POST /v1/jobs: %v", a.err)
				continue
			}
			statuses[a.status]++
			switch {
			case a.status == http.StatusCreated:
				var j struct {
					ID      string `json:"id"`
					Version uint64 `json:"version"`
					State   string `json:"state"`
				}
				if err := json.Unmarshal(a.body, &j); err != nil || j.ID == "" || j.Version == 0 {
					t.Errorf("201 with body %s (%v)", a.body, err)
					continue
				}
				ok = append(ok, j.ID)
				checkCreated(ctx, t, store, j.ID, j.Version)
			case a.status >= 500:
				var p coordinator.Problem
				if err := json.Unmarshal(a.body, &p); err != nil || p.Status != a.status || p.Code == "" || p.HResult == "" ||
					!strings.HasPrefix(a.contentType, "application/problem+json") {
					t.Errorf("%d answered with %s %s (%v)", a.status, a.contentType, a.body, err)
				}
			default:
				t.Errorf("unexpected answer %d %s", a.status, a.body)
			}
		}
	}
	if after201.Load() == 0 {
		t.Error("no creation sent after the leader's shutdown succeeded")
	}

	// The read model reaches every created job.
	info := streamInfoOf(ctx, t, js)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := svc.Projector().WaitFor(wctx, info.State.LastSeq); err != nil {
		t.Fatalf("projector did not reach sequence %d: %v", info.State.LastSeq, err)
	}
	for _, id := range ok {
		if _, found, err := svc.ReadModel().Get(ctx, id); err != nil || !found {
			t.Errorf("job %s not in the read model (%v)", id, err)
		}
	}
	// Jobs in the log beyond the 201s are creations whose answer was an
	// error with an unknown outcome.
	var sts []string
	for s, n := range statuses {
		sts = append(sts, fmt.Sprintf("%d×%d", n, s))
	}
	sort.Strings(sts)
	t.Logf("killed %s after %d creations; new leader %s; answers %s; %d of the 201s were to requests sent after the kill; %d jobs in the log; coordinator Run restarted %d times; burst ended %v after the kill; whole test %v",
		leader.Name(), clients*createsPerClient/3, newLeader.Name(), strings.Join(sts, ", "), after201.Load(), info.State.NumSubjects, restarts.Load(),
		burstTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// syncBuffer collects the coordinator's log lines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func postJob(ctx context.Context, hc *http.Client, base, body string) createAnswer {
	req, err := http.NewRequestWithContext(ctx, "POST", base+"/v1/jobs", strings.NewReader(body))
	if err != nil {
		return createAnswer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return createAnswer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return createAnswer{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: b, err: err}
}

// checkCreated checks that job id's log starts with its JobCreated and that
// the version a 201 reported is one of its events.
func checkCreated(ctx context.Context, t *testing.T, store events.Store, id string, version uint64) {
	t.Helper()
	evs, err := store.Load(ctx, events.JobSubject(id), 0)
	if err != nil {
		t.Fatalf("load %s: %v", id, err)
	}
	if len(evs) == 0 || evs[0].Type != events.TypeJobCreated {
		t.Errorf("job %s answered 201 but its log is %v", id, evs)
		return
	}
	p, err := evs[0].Payload()
	if c, ok := p.(*events.JobCreated); err != nil || !ok || c.JobID != id {
		t.Errorf("job %s: first event %+v (%v)", id, p, err)
	}
	for _, ev := range evs {
		if ev.Seq == version {
			return
		}
	}
	t.Errorf("job %s: the 201 reported version %d, not one of its events", id, version)
}

func streamInfoOf(ctx context.Context, t *testing.T, js jetstream.JetStream) *jetstream.StreamInfo {
	t.Helper()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}
