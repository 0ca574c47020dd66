package coordinator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// projStack is several coordinators, each with a NATS connection of its
// own, on one JetStream server: what a fleet of coordinators shares.
type projStack struct {
	t     testing.TB
	ns    *server.Server
	js    jetstream.JetStream // the test's own connection
	store events.Store
	repo  *jobstore.Repo
	ca    *identity.CA
	auth  *identity.Authenticator
}

func newProjStack(t testing.TB) *projStack {
	t.Helper()
	ns, _, js := eventstest.StartServer(t)
	ctx := context.Background()
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
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
	return &projStack{t: t, ns: ns, js: js, store: store, repo: &jobstore.Repo{Store: store}, ca: ca,
		auth: &identity.Authenticator{Roots: ca.Pool(), Roles: identity.RoleMap{TrustDomain: "ferry.test"}}}
}

// coordinator starts one more coordinator on the stack's server, with its
// API on a test HTTPS server.
func (p *projStack) coordinator() *env {
	t := p.t.(*testing.T)
	t.Helper()
	svc, store, js := p.service()
	srv := httptest.NewUnstartedServer(svc.Handler())
	srv.TLS = identity.ServerTLSConfig(issue(t, p.ca, identity.RoleService, "coordinator", "127.0.0.1"), p.ca.Pool())
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e := &env{t: t, srv: srv, svc: svc, store: store, js: js, ca: p.ca}
	e.client = e.as(identity.RoleUser, "alice")
	return e
}

// service starts one more coordinator (without its API) on a connection of
// its own.
func (p *projStack) service() (*coordinator.Service, events.Store, jetstream.JetStream) {
	t := p.t
	t.Helper()
	closed := make(chan struct{})
	nc, err := nats.Connect(p.ns.ClientURL(), nats.Name(t.Name()), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	svc, err := coordinator.New(ctx, coordinator.Config{Auth: p.auth, ReconcileInterval: time.Hour}, log, js, store)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = svc.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		nc.Close()
		<-closed
	})
	return svc, store, js
}

const testAgent = "spiffe://ferry.test/agent/a1"

// makeJob creates a job with the i-th of a few histories: every state,
// files, progress, errors, modifications, completion. It may run on any
// goroutine.
func (p *projStack) makeJob(i int) (string, error) {
	id := uuid.Must(uuid.NewV7()).String()
	var err error
	exec := func(c job.Command) job.Job {
		if err != nil {
			return job.Job{}
		}
		res, e := p.repo.Execute(context.Background(), id, c, events.Meta{Actor: "test"}, nil)
		if e != nil {
			err = fmt.Errorf("%s on %s: %w", job.CommandName(c), id, e)
		}
		return res.Job
	}
	c := job.Create{JobID: id, DisplayName: fmt.Sprintf("job %d", i), Owner: "spiffe://ferry.test/user/alice"}
	for f := range i%3 + 1 {
		c.Files = append(c.Files, events.FileSpec{RemoteURL: fmt.Sprintf("https://origin.test/%d/%d", i, f), LocalName: fmt.Sprintf("/data/%d/%d", i, f)})
	}
	j := exec(c)
	lease := func() {
		j := exec(job.Resume{})
		exec(job.Lease{Agent: testAgent, DispatchSeq: j.Version, Deliveries: 1})
	}
	failure := events.ErrorInfo{Context: "BG_ERROR_CONTEXT_REMOTE_FILE", Code: "ERROR_WINHTTP_CANNOT_CONNECT", HResult: "0x80072EFD", Description: "refused"}
	switch i % 7 {
	case 0: // SUSPENDED
	case 1: // QUEUED
		exec(job.Resume{})
	case 2: // TRANSFERRING, with checkpoints
		lease()
		exec(job.StartConnecting{Agent: testAgent})
		exec(job.StartTransferring{Agent: testAgent, BytesTotal: 1000})
		exec(job.Checkpoint{Agent: testAgent, BytesTransferred: 300, BytesTotal: 1000})
		exec(job.Checkpoint{Agent: testAgent, BytesTransferred: 600, BytesTotal: 1000})
	case 3: // ACKNOWLEDGED
		lease()
		for f := range j.Files {
			exec(job.StartConnecting{Agent: testAgent, FileIndex: f})
			exec(job.StartTransferring{Agent: testAgent, FileIndex: f, BytesTotal: 100})
			exec(job.FileDone{Agent: testAgent, FileIndex: f, Bytes: 100, SHA256: strings.Repeat("ab", 32), TempName: "t"})
		}
		exec(job.Complete{})
		files := make([]int, len(j.Files))
		for f := range files {
			files[f] = f
		}
		exec(job.CompleteDone{Agent: testAgent, Files: files})
	case 4: // TRANSIENT_ERROR
		lease()
		exec(job.StartConnecting{Agent: testAgent})
		exec(job.Fail{Agent: testAgent, Error: failure, Transient: true, RetryAfter: time.Hour})
	case 5: // modified, then CANCELLED
		name, prio := fmt.Sprintf("renamed %d", i), job.High
		exec(job.Modify{DisplayName: &name, Priority: &prio})
		exec(job.Cancel{})
	case 6: // ERROR
		lease()
		exec(job.StartConnecting{Agent: testAgent})
		exec(job.Fail{Agent: testAgent, Error: failure})
	}
	return id, err
}

