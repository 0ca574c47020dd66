package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
)

// TestPrintsAndResumes builds the program, runs it against an embedded
// JetStream server holding a few events (one recorded as JobTransientError
// v1), sees one line per event, one more as it is appended, a clean exit on
// SIGTERM, and a second run that prints only what is new.
func TestPrintsAndResumes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "eventconsumer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ns, _, js := eventstest.StartServer(t)
	ctx := context.Background()
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	const jobID = "01a19b98-1dc0-7000-8000-020000000000" // the golden event's job
	var last uint64
	add := func(p events.Payload) uint64 {
		t.Helper()
		ev, err := events.New(events.KindJob, jobID, events.Meta{Time: time.Now(), Actor: "spiffe://ferry.test/user/alice"}, p)
		if err != nil {
			t.Fatal(err)
		}
		evs := []events.Event{ev}
		if err := events.AssignIDs(evs); err != nil {
			t.Fatal(err)
		}
		if last, err = store.Append(ctx, events.JobSubject(jobID), last, evs); err != nil {
			t.Fatal(err)
		}
		return last
	}
	created := add(&events.JobCreated{JobID: jobID, DisplayName: "nightly", Owner: "alice", Priority: "NORMAL", Pool: "default", JobType: "DOWNLOAD"})
	queued := add(&events.JobQueued{Reason: "resume"})
	golden, err := os.ReadFile("../../events/testdata/golden/events/JobTransientError.v1.json")
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(ctx, events.JobSubject(jobID), bytes.TrimSpace(golden))
	if err != nil {
		t.Fatal(err)
	}
	last = ack.Sequence

	p := start(t, bin, ns.ClientURL())
	p.expect(fmt.Sprintf("%d ", created), "JobCreated v1", `owner=alice name="nightly"`)
	p.expect(fmt.Sprintf("%d ", queued), "JobQueued v1")
	p.expect(fmt.Sprintf("%d ", last), "JobTransientError v1", "code=ERROR_WINHTTP_CANNOT_CONNECT attempt=0")
	suspended := add(&events.JobSuspended{})
	p.expect(fmt.Sprintf("%d ", suspended), "JobSuspended v1")
	p.stop()

	// The second run starts after what the first one printed.
	cancelled := add(&events.JobCancelled{})
	p = start(t, bin, ns.ClientURL())
	p.expect(fmt.Sprintf("%d ", cancelled), "JobCancelled v1")
	p.stop()
}

type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

func start(t *testing.T, bin, url string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(bin, "--nats-url", url, "--durable", "example"), lines: make(chan string, 100), stderr: &syncBuffer{}}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		_, _ = io.Copy(io.Discard, out)
	}()
	return p
}

// expect waits for the next line and checks that it holds every part.
func (p *proc) expect(parts ...string) {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("the program ended; stderr:\n%s", p.stderr.String())
		}
		for _, part := range parts {
			if !strings.Contains(l, part) {
				p.t.Fatalf("line %q lacks %q", l, part)
			}
		}
		if !strings.HasPrefix(l, parts[0]) {
			p.t.Fatalf("line %q does not start with %q", l, parts[0])
		}
	case <-time.After(15 * time.Second):
		p.t.Fatalf("no line within 15s; stderr:\n%s", p.stderr.String())
	}
}

// stop sends SIGTERM and expects a clean exit and nothing more printed.
func (p *proc) stop() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	for l := range p.lines {
		p.t.Fatalf("unexpected line %q", l)
	}
	if err := p.cmd.Wait(); err != nil {
		p.t.Fatalf("exit: %v; stderr:\n%s", err, p.stderr.String())
	}
}
