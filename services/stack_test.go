package services_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/rs/zerolog"
)

// stack is an in-process dev stack with an HTTPS origin its agent trusts.
type stack struct {
	t      *testing.T
	dev    *services.Dev
	client *services.Client
	origin *servicestest.Origin
	root   string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	o := servicestest.NewOrigin(t)
	s := startStack(t, o.CAFile)
	s.origin = o
	return s
}

// startStack starts an in-process dev stack whose agent trusts the origin
// CAs in caFiles, with short timings for tests.
func startStack(t *testing.T, caFiles ...string) *stack {
	t.Helper()
	return startStackWith(t, stackOptions{caFiles: caFiles})
}

// stackOptions vary the test stack: a logger other than the test's, and
// changes to its configuration.
type stackOptions struct {
	caFiles []string
	log     *zerolog.Logger
	tune    func(*services.DevConfig)
}

func startStackWith(t *testing.T, o stackOptions) *stack {
	t.Helper()
	root := t.TempDir()
	cfg := services.DevConfig{
		DataDir: t.TempDir(), HTTP: "127.0.0.1:0", Vault: "127.0.0.1:0", NATS: services.NATSConfig{Listen: "none"},
		Root: root, OriginCAFiles: o.caFiles, ReconcileInterval: 200 * time.Millisecond,
		CheckpointInterval: 20 * time.Millisecond, AckWait: 2 * time.Second,
	}
	if o.tune != nil {
		o.tune(&cfg)
	}
	lg := testLogger(t)
	if o.log != nil {
		lg = *o.log
	}
	d, err := services.StartDev(context.Background(), cfg, lg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	c, err := services.Discover(services.ClientConfig{Addr: d.Info().CoordinatorURL, DataDir: d.Info().DataDir})
	if err != nil {
		t.Fatal(err)
	}
	return &stack{t: t, dev: d, client: c, root: cfg.Root}
}

// testLogger sends the stack's log to the test's log (shown on failure or
// with -v).
func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.ConsoleWriter{Out: tWriter{t}, NoColor: true}).Level(zerolog.DebugLevel)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (s *stack) create(files ...events.FileSpec) string {
	s.t.Helper()
	j, err := s.client.Create(context.Background(), coordinator.CreateRequest{DisplayName: s.t.Name(), Files: files, Resume: true})
	if err != nil {
		s.t.Fatal(err)
	}
	return j.ID
}

func (s *stack) action(id, a string) coordinator.ActionResponse {
	s.t.Helper()
	r, err := s.client.Action(context.Background(), id, a)
	if err != nil {
		s.t.Fatalf("%s: %v", a, err)
	}
	return r
}

// until follows the job's events until cond holds for its replayed state.
func (s *stack) until(id string, what string, cond func(*job.Job) bool) job.Job {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var j job.Job
	err := s.client.Events(ctx, id, 0, func(ev events.Event) error {
		if err := job.Evolve(&j, &ev); err != nil {
			return err
		}
		if cond(&j) {
			return services.ErrStop
		}
		return nil
	})
	if err != nil {
		s.t.Fatalf("waiting for %s: %v (job %s %+v)", what, err, j.State, j.Error)
	}
	return j
}

func (s *stack) dest(name string) string { return filepath.ToSlash(filepath.Join(s.root, name)) }

func state(st job.State) func(*job.Job) bool {
	return func(j *job.Job) bool { return j.State == st }
}

// partFiles lists the temporary files left in the agent's root.
func partFiles(t *testing.T, root string) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, ".ferry-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestCancelMidTransferDeletesTemporaryFiles(t *testing.T) {
	s := newStack(t)
	const size = 8 << 20
	g := s.origin.GateNext(size, 3<<20)
	id := s.create(events.FileSpec{RemoteURL: s.origin.URL(size), LocalName: s.dest("c/x.bin")})
	<-g.Reached
	s.until(id, "TRANSFERRING", state(job.Transferring))
	if len(partFiles(t, s.root)) == 0 {
		t.Fatal("no temporary file while transferring")
	}
	r := s.action(id, "cancel")
	if r.Code != "S_OK" || r.Job.State != job.Cancelled {
		t.Fatalf("cancel: %+v", r)
	}
	g.Open()
	s.until(id, "the cleanup", func(j *job.Job) bool { return j.State == job.Cancelled && !j.PendingCleanup })
	if left := partFiles(t, s.root); len(left) != 0 {
		t.Fatalf("temporary files left after cancel: %v", left)
	}
	if _, err := os.Stat(s.dest("c/x.bin")); !os.IsNotExist(err) {
		t.Fatalf("the destination exists after cancel: %v", err)
	}
}