// makeJobs makes n jobs of every history (on the test's goroutine).
func (p *projStack) makeJobs(n int) []string {
	p.t.Helper()
	var ids []string
	for i := range n {
		id, err := p.makeJob(i)
		if err != nil {
			p.t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// waitProjected waits until the coordinator's projector has applied the
// whole log.
func (p *projStack) waitProjected(e *env) { p.t.Helper(); p.waitApplied(e.svc) }

func (p *projStack) waitApplied(svc *coordinator.Service) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := p.js.Stream(ctx, events.StreamName)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := svc.Projector().WaitFor(ctx, st.CachedInfo().State.LastSeq); err != nil {
		p.t.Fatalf("projector at %d: %v", svc.Projector().Applied(), err)
	}
}

// replayed is the job as a fresh replay of its events gives it.
func (p *projStack) replayed(id string) job.Job {
	p.t.Helper()
	evs, err := p.store.Load(context.Background(), events.JobSubject(id), 0)
	if err != nil {
		p.t.Fatal(err)
	}
	j, err := job.Replay(evs)
	if err != nil {
		p.t.Fatal(err)
	}
	return j
}

// longOp posts to a projection endpoint asking for a progress stream and
// returns the progress lines and the result (or the problem).
func longOp[T any](t *testing.T, c *http.Client, url string) (progress []coordinator.ProjectionProgress, result T, problem *coordinator.Problem) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, nil)
	req.Header.Set("Accept", coordinator.NDJSON)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		var p coordinator.Problem
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("%s: %s %s", url, resp.Status, b)
		}
		return nil, result, &p
	}
	if ct := resp.Header.Get("Content-Type"); ct != coordinator.NDJSON {
		t.Fatalf("%s: content type %q", url, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var l coordinator.ProjectionLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s: line %q: %v", url, sc.Text(), err)
		}
		switch {
		case l.Progress != nil:
			progress = append(progress, *l.Progress)
		case l.Error != nil:
			return progress, result, l.Error
		case l.Result != nil:
			if err := json.Unmarshal(l.Result, &result); err != nil {
				t.Fatal(err)
			}
			return progress, result, nil
		}
	}
	t.Fatalf("%s: stream ended without a result (%v)", url, sc.Err())
	return
}

func verify(t *testing.T, e *env) ([]coordinator.ProjectionProgress, coordinator.VerifyReport) {
	t.Helper()
	progress, rep, p := longOp[coordinator.VerifyReport](t, e.as(identity.RoleAdmin, "root"), e.srv.URL+"/v1/admin/projections/verify")
	if p != nil {
		t.Fatalf("verify: %+v", *p)
	}
	if len(rep.Projections) != 1 || rep.Projections[0].Projection != "jobs" {
		t.Fatalf("verify report %+v", rep)
	}
	return progress, rep
}

func rebuild(t *testing.T, e *env) ([]coordinator.ProjectionProgress, coordinator.RebuildReport) {
	t.Helper()
	progress, rep, p := longOp[coordinator.RebuildReport](t, e.as(identity.RoleAdmin, "root"), e.srv.URL+"/v1/admin/projections/jobs/rebuild")
	if p != nil {
		t.Fatalf("rebuild: %+v", *p)
	}
	return progress, rep
}

