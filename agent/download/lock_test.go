package download

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/rs/zerolog"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestOneWriterPerStagingFile: on a root two agents share, a job's new
// holder does not write the staging file while the previous holder (paused
// past its lease, it does not know yet that it lost the job) still has it
// open: it waits, writing nothing, and once the old writer lets go it
// resumes from the sidecar the old one left, with a Range request.
func TestOneWriterPerStagingFile(t *testing.T) {
	s := origintest.New(t, origintest.Options{})
	const size, stallAt = 600_000, 250_000
	c := origintest.Content{Seed: 78, Size: size}
	s.SetFile("/s.bin", origintest.File{Content: c, ETag: `"s"`})
	s.Inject(origintest.Fault{Path: "/s.bin", Count: 1, Stall: true, StallAfter: stallAt, StallForever: true})
	dir := t.TempDir()
	openRoot := func() *os.Root {
		r, err := os.OpenRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	rootOld, rootNew := openRoot(), openRoot() // two agents, one storage
	client := testClient(t, ClientOptions{RootCAs: s.CAPool, IdleReadTimeout: -1})

	cps := make(chan Checkpoint, 16)
	oldCtx, stopOld := context.WithCancel(t.Context())
	defer stopOld()
	oldDone := make(chan error, 1)
	go func() {
		_, err := Fetch(oldCtx, Request{URL: s.URL + "/s.bin", Root: rootOld, TempName: tempName, Client: client,
			CheckpointInterval: 50 * time.Millisecond, OnCheckpoint: func(cp Checkpoint) error { cps <- cp; return nil }})
		oldDone <- err
	}()
	for cp := range cps { // the old writer made the stalled bytes durable
		if cp.Bytes == stallAt {
			break
		}
	}

	logs := &lockedBuffer{}
	fetchNew := func(ctx context.Context) <-chan error {
		done := make(chan error, 1)
		go func() {
			res, err := Fetch(ctx, Request{URL: s.URL + "/s.bin", Root: rootNew, TempName: tempName, Client: client,
				Log: zerolog.New(logs)})
			if err == nil && res.SHA256 != c.SHA256() {
				err = errors.New("the resumed file's sha256 differs from the origin's")
			}
			done <- err
		}()
		return done
	}
	waiting := func() {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(logs.String(), "another writer holds the staging file") {
			if time.Now().After(deadline) {
				t.Fatalf("the new holder did not wait for the staging file; log:\n%s", logs)
			}
			time.Sleep(5 * time.Millisecond) // polling a condition
		}
	}

	// While the old writer holds it, the new holder waits and gives up
	// with its context, having written and asked for nothing.
	ctx, cancel := context.WithCancel(t.Context())
	done := fetchNew(ctx)
	waiting()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("new holder while the old one writes: %v", err)
	}
	if n := s.Stats().Requests; n != 1 {
		t.Fatalf("%d requests: the new holder asked the origin while the old one held the file", n)
	}
	if off, err := loadStateForTest(rootNew, tempName); err != nil || off != stallAt {
		t.Fatalf("sidecar offset %d (%v), want the old writer's %d", off, err, stallAt)
	}

	// The old writer stops; the new holder resumes from its sidecar.
	logs = &lockedBuffer{}
	done = fetchNew(t.Context())
	waiting()
	stopOld()
	if err := <-oldDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("old writer: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("new holder: %v", err)
	}
	if rs := s.Ranges(); len(rs) != 2 || rs[1] != "bytes=250000-" {
		t.Fatalf("Range headers %q, want a resume at %d", rs, stallAt)
	}
}

// TestCreatedStagingFileRemovedOnFailure: a Fetch that made the staging
// file and staged nothing in it leaves no file when it fails — refused by
// the server, or its context ended (an agent that lost the job while it
// waited for the file, and found it gone, completed by the new holder).
func TestCreatedStagingFileRemovedOnFailure(t *testing.T) {
	ca := newCA(t, "test CA")
	arrived := make(chan struct{}, 1)
	srv := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/gone" {
			http.NotFound(w, r)
			return
		}
		arrived <- struct{}{}
		<-r.Context().Done() // no answer until the client leaves
	}), ca.localhost(t), nil, false)
	client := testClient(t, ClientOptions{RootCAs: ca.pool})
	for _, tc := range []struct {
		name string
		path string
	}{{"refused", "/gone"}, {"context ended", "/hang"}} {
		t.Run(tc.name, func(t *testing.T) {
			root, _ := testRoot(t)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.path == "/hang" {
				go func() { <-arrived; cancel() }()
			}
			if _, err := Fetch(ctx, Request{URL: srv.URL + tc.path, Root: root, TempName: tempName, Client: client}); err == nil {
				t.Fatal("Fetch succeeded")
			}
			if _, err := root.Stat(tempName); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("staging file after the failure: %v", err)
			}
		})
	}
}
