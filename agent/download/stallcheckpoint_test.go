package download

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download/origintest"
)

// TestCheckpointWhileStalled: bytes received before the body stalls are
// made durable (data and sidecar fsynced, OnCheckpoint called) once the
// checkpoint interval passes, although no byte arrives meanwhile — so a
// crash during a stall resumes from there.
func TestCheckpointWhileStalled(t *testing.T) {
	s := origintest.New(t, origintest.Options{})
	const size, stallAt = 600_000, 250_000
	c := origintest.Content{Seed: 77, Size: size}
	s.SetFile("/s.bin", origintest.File{Content: c, ETag: `"s"`})
	s.Inject(origintest.Fault{Path: "/s.bin", Count: 1, Stall: true, StallAfter: stallAt})
	root, _ := testRoot(t)
	cps := make(chan Checkpoint, 16)
	done := make(chan error, 1)
	go func() {
		_, err := Fetch(t.Context(), Request{URL: s.URL + "/s.bin", Root: root, TempName: tempName,
			Client:             testClient(t, ClientOptions{RootCAs: s.CAPool, IdleReadTimeout: -1}),
			CheckpointInterval: 50 * time.Millisecond,
			OnCheckpoint:       func(cp Checkpoint) error { cps <- cp; return nil }})
		done <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Wait(ctx, func(st origintest.Stats) bool { return st.Stalled == 1 }); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case cp := <-cps:
			if cp.Bytes < stallAt {
				continue // taken before the stall
			}
			if cp.Bytes != stallAt {
				t.Fatalf("checkpoint at %d, the origin stalled at %d", cp.Bytes, stallAt)
			}
			if st := s.Stats(); st.Stalled != 1 {
				t.Fatalf("the origin is no longer stalled: %+v", st)
			}
			st, err := loadStateForTest(root, tempName)
			if err != nil || st != stallAt {
				t.Fatalf("sidecar offset %d (%v), want %d", st, err, stallAt)
			}
			s.Release()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			return
		case err := <-done:
			t.Fatalf("Fetch ended while stalled: %v", err)
		case <-ctx.Done():
			t.Fatal("no checkpoint while the body stalled")
		}
	}
}

// loadStateForTest returns the offset the sidecar records.
func loadStateForTest(root *os.Root, name string) (int64, error) {
	st, _, ok, err := loadState(root, name)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, os.ErrNotExist
	}
	return st.Offset, nil
}