func bucketExists(t *testing.T, js jetstream.JetStream, bucket string) bool {
	t.Helper()
	_, err := js.KeyValue(context.Background(), bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestProjectionVerifyAgreesWhileWritesContinue: many jobs of every kind
// of history; verify agrees with the live model while a writer keeps
// changing jobs (entries that move during the comparison are checked again,
// not reported).
func TestProjectionVerifyAgreesWhileWritesContinue(t *testing.T) {
	p := newProjStack(t)
	e := p.coordinator()
	ids := p.makeJobs(140)
	p.waitProjected(e)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writes atomic.Int64
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			name := fmt.Sprintf("moving %d", i)
			id := ids[(i*7)%len(ids)]
			if _, err := p.repo.Execute(ctx, id, job.Modify{DisplayName: &name}, events.Meta{Actor: "test"}, nil); err != nil && ctx.Err() == nil && job.CodeOf(err) != job.BG_E_INVALID_STATE {
				t.Errorf("modify %s: %v", id, err)
				return
			}
			if i%5 == 0 {
				if _, err := p.makeJob(1000 + i); err != nil && ctx.Err() == nil {
					t.Errorf("new job: %v", err)
					return
				}
			}
			writes.Add(1)
		}
	})
	waitUntil(t, "writes going on", func() bool { return writes.Load() >= 5 })
	w0 := writes.Load()
	progress, rep := verify(t, e)
	stop()
	wg.Wait()
	v := rep.Projections[0]
	if !rep.Agree || !v.Agree || len(v.Mismatches) != 0 {
		t.Fatalf("verify disagrees on a healthy model: %+v", v)
	}
	if v.Checked < len(ids) || v.Generation != 1 || v.Bucket != "ferry_jobs" || v.Version != coordinator.ProjectionName || v.Position == 0 {
		t.Fatalf("verify report %+v", v)
	}
	phases := map[string]bool{}
	for _, pr := range progress {
		phases[pr.Phase] = true
	}
	if !phases["replay"] || !phases["live"] || !phases["compare"] {
		t.Fatalf("progress phases %v", phases)
	}
	// The scratch bucket is gone.
	lister := p.js.KeyValueStoreNames(context.Background())
	for name := range lister.Name() {
		if strings.HasPrefix(name, "ferry_jobs_verify") {
			t.Fatalf("scratch bucket %s left behind", name)
		}
	}
	t.Logf("verified %d entries (%d checked again) with %d writes meanwhile, in %d ms", v.Checked, v.Rechecked, writes.Load()-w0, v.DurationMS)
}

