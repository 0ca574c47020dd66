package main

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/nats-io/nats.go/jetstream"
)

// TestReplayVerifyAndRebuild: through the real binary against `ferry dev`,
// a read-model entry corrupted behind the coordinator's back makes `ferry
// replay verify` exit non-zero naming the job and the field; `ferry replay
// rebuild` builds generation 2 from the log and deletes ferry_jobs; verify
// then exits 0 and the job shows its true state.
func TestReplayVerifyAndRebuild(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	s := startStack(t, dataDir, root, o.CAFile)

	// A few histories: a finished transfer, a suspended job, a cancelled one.
	if out, code := ferry(t, dataDir, "transfer", o.URL(4096), filepath.Join(root, "t.bin")); code != 0 {
		t.Fatalf("transfer exited %d: %s", code, out)
	}
	var ids []string
	for _, name := range []string{"kept", "victim", "dropped"} {
		out, code := ferry(t, dataDir, "job", "create", "--name", name, o.URL(1024), filepath.Join(root, name+".bin"))
		if code != 0 {
			t.Fatalf("create exited %d", code)
		}
		ids = append(ids, strings.TrimSpace(out))
	}
	if _, code := ferry(t, dataDir, "job", "cancel", ids[2]); code != 0 {
		t.Fatal("cancel failed")
	}
	if out, code := ferry(t, dataDir, "replay", "verify"); code != 0 || !strings.Contains(out, "agree") {
		t.Fatalf("verify of a healthy stack exited %d: %s", code, out)
	}

	// Corrupt the victim's entry straight in the bucket.
	victim := ids[1]
	js := connectJetStream(t, s.info.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, coordinator.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the victim in the read model", func() bool {
		_, err := kv.Get(ctx, victim)
		return err == nil
	})
	e, err := kv.Get(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	var j job.Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		t.Fatal(err)
	}
	j.State = job.Acknowledged
	b, _ := json.Marshal(&j)
	if _, err := kv.Put(ctx, victim, b); err != nil {
		t.Fatal(err)
	}

	out, code := ferry(t, dataDir, "replay", "verify")
	t.Logf("verify of the corrupted model:\n%s", out)
	if code != services.ExitMismatch || !strings.Contains(out, victim) || !strings.Contains(out, "differs") ||
		!strings.Contains(out, `state: live "ACKNOWLEDGED", replayed "SUSPENDED"`) {
		t.Fatalf("verify of a corrupted model exited %d:\n%s", code, out)
	}
	out, code = ferry(t, dataDir, "replay", "verify", "-o", "json")
	var rep coordinator.VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != services.ExitMismatch || rep.Agree ||
		len(rep.Projections) != 1 || len(rep.Projections[0].Mismatches) != 1 || rep.Projections[0].Mismatches[0].Job != victim {
		t.Fatalf("verify -o json exited %d: %v\n%s", code, err, out)
	}

	out, code = ferry(t, dataDir, "replay", "rebuild")
	t.Logf("rebuild:\n%s", out)
	if code != 0 || !strings.Contains(out, "generation 2 (bucket ferry_jobs_2)") || !strings.Contains(out, "ferry_jobs) deleted") {
		t.Fatalf("rebuild exited %d:\n%s", code, out)
	}
	if _, err := js.KeyValue(ctx, coordinator.JobsBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("ferry_jobs after the rebuild: %v", err)
	}
	if out, code := ferry(t, dataDir, "replay", "verify"); code != 0 || !strings.Contains(out, "generation 2") || !strings.Contains(out, "agree") {
		t.Fatalf("verify after the rebuild exited %d:\n%s", code, out)
	}
	if got := showJob(t, dataDir, victim); got.State != job.Suspended {
		t.Fatalf("victim after the rebuild: %s", got.State)
	}
	if _, code := ferry(t, dataDir, "replay", "rebuild", "--projection", "agents"); code != 1 {
		t.Fatalf("rebuild of an unknown projection exited %d", code)
	}

	// After a restart the stack reads generation 2 again.
	js.Conn().Close()
	s.stop(syscall.SIGTERM)
	startStack(t, dataDir, root, o.CAFile)
	if out, code := ferry(t, dataDir, "replay", "verify"); code != 0 || !strings.Contains(out, "generation 2") {
		t.Fatalf("verify after a restart exited %d:\n%s", code, out)
	}
	if got := showJob(t, dataDir, ids[0]); got.State != job.Suspended || got.DisplayName != "kept" {
		t.Fatalf("job after the restart: %+v", got)
	}
}