func TestSuspendMidTransferThenResume(t *testing.T) {
	s := newStack(t)
	const size = 8 << 20
	g := s.origin.GateNext(size, 5<<20)
	dest := s.dest("s.bin")
	id := s.create(events.FileSpec{RemoteURL: s.origin.URL(size), LocalName: dest})
	<-g.Reached
	s.until(id, "TRANSFERRING", state(job.Transferring))
	if r := s.action(id, "suspend"); r.Job.State != job.Suspended {
		t.Fatalf("suspend: %+v", r)
	}
	g.Open()
	// The staged bytes stay for the resume.
	if len(partFiles(t, s.root)) == 0 {
		t.Fatal("suspend deleted the temporary file")
	}
	s.action(id, "resume")
	j := s.until(id, "TRANSFERRED", state(job.Transferred))
	if j.Attempt < 2 {
		t.Fatalf("attempt %d after resume", j.Attempt)
	}
	resumed := false
	for _, r := range s.origin.Ranges()[1:] {
		resumed = resumed || (strings.HasPrefix(r, "bytes=") && r != "bytes=0-")
	}
	if !resumed {
		t.Fatalf("the resume did not continue with a Range request: %q", s.origin.Ranges())
	}
	s.action(id, "complete")
	s.until(id, "ACKNOWLEDGED", state(job.Acknowledged))
	if got := servicestest.FileSum(t, dest); got != servicestest.Sum(size) {
		t.Fatal("file differs from the origin's")
	}
}

func TestHTTPErrorsBecomeJobErrors(t *testing.T) {
	s := newStack(t)
	id := s.create(events.FileSpec{RemoteURL: s.origin.StatusURL(404), LocalName: s.dest("404.bin")})
	j := s.until(id, "ERROR", state(job.Errored))
	if e := j.Error; e == nil || e.Code != "BG_E_HTTP_ERROR_404" || e.HResult != "0x80190194" || e.Context != job.ContextRemoteFile || e.FileIndex != 0 {
		t.Fatalf("error %+v", j.Error)
	}

	s.origin.RetryAfter("30")
	id = s.create(events.FileSpec{RemoteURL: s.origin.StatusURL(503), LocalName: s.dest("503.bin")})
	j = s.until(id, "TRANSIENT_ERROR", state(job.TransientError))
	if j.Error.Code != "BG_E_HTTP_ERROR_503" || j.RetryAt == nil || j.RetryAt.Sub(j.Times.Modification) < 600*time.Second {
		t.Fatalf("transient error %+v, retry at %v", j.Error, j.RetryAt)
	}
	// Resume retries at once (no waiting for MinimumRetryDelay).
	s.action(id, "resume")
	s.until(id, "a second attempt", func(j *job.Job) bool { return j.Attempt >= 2 && j.State == job.TransientError })
}

func TestDestinationOutsideRootIsRefused(t *testing.T) {
	s := newStack(t)
	outside := filepath.ToSlash(filepath.Join(t.TempDir(), "x.bin"))
	id := s.create(events.FileSpec{RemoteURL: s.origin.URL(10), LocalName: outside})
	j := s.until(id, "ERROR", state(job.Errored))
	if j.Error.Code != "E_ACCESSDENIED" || j.Error.Context != job.ContextLocalFile {
		t.Fatalf("error %+v", j.Error)
	}
	if _, err := os.Stat(outside); !os.IsNotExist(err) {
		t.Fatal("a file was written outside the agent's root")
	}
}

func TestPartialComplete(t *testing.T) {
	s := newStack(t)
	good, bad := s.dest("p/good.bin"), s.dest("p/bad.bin")
	id := s.create(
		events.FileSpec{RemoteURL: s.origin.URL(1 << 20), LocalName: good},
		events.FileSpec{RemoteURL: s.origin.StatusURL(410), LocalName: bad},
	)
	s.until(id, "ERROR on the second file", state(job.Errored))
	r := s.action(id, "complete")
	if r.Job.State == job.Acknowledged {
		t.Fatalf("complete acknowledged at once though the agent holds a file: %+v", r)
	}
	j := s.until(id, "ACKNOWLEDGED", state(job.Acknowledged))
	if !j.Files[0].Completed || j.Files[1].Completed {
		t.Fatalf("files after partial complete: %+v", j.Files)
	}
	if got := servicestest.FileSum(t, good); got != servicestest.Sum(1<<20) {
		t.Fatal("finished file differs")
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatal("the unfinished file was made visible")
	}
	if left := partFiles(t, s.root); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	got, err := s.client.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != job.Acknowledged {
		t.Fatalf("read model %s", got.State)
	}
}

func TestManyFilesInOrder(t *testing.T) {
	s := newStack(t)
	var files []events.FileSpec
	sizes := []int64{0, 1, 4096, 1 << 20, 3<<20 + 7}
	for i, n := range sizes {
		files = append(files, events.FileSpec{RemoteURL: s.origin.URL(n), LocalName: s.dest("m/" + string(rune('a'+i)) + ".bin")})
	}
	id := s.create(files...)
	var order []int
	s.until(id, "TRANSFERRED", func(j *job.Job) bool {
		if len(order) == 0 || order[len(order)-1] != j.CurrentFile {
			order = append(order, j.CurrentFile)
		}
		return j.State == job.Transferred
	})
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			t.Fatalf("files ran out of order: %v", order)
		}
	}
	s.action(id, "complete")
	j := s.until(id, "ACKNOWLEDGED", state(job.Acknowledged))
	for i, f := range files {
		if got := servicestest.FileSum(t, f.LocalName); got != servicestest.Sum(sizes[i]) || j.Files[i].SHA256 != got {
			t.Fatalf("file %d: sha256 %s, event says %s", i, got, j.Files[i].SHA256)
		}
	}
}