// TestProjectionCorruptionFoundAndRebuilt: entries written straight into
// the bucket — a wrong state, a deleted entry, an entry for no job, a
// version that is no event — are each reported by verify; rebuild makes a
// new generation from the log (deleting leftovers of an interrupted
// rebuild and verify first), switches to it and deletes the old bucket;
// verify then agrees, and a coordinator started afterwards reads the new
// generation.
func TestProjectionCorruptionFoundAndRebuilt(t *testing.T) {
	p := newProjStack(t)
	e := p.coordinator()
	ids := p.makeJobs(35)
	p.waitProjected(e)
	ctx := context.Background()
	kv, err := p.js.KeyValue(ctx, coordinator.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	tampered, deleted, versioned := ids[0], ids[1], ids[2]
	phantom := uuid.Must(uuid.NewV7()).String()
	put := func(id string, change func(*job.Job)) {
		j := p.replayed(id)
		change(&j)
		b, _ := json.Marshal(&j)
		if _, err := kv.Put(ctx, id, b); err != nil {
			t.Fatal(err)
		}
	}
	put(tampered, func(j *job.Job) { j.State, j.DisplayName = job.Cancelled, "tampered" })
	put(versioned, func(j *job.Job) { j.Version += 1000 })
	if err := kv.Delete(ctx, deleted); err != nil {
		t.Fatal(err)
	}
	phantomJob := p.replayed(ids[3])
	phantomJob.ID = phantom
	b, _ := json.Marshal(&phantomJob)
	if _, err := kv.Put(ctx, phantom, b); err != nil {
		t.Fatal(err)
	}

	// Not for users.
	if st, m, _ := e.do("POST", "/v1/admin/projections/verify", ""); st != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("verify as a user: %d %v", st, m)
	}
	if st, m, _ := e.do("POST", "/v1/admin/projections/jobs/rebuild", ""); st != 403 || m["code"] != "E_ACCESSDENIED" {
		t.Fatalf("rebuild as a user: %d %v", st, m)
	}
	if st, m, _ := e.doAs(e.as(identity.RoleAdmin, "root"), "POST", "/v1/admin/projections/agents/rebuild", ""); st != 404 || m["code"] != "ERROR_NOT_FOUND" {
		t.Fatalf("rebuild of an unknown projection: %d %v", st, m)
	}

	_, rep := verify(t, e)
	v := rep.Projections[0]
	if rep.Agree || v.Agree {
		t.Fatalf("verify agrees with a corrupted model: %+v", v)
	}
	kinds := map[string]coordinator.Mismatch{}
	for _, m := range v.Mismatches {
		kinds[m.Job] = m
	}
	want := map[string]string{tampered: coordinator.MismatchDiffers, deleted: coordinator.MismatchMissing,
		versioned: coordinator.MismatchBadVersion, phantom: coordinator.MismatchUnexpected}
	if len(v.Mismatches) != len(want) {
		t.Fatalf("mismatches %+v, want %v", v.Mismatches, want)
	}
	for id, kind := range want {
		if m, ok := kinds[id]; !ok || m.Kind != kind {
			t.Fatalf("job %s: mismatch %+v, want kind %s", id, m, kind)
		}
	}
	m := kinds[tampered]
	wantVersion := p.replayed(tampered).Version
	if m.LiveVersion != wantVersion || m.ReplayedVersion != wantVersion ||
		!slices.Contains(m.Differences, `state: live "CANCELLED", replayed "SUSPENDED"`) ||
		!slices.Contains(m.Differences, `display_name: live "tampered", replayed "job 0"`) {
		t.Fatalf("tampered job's mismatch %+v", m)
	}
	if m := kinds[versioned]; m.LiveVersion != p.replayed(versioned).Version+1000 || m.ReplayedVersion != p.replayed(versioned).Version {
		t.Fatalf("versioned job's mismatch %+v", m)
	}

	// Leftovers of an interrupted rebuild and verify.
	for _, b := range []string{"ferry_jobs_2", "ferry_jobs_verify_deadbeef"} {
		junk, err := p.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := junk.Put(ctx, tampered, []byte(`{"state":"junk"}`)); err != nil {
			t.Fatal(err)
		}
	}

	progress, rr := rebuild(t, e)
	if !rr.Switched || !rr.OldBucketDeleted || rr.FromGeneration != 1 || rr.FromBucket != "ferry_jobs" ||
		rr.Generation != 2 || rr.Bucket != "ferry_jobs_2" || rr.Jobs != len(ids) || rr.Position == 0 {
		t.Fatalf("rebuild report %+v", rr)
	}
	slices.Sort(rr.Removed)
	if !slices.Equal(rr.Removed, []string{"ferry_jobs_2", "ferry_jobs_verify_deadbeef"}) {
		t.Fatalf("leftovers removed: %v", rr.Removed)
	}
	phases := map[string]bool{}
	for _, pr := range progress {
		phases[pr.Phase] = true
	}
	for _, ph := range []string{"cleanup", "replay", "catch-up", "switch", "drop"} {
		if !phases[ph] {
			t.Fatalf("no %s progress in %+v", ph, progress)
		}
	}
	if bucketExists(t, p.js, "ferry_jobs") {
		t.Fatal("old generation ferry_jobs not deleted")
	}
	if gen, bucket := e.svc.ReadModel().Generation(); gen != 2 || bucket != "ferry_jobs_2" {
		t.Fatalf("coordinator reads generation %d (%s)", gen, bucket)
	}
	st, m2, _ := e.doAs(e.as(identity.RoleAdmin, "root"), "GET", "/v1/jobs/"+tampered, "")
	if st != 200 || m2["state"] != "SUSPENDED" || m2["display_name"] != "job 0" {
		t.Fatalf("tampered job after rebuild: %d %v", st, m2)
	}
	_, rep = verify(t, e)
	if !rep.Agree || rep.Projections[0].Generation != 2 || rep.Projections[0].Bucket != "ferry_jobs_2" {
		t.Fatalf("verify after rebuild: %+v", rep)
	}

	// The status says so; a coordinator started now reads generation 2
	// and sees every job.
	st, _, _ = e.doAs(e.as(identity.RoleAdmin, "root"), "GET", "/v1/admin/projections", "")
	if st != 200 {
		t.Fatalf("status: %d", st)
	}
	e2 := p.coordinator()
	if gen, bucket := e2.svc.ReadModel().Generation(); gen != 2 || bucket != "ferry_jobs_2" {
		t.Fatalf("new coordinator reads generation %d (%s)", gen, bucket)
	}
	p.waitProjected(e2)
	jobs, err := e2.svc.ReadModel().List(ctx, nil)
	if err != nil || len(jobs) != len(ids) {
		t.Fatalf("new coordinator lists %d jobs (%v), want %d", len(jobs), err, len(ids))
	}
}

// TestProjectionRebuildUnderLoad: two coordinators serve reads and writes
// while one of them rebuilds; nothing is lost (every job in the new
// generation equals its replay), no read fails, no list ever shows fewer
// jobs than the one before on the same coordinator, both coordinators
// switch, and the old bucket is deleted. A second rebuild moves on to
// generation 3.
func TestProjectionRebuildUnderLoad(t *testing.T) {
	p := newProjStack(t)
	a, b := p.coordinator(), p.coordinator()
	var mu sync.Mutex
	ids := p.makeJobs(80)
	base := slices.Clone(ids)
	p.waitProjected(a)
	p.waitProjected(b)
	known := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(ids) }

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var created, reads atomic.Int64
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	// Writers: new jobs through both coordinators' APIs, and commands on
	// existing jobs.
	for _, e := range []*env{a, b} {
		admin := e.as(identity.RoleAdmin, "root")
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				body := fmt.Sprintf(`{"display_name":"load %d","files":[{"remote_url":"https://origin.test/%d","local_name":"/data/%d"}],"resume":%v}`, i, i, i, i%2 == 0)
				req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/v1/jobs", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := admin.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						fail("create: %v", err)
					}
					return
				}
				var j job.Job
				err = json.NewDecoder(resp.Body).Decode(&j)
				resp.Body.Close()
				if resp.StatusCode != 201 || err != nil {
					fail("create: %d %v", resp.StatusCode, err)
					return
				}
				mu.Lock()
				ids = append(ids, j.ID)
				mu.Unlock()
				created.Add(1)
				// Read your writes (which also paces the writers to
				// the projection).
				if err := e.svc.Projector().WaitFor(ctx, j.Version); err != nil && ctx.Err() == nil {
					fail("wait for %s: %v", j.ID, err)
				}
				name := fmt.Sprintf("touched %d", i)
				old := base[rand.IntN(len(base))]
				if _, err := p.repo.Execute(ctx, old, job.Modify{DisplayName: &name}, events.Meta{Actor: "test"}, nil); err != nil && ctx.Err() == nil && job.CodeOf(err) != job.BG_E_INVALID_STATE {
					fail("modify: %v", err)
				}
			}
		})
	}
	// Readers: one job at a time, and the whole list, on both.
	read := func(e *env, admin *http.Client, path string) []byte {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path, nil)
		resp, err := admin.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				fail("GET %s: %v", path, err)
			}
			return nil
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			fail("GET %s: %d %s", path, resp.StatusCode, body)
			return nil
		}
		reads.Add(1)
		return body
	}
	for _, e := range []*env{a, b} {
		admin := e.as(identity.RoleAdmin, "root")
		wg.Go(func() {
			for ctx.Err() == nil {
				all := known()
				read(e, admin, "/v1/jobs/"+all[rand.IntN(len(all))])
			}
		})
		wg.Go(func() {
			last := 0
			for ctx.Err() == nil {
				body := read(e, admin, "/v1/jobs?all=true")
				if body == nil {
					continue
				}
				var l coordinator.ListResponse
				if err := json.Unmarshal(body, &l); err != nil {
					fail("list: %v", err)
					continue
				}
				if len(l.Jobs) < last {
					fail("list on %s went back from %d to %d jobs", e.srv.URL, last, len(l.Jobs))
				}
				last = len(l.Jobs)
			}
		})
	}
	// Let the load get going, rebuild, and keep it going after the switch.
	waitUntil(t, "writes before the rebuild", func() bool { return created.Load() >= 10 })
	progress, rr := rebuild(t, a)
	after := created.Load()
	waitUntil(t, "writes after the rebuild", func() bool { return created.Load() >= after+10 })
	stop()
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d reads and %d creations; failures:\n%s", reads.Load(), created.Load(), strings.Join(failures, "\n"))
	}
	if !rr.Switched || !rr.OldBucketDeleted || rr.Generation != 2 || rr.Bucket != "ferry_jobs_2" {
		t.Fatalf("rebuild report %+v\nprogress %+v", rr, progress)
	}
	if bucketExists(t, p.js, "ferry_jobs") {
		t.Fatal("old bucket ferry_jobs not deleted")
	}
	for _, e := range []*env{a, b} {
		if gen, bucket := e.svc.ReadModel().Generation(); gen != 2 || bucket != "ferry_jobs_2" {
			t.Fatalf("coordinator %s reads generation %d (%s)", e.srv.URL, gen, bucket)
		}
		p.waitProjected(e)
	}
	// Nothing lost: every job is in the new generation, equal to its
	// replay.
	kv, err := p.js.KeyValue(context.Background(), "ferry_jobs_2")
	if err != nil {
		t.Fatal(err)
	}
	all := known()
	for _, id := range all {
		e, err := kv.Get(context.Background(), id)
		if err != nil {
			t.Fatalf("job %s not in the new generation: %v", id, err)
		}
		var got job.Job
		if err := json.Unmarshal(e.Value(), &got); err != nil {
			t.Fatal(err)
		}
		if d := coordinator.DiffJobs(got, p.replayed(id)); len(d) > 0 {
			t.Fatalf("job %s in the new generation differs from its replay: %v", id, d)
		}
	}
	t.Logf("%d jobs (%d created during the test), %d reads, rebuild took %d ms", len(all), created.Load(), reads.Load(), rr.DurationMS)
	if _, rep := verify(t, b); !rep.Agree {
		t.Fatalf("verify after the rebuild: %+v", rep)
	}

	// Again: generation 3 replaces generation 2 on both.
	_, rr = rebuild(t, b)
	// (Jobs may hold a creation whose answer the writers dropped as they
	// stopped.)
	if !rr.OldBucketDeleted || rr.FromBucket != "ferry_jobs_2" || rr.Bucket != "ferry_jobs_3" || rr.Jobs < len(all) {
		t.Fatalf("second rebuild %+v", rr)
	}
	for _, e := range []*env{a, b} {
		if gen, _ := e.svc.ReadModel().Generation(); gen != 3 {
			t.Fatalf("coordinator %s reads generation %d after the second rebuild", e.srv.URL, gen)
		}
	}
	if bucketExists(t, p.js, "ferry_jobs_2") {
		t.Fatal("generation 2 not deleted")
	}
}

// TestProjectionLock: one verify or rebuild at a time; the refusal says
// who holds the lock.
func TestProjectionLock(t *testing.T) {
	p := newProjStack(t)
	e := p.coordinator()
	p.makeJobs(1)
	ctx := context.Background()
	kv, err := p.js.KeyValue(ctx, coordinator.ProjectionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	held, _ := json.Marshal(coordinator.LockInfo{Op: "rebuild", Coordinator: "other-host-1234", By: "spiffe://ferry.test/admin/bob", Since: time.Now()})
	rev, err := kv.Create(ctx, "lock.jobs", held, jetstream.KeyTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	admin := e.as(identity.RoleAdmin, "root")
	for _, path := range []string{"/v1/admin/projections/verify", "/v1/admin/projections/jobs/rebuild"} {
		_, _, prob := longOp[json.RawMessage](t, admin, e.srv.URL+path)
		if prob == nil || prob.Status != 409 || prob.Code != "ERROR_SERVICE_UNAVAILABLE" ||
			!strings.Contains(prob.Detail, "other-host-1234") || !strings.Contains(prob.Detail, "rebuild") {
			t.Fatalf("%s while locked: %+v", path, prob)
		}
	}
	var status coordinator.ProjectionsResponse
	st, _, _ := e.doAs(admin, "GET", "/v1/admin/projections", "")
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/admin/projections", nil)
	resp, err := admin.Do(req)
	if err != nil || st != 200 {
		t.Fatalf("status: %d %v", st, err)
	}
	if err := json.NewDecoder(resp.Body).Decode(&status); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ps := status.Projections
	if len(ps) != 1 || ps[0].Lock == nil || ps[0].Lock.Coordinator != "other-host-1234" || ps[0].Generation != 1 || ps[0].Served != 1 ||
		len(ps[0].Readers["ferry_jobs"]) != 1 {
		t.Fatalf("status %+v", status)
	}
	if err := kv.Delete(ctx, "lock.jobs", jetstream.LastRevision(rev)); err != nil {
		t.Fatal(err)
	}
	if _, rep := verify(t, e); !rep.Agree {
		t.Fatalf("verify: %+v", rep)
	}
	// The lock is released afterwards.
	if _, err := kv.Get(ctx, "lock.jobs"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("lock after verify: %v", err)
	}
}

func TestDiffJobs(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	a := job.Job{ID: "j", State: job.Queued, Files: []job.File{{RemoteURL: "https://a/x", BytesTotal: 5}}, Times: job.Times{Creation: at}, Version: 7}
	b := a.Clone()
	if d := coordinator.DiffJobs(a, b); len(d) != 0 {
		t.Fatalf("equal jobs differ: %v", d)
	}
	b.State, b.Version = job.Suspended, 9
	b.Files[0].BytesTotal = 6
	b.Files = append(b.Files, job.File{RemoteURL: "https://a/y"})
	b.Error = &events.ErrorInfo{Code: "E_FAIL"}
	got := coordinator.DiffJobs(a, b)
	want := []string{
		`error: live (absent), replayed {"code":"E_FAIL","context":"","description":"","file_index":0,"hresult":""}`,
		`files[0].bytes_total: live 5, replayed 6`,
		`files[1]: live (absent), replayed {"bytes_total":0,"bytes_transferred":0,"completed":false,"local_name":"","rem...`,
		`state: live "QUEUED", replayed "SUSPENDED"`,
		`version: live 7, replayed 9`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("DiffJobs:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// waitUntil polls a condition (no timing assumptions: it only bounds the
// wait).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventstest.WaitFor(t, 60*time.Second, what, cond)
}

// TestProjectionRebuildWritesEachJobOnce: over a log of jobs with many
// interleaved events each, the new generation equals the replay of every
// job, and its backfill wrote each job once: the bucket's stream (History
// 1, so its sequence counts every write) holds the jobs at revisions
// 1..jobs, the position after them.
func TestProjectionRebuildWritesEachJobOnce(t *testing.T) {
	p := newProjStack(t)
	e := p.coordinator()
	ids := p.makeBusyJobs(40, 12)
	ids = append(ids, p.makeJobs(14)...)
	p.waitProjected(e)
	_, rr := rebuild(t, e)
	if !rr.Switched || rr.Bucket != "ferry_jobs_2" || rr.Jobs != len(ids) {
		t.Fatalf("rebuild %+v", rr)
	}
	ctx := context.Background()
	kv, err := p.js.KeyValue(ctx, rr.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	var maxRev uint64
	for _, id := range ids {
		en, err := kv.Get(ctx, id)
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		var got job.Job
		if err := json.Unmarshal(en.Value(), &got); err != nil {
			t.Fatal(err)
		}
		if d := coordinator.DiffJobs(got, p.replayed(id)); len(d) > 0 {
			t.Fatalf("job %s in the new generation differs from its replay: %v", id, d)
		}
		maxRev = max(maxRev, en.Revision())
	}
	if maxRev != uint64(len(ids)) {
		t.Fatalf("%d jobs, last written at revision %d: some job was written more than once", len(ids), maxRev)
	}
	if rr.Position < 12*uint64(len(ids)/2) {
		t.Fatalf("position %d: the log is not busy", rr.Position)
	}
}

// TestProjectorBackfill: Backfill in chunks of a few jobs (so that jobs
// are written, dropped from its cache and read back as more of their
// events come) equals the replay of every job, with and without pipelined
// writes, and a concurrent writer is neither overwritten with an older
// state nor missed: an entry ahead of the fold is kept, one behind it is
// written over.
func TestProjectorBackfill(t *testing.T) {
	p := newProjStack(t)
	ids := p.makeBusyJobs(30, 8)
	ids = append(ids, p.makeJobs(14)...)
	ctx := context.Background()
	st, err := p.js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	target := st.CachedInfo().State.LastSeq
	for _, pipelined := range []bool{false, true} {
		t.Run(fmt.Sprintf("pipelined=%v", pipelined), func(t *testing.T) {
			kv, err := p.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: fmt.Sprintf("backfill_%v", pipelined), History: 1})
			if err != nil {
				t.Fatal(err)
			}
			// A projector got ahead on one job and behind on another.
			ahead, behind := p.replayed(ids[3]), p.replayed(ids[40])
			ahead.DisplayName = "written by a projector that is ahead"
			evs, err := p.store.Load(ctx, events.JobSubject(ids[40]), 0)
			if err != nil {
				t.Fatal(err)
			}
			behind, err = job.Replay(evs[:1])
			if err != nil {
				t.Fatal(err)
			}
			for _, j := range []job.Job{ahead, behind} {
				b, _ := json.Marshal(&j)
				if _, err := kv.Create(ctx, j.ID, b); err != nil {
					t.Fatal(err)
				}
			}
			pr := &coordinator.Projector{Store: p.store, KV: kv, BackfillChunk: 7}
			if pipelined {
				pr.JS = p.js
			}
			var reports []uint64
			stats, err := pr.Backfill(ctx, target, func(a uint64) { reports = append(reports, a) })
			if err != nil {
				t.Fatal(err)
			}
			if pr.Applied() != target || len(reports) < len(ids)/7 || reports[len(reports)-1] != target || !slices.IsSorted(reports) {
				t.Fatalf("applied %d of %d, progress %v", pr.Applied(), target, reports)
			}
			if stats.Created != len(ids) || stats.Events == 0 || stats.Writes < len(ids)-1 || uint64(stats.Writes) >= target {
				t.Fatalf("stats %+v for %d jobs, %d events", stats, len(ids), target)
			}
			for _, id := range ids {
				got, ok, err := coordinator.ReadModel{KV: kv}.Get(ctx, id)
				want := p.replayed(id)
				if id == ids[3] {
					want = ahead
				}
				if err != nil || !ok {
					t.Fatalf("job %s: %v %v", id, ok, err)
				}
				if d := coordinator.DiffJobs(got, want); len(d) > 0 {
					t.Fatalf("job %s differs: %v", id, d)
				}
			}
			// Run goes on from the position.
			if got, _ := kv.Get(ctx, "_position"); got == nil || string(got.Value()) != fmt.Sprint(target) {
				t.Fatalf("position %v", got)
			}
			// Nothing more to do.
			if stats, err := pr.Backfill(ctx, target, nil); err != nil || stats.Writes != 0 {
				t.Fatalf("second backfill: %+v %v", stats, err)
			}
		})
	}
}

// makeBusyJobs makes n suspended jobs and then modifies each of them k
// times, round by round, so that the jobs' events interleave in the log as
// those of jobs in progress do: n×(k+1) events or so.
func (p *projStack) makeBusyJobs(n, k int) []string {
	p.t.Helper()
	ctx := context.Background()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7()).String()
		c := job.Create{JobID: ids[i], DisplayName: fmt.Sprintf("busy %d", i), Owner: "spiffe://ferry.test/user/alice",
			Files: []events.FileSpec{{RemoteURL: fmt.Sprintf("https://origin.test/busy/%d", i), LocalName: fmt.Sprintf("/data/busy/%d", i)}}}
		if _, err := p.repo.Execute(ctx, ids[i], c, events.Meta{Actor: "test"}, nil); err != nil {
			p.t.Fatal(err)
		}
	}
	prios := []job.Priority{job.Foreground, job.High, job.Normal, job.Low}
	for r := range k {
		for i, id := range ids {
			name, prio := fmt.Sprintf("busy %d, round %d", i, r), prios[r%len(prios)]
			if _, err := p.repo.Execute(ctx, id, job.Modify{DisplayName: &name, Priority: &prio}, events.Meta{Actor: "test"}, nil); err != nil {
				p.t.Fatal(err)
			}
		}
	}
	return ids
}

// BenchmarkProjectionRebuild measures a rebuild of the jobs read model:
// the replay into a new generation, the switch and the deletion of the old
// one. "mixed" is a log of 200 jobs of every history (about 1,200 events,
// 6 per job); "busy" one of 100 jobs of 51 events each, interleaved. Every
// KV write is fsync'd (the server runs with sync always), so what a
// rebuild costs is mostly how many writes it makes.
func BenchmarkProjectionRebuild(b *testing.B) {
	for _, tc := range []struct {
		name string
		make func(*projStack)
	}{
		{"mixed", func(p *projStack) { p.makeJobs(200) }},
		{"busy", func(p *projStack) { p.makeBusyJobs(100, 50) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := newProjStack(b)
			svc, _, _ := p.service()
			tc.make(p)
			p.waitApplied(svc)
			ctx := context.Background()
			var events uint64
			for b.Loop() {
				rep, err := svc.RebuildProjection(ctx, "jobs", coordinator.RebuildOptions{}, nil)
				if err != nil || !rep.OldBucketDeleted {
					b.Fatalf("rebuild: %+v %v", rep, err)
				}
				events = rep.Position
			}
			b.ReportMetric(float64(events)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
