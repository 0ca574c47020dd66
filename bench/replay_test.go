package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// history builds the events of job id by running commands through
// job.Decide and job.Apply, as the coordinator and the agents do, with a
// clock that starts at t and fixed IDs.
type history struct {
	id  string
	j   job.Job
	now time.Time
	evs []events.Event
}

func (h *history) do(tb testing.TB, d time.Duration, c job.Command) {
	h.now = h.now.Add(d)
	ps, err := job.Decide(&h.j, c, h.now)
	if err != nil || len(ps) == 0 {
		tb.Fatalf("%s: %s: %d events, %v", h.id, job.CommandName(c), len(ps), err)
	}
	for _, p := range ps {
		ev, err := events.New(events.KindJob, h.id, events.Meta{Time: h.now, Actor: "spiffe://ferry.test/agent/" + h.j.Agent}, p)
		if err != nil {
			tb.Fatal(err)
		}
		if err := job.Apply(&h.j, p, h.now); err != nil {
			tb.Fatal(err)
		}
		h.evs = append(h.evs, ev)
	}
}

// longJob is a job that has been running for a long time: n events, most of
// them progress checkpoints of a large file, with a transient error and a
// retry every 500 events.
func longJob(tb testing.TB, id string, n int) []events.Event {
	h := &history{id: id, now: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
	const size = 1 << 40
	sec := time.Second
	h.do(tb, 0, job.Create{JobID: id, Owner: "spiffe://ferry.test/user/alice", DisplayName: "archive sync", MinimumRetryDelay: &sec,
		Files: []events.FileSpec{{RemoteURL: "https://archive.example.org/big.tar", LocalName: "/srv/big.tar"}}})
	h.do(tb, sec, job.Resume{})
	var done int64
	for len(h.evs) < n {
		h.do(tb, sec, job.Lease{Agent: "host-a", DispatchSeq: h.j.Version})
		h.do(tb, sec, job.StartConnecting{Agent: "host-a"})
		h.do(tb, sec, job.StartTransferring{Agent: "host-a", BytesTotal: size, Offset: done})
		for k := 0; k < 494 && len(h.evs) < n-1; k++ {
			done += 64 << 20
			h.do(tb, sec, job.Checkpoint{Agent: "host-a", BytesTransferred: done, BytesTotal: size})
		}
		if len(h.evs) >= n {
			break
		}
		h.do(tb, sec, job.Fail{Agent: "host-a", Transient: true,
			Error: events.ErrorInfo{Context: job.ContextRemoteFile, Code: "ERROR_WINHTTP_CONNECTION_ERROR", HResult: "0x80072EFE", Description: "connection reset by peer"}})
		h.now = h.now.Add(6 * sec) // the retry delay (5 s at least) elapsed: the next Lease requeues
	}
	h.evs = h.evs[:n]
	if err := events.AssignIDs(h.evs); err != nil {
		tb.Fatal(err)
	}
	return h.evs
}

// kvSnapshots is a jobstore.Snapshots on a KV bucket holding each job's
// state as JSON, as the coordinator's read model does.
type kvSnapshots struct{ kv jetstream.KeyValue }

func (s kvSnapshots) Snapshot(ctx context.Context, id string) (job.Job, uint64, bool, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return job.Job{}, 0, false, nil
	}
	if err != nil {
		return job.Job{}, 0, false, err
	}
	var j job.Job
	if err := json.Unmarshal(e.Value(), &j); err != nil {
		return job.Job{}, 0, false, err
	}
	return j, j.Version, true, nil
}

// BenchmarkLoadLongJob loads a job of 10,000 events from an embedded
// JetStream (fsync on every write, as ferry runs) two ways: "replay" reads
// and applies all of them (jobstore.Repo without snapshots), "snapshot"
// reads the job's state as of 10 events ago from a KV bucket on the same
// server (JSON, as the read model stores it) and applies the 10 events
// after it; x-replay is how many times faster that is. Both are measured
// with the server's cache of the job's block warm and cold (see below).
//
// The job's events are stored contiguously, in batches of 1000: the best
// case for the full replay (interleaved with other jobs' events, a
// subject's read gets slower; see research/jetstream.md §2).
func BenchmarkLoadLongJob(b *testing.B) {
	const n, tail = 10_000, 10
	_, _, js := eventstest.StartServer(b)
	ctx := b.Context()
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		b.Fatal(err)
	}
	const id = "0196f3a2-7c00-7000-8000-00000000beef"
	evs := longJob(b, id, n)
	var last uint64
	for i := 0; i < len(evs); i += events.MaxAppend {
		if last, err = store.Append(ctx, events.JobSubject(id), last, evs[i:min(i+events.MaxAppend, len(evs))]); err != nil {
			b.Fatal(err)
		}
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench_snapshots", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	stored, err := store.Load(ctx, events.JobSubject(id), 0)
	if err != nil || len(stored) != n {
		b.Fatalf("%d events stored, %v", len(stored), err)
	}
	snap, err := job.Replay(stored[:n-tail])
	if err != nil {
		b.Fatal(err)
	}
	val, err := json.Marshal(&snap)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := kv.Put(ctx, id, val); err != nil {
		b.Fatal(err)
	}
	full := &jobstore.Repo{Store: store}
	fromSnap := &jobstore.Repo{Store: store, Snapshots: kvSnapshots{kv},
		SnapshotUnusable: func(id string, err error) { b.Fatalf("%s: %v", id, err) }}
	want, err := full.Load(ctx, id)
	if err != nil {
		b.Fatal(err)
	}
	if got, err := fromSnap.Load(ctx, id); err != nil || !cmp.Equal(want, got) {
		b.Fatalf("snapshot + tail differs from replay: %v\n%s", err, cmp.Diff(want, got))
	}

	// The server holds a block's messages in a cache while it is being
	// written and for 10 s after its last write; after that, every direct
	// get that has to find a job's events in the block loads and indexes
	// the whole block again (nats-server 2.15: msgBlock.firstMatching ->
	// loadMsgsWithLock). "warm" runs start with an append to another
	// subject (the block is being written, as for a job that is active);
	// "cold" runs come after 12 s without writes (a job that was quiet).
	touched := uint64(0)
	touch := func(b *testing.B) {
		ev := longJob(b, "bench-touch", 1)
		if touched, err = store.Append(ctx, events.JobSubject("bench-touch"), touched, ev); err != nil {
			b.Fatal(err)
		}
	}
	load := func(repo *jobstore.Repo, warm bool, perOp *time.Duration, ref *time.Duration) func(b *testing.B) {
		return func(b *testing.B) {
			if warm {
				touch(b)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := repo.Load(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
			*perOp = b.Elapsed() / time.Duration(b.N)
			if ref != nil && *ref > 0 {
				b.ReportMetric(float64(*ref)/float64(*perOp), "x-replay")
			}
		}
	}
	var replay, snapshot, replayCold, snapshotCold time.Duration
	b.Run("replay", load(full, true, &replay, nil))
	b.Run("snapshot", load(fromSnap, true, &snapshot, &replay))
	// For comparison, not what Repo does: the job's events through an
	// ordered consumer on its subject (JetStreamStore.Subscribe) instead of
	// batched direct gets (JetStreamStore.Load), applied as they arrive.
	b.Run("replay-consumer", func(b *testing.B) {
		touch(b)
		b.ReportAllocs()
		for b.Loop() {
			var j job.Job
			got := 0
			err := store.Subscribe(ctx, events.JobSubject(id), 0, func(ev events.Event) error {
				if err := job.Evolve(&j, &ev); err != nil {
					return err
				}
				if got++; got == n {
					return errDone
				}
				return nil
			})
			if !errors.Is(err, errDone) || j.Version != want.Version {
				b.Fatalf("%d events, version %d: %v", got, j.Version, err)
			}
		}
	})
	time.Sleep(12 * time.Second)
	b.Run("replay-cold", load(full, false, &replayCold, nil))
	b.Run("snapshot-cold", load(fromSnap, false, &snapshotCold, &replayCold))
	if snapshot > 0 && snapshotCold > 0 {
		b.Logf("job of %d events (%d-byte snapshot): warm: replay %v, snapshot + %d events %v (%.0fx); cold: replay %v, snapshot %v (%.0fx)",
			n, len(val), replay, tail, snapshot, float64(replay)/float64(snapshot), replayCold, snapshotCold, float64(replayCold)/float64(snapshotCold))
	}
}

// rebuildEnv turns on BenchmarkRebuild: it appends a million events first,
// which takes a while and about 1 GiB of disk.
const rebuildEnv = "FERRY_BENCH_REBUILD"

// BenchmarkRebuild measures a full rebuild of the jobs read model minus the
// KV writes: a million job events (100,000 jobs × 10, a realistic mix,
// jobs progressing 1000 at a time so their events interleave) are appended
// to an embedded JetStream on a temp dir, then read back in the same run:
//
//   - raw: an ordered consumer over the whole stream (filter ferry.evt.>)
//     that only receives the messages: the reference;
//   - raw-jobfilter: the same with the projector's filter ferry.evt.job.>,
//     which the server matches against every subject of the stream;
//   - decode: events.JetStreamStore.Subscribe on ferry.evt.job.> (ordered
//     consumer, envelope decoding, stream sequence) and Event.Payload;
//   - rebuild: the same plus job.Evolve of each event into its job's state
//     in memory: what the projector does before its KV write;
//   - rebuild-all: rebuild subscribed to ferry.evt.> and skipping events of
//     other kinds.
//
// Each reports events/s and its fraction of raw (of-raw). The log is written
// without fsync (the reads do not depend on it, and a million fsynced
// appends would take an hour on a small VM).
//
//	FERRY_BENCH_REBUILD=1 go test ./bench/ -run '^$' -bench BenchmarkRebuild -benchtime 1x -count 3 -timeout 60m
//
// FERRY_BENCH_REBUILD=<jobs> appends that many jobs instead of 100,000.
func BenchmarkRebuild(b *testing.B) {
	v := os.Getenv(rebuildEnv)
	if v == "" {
		b.Skipf("set %s=1 to append a million events and rebuild from them", rebuildEnv)
	}
	jobs := 100_000
	if n, err := strconv.Atoi(v); err == nil && n > 1 {
		jobs = n
	}
	js := startUnsyncedServer(b)
	ctx := b.Context()
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	total := appendMix(b, js, jobs)
	b.Logf("appended %d events of %d jobs in %v (%.0f events/s)", total, jobs, time.Since(start).Round(time.Millisecond), float64(total)/time.Since(start).Seconds())
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		b.Fatal(err)
	}

	const all, jobsOnly = events.SubjectPrefix + ">", events.SubjectPrefix + events.KindJob + ".>"
	var raw float64
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
			readRaw(b, js, all, total)
		}
		raw = reportRate(b, total, 0)
	})
	b.Run("raw-jobfilter", func(b *testing.B) {
		for b.Loop() {
			readRaw(b, js, jobsOnly, total)
		}
		reportRate(b, total, raw)
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			subscribeAll(b, store, jobsOnly, total, func(ev *events.Event) error {
				_, err := ev.Payload()
				return err
			})
		}
		reportRate(b, total, raw)
	})
	rebuild := func(filter string) func(b *testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				states := make(map[string]*job.Job, jobs)
				subscribeAll(b, store, filter, total, func(ev *events.Event) error {
					if ev.Kind != events.KindJob {
						return nil
					}
					j := states[ev.AggregateID]
					if j == nil {
						j = new(job.Job)
						states[ev.AggregateID] = j
					}
					return job.Evolve(j, ev)
				})
				if len(states) != jobs {
					b.Fatalf("%d jobs rebuilt, want %d", len(states), jobs)
				}
			}
			reportRate(b, total, raw)
		}
	}
	b.Run("rebuild", rebuild(jobsOnly))
	b.Run("rebuild-all", rebuild(all))
}

func reportRate(b *testing.B, n int, raw float64) float64 {
	r := float64(n) * float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(r, "events/s")
	if raw > 0 {
		b.ReportMetric(r/raw, "of-raw")
	}
	return r
}

// startUnsyncedServer is eventstest.StartServer without fsync on every write
// and without a listener.
func startUnsyncedServer(b *testing.B) jetstream.JetStream {
	ns, err := server.NewServer(&server.Options{
		ServerName: "ferry-bench", JetStream: true, StoreDir: b.TempDir(), DontListen: true,
		NoLog: true, NoSigs: true, JetStreamMaxMemory: 256 << 20, JetStreamMaxStore: 16 << 30,
	})
	if err != nil {
		b.Fatal(err)
	}
	ns.Start()
	b.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		b.Fatal("server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL(), nats.InProcessServer(ns))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	return js
}

// mixJob returns the 10 events of job number i: most jobs are created,
// queued, leased, transferred and completed; every fifth fails transiently
// and is retried; every seventh gets a certificate and a priority change
// and is suspended mid-transfer.
func mixJob(tb testing.TB, i int, t0 time.Time) []events.Event {
	id := fmt.Sprintf("0196f3a2-%04x-7%03x-8%03x-%012x", i>>16&0xffff, i>>4&0xfff, i&0xf, i)
	h := &history{id: id, now: t0}
	const size = 48 << 20
	ms := time.Millisecond
	h.do(tb, 0, job.Create{JobID: id, Owner: "spiffe://ferry.test/user/u" + strconv.Itoa(i%50), DisplayName: "nightly " + strconv.Itoa(i),
		Files: []events.FileSpec{{RemoteURL: "https://origin.example.net/data/" + strconv.Itoa(i) + ".bin", LocalName: "/srv/data/" + strconv.Itoa(i) + ".bin"}}})
	switch {
	case i%7 == 0:
		h.do(tb, ms, job.SetClientCertificate{LocationName: "CURRENT_USER", Store: "MY", SHA1: "3f786850e387550fdab836ed7e6dc881de23001b",
			Subject: "CN=u,O=Example", By: job.CertByID, CallerPrincipal: h.j.Owner})
		p := job.High
		h.do(tb, ms, job.Modify{Priority: &p})
		h.do(tb, ms, job.Resume{})
		h.do(tb, ms, job.Lease{Agent: "host-" + strconv.Itoa(i%16), DispatchSeq: h.j.Version})
		h.do(tb, ms, job.StartConnecting{Agent: h.j.Agent})
		h.do(tb, ms, job.StartTransferring{Agent: h.j.Agent, BytesTotal: size})
		h.do(tb, time.Second, job.Checkpoint{Agent: h.j.Agent, BytesTransferred: size / 2, BytesTotal: size})
		h.do(tb, time.Second, job.Suspend{})
	case i%5 == 0:
		h.do(tb, ms, job.Resume{})
		h.do(tb, ms, job.Lease{Agent: "host-" + strconv.Itoa(i%16), DispatchSeq: h.j.Version})
		h.do(tb, ms, job.StartConnecting{Agent: h.j.Agent})
		h.do(tb, 20*time.Second, job.Fail{Agent: h.j.Agent, Transient: true,
			Error: events.ErrorInfo{Context: job.ContextRemoteFile, Code: "ERROR_WINHTTP_CANNOT_CONNECT", HResult: "0x80072EFD", Description: "connection refused"}})
		h.do(tb, 11*time.Minute, job.Lease{Agent: "host-" + strconv.Itoa((i+1)%16), DispatchSeq: h.j.Version})
		h.do(tb, ms, job.StartConnecting{Agent: h.j.Agent})
		h.do(tb, ms, job.StartTransferring{Agent: h.j.Agent, BytesTotal: size})
	default:
		h.do(tb, ms, job.Resume{})
		h.do(tb, ms, job.Lease{Agent: "host-" + strconv.Itoa(i%16), DispatchSeq: h.j.Version})
		h.do(tb, ms, job.StartConnecting{Agent: h.j.Agent})
		h.do(tb, ms, job.StartTransferring{Agent: h.j.Agent, BytesTotal: size})
		h.do(tb, time.Second, job.Checkpoint{Agent: h.j.Agent, BytesTransferred: size / 2, BytesTotal: size})
		h.do(tb, time.Second, job.FileDone{Agent: h.j.Agent, Bytes: size, SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			TempName: "data/." + strconv.Itoa(i) + ".bin.ferry-" + id + "-0.part", ETag: `"abc"`,
			ResponseHeaders: map[string]string{"Content-Length": "50331648", "Content-Type": "application/octet-stream"}})
		h.do(tb, time.Second, job.Complete{})
	}
	if len(h.evs) != 10 {
		tb.Fatalf("job %d has %d events", i, len(h.evs))
	}
	if err := events.AssignIDs(h.evs); err != nil {
		tb.Fatal(err)
	}
	return h.evs
}

// appendMix appends the events of jobs jobs, 1000 jobs at a time with their
// events interleaved, by asynchronous publishes carrying the headers
// JetStreamStore.Append sets (event ID, type, expected stream and expected
// last subject sequence). It returns the number of events.
func appendMix(b *testing.B, js jetstream.JetStream, jobs int) int {
	ctx := b.Context()
	const wave = 1000
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var seq uint64
	lastSeq := make(map[string]uint64, jobs)
	for w := 0; w < jobs; w += wave {
		hs := make([][]events.Event, min(wave, jobs-w))
		for k := range hs {
			hs[k] = mixJob(b, w+k, t0.Add(time.Duration(w+k)*time.Second))
		}
		for step := range 10 {
			for k := range hs {
				ev := &hs[k][step]
				data, err := events.Marshal(ev)
				if err != nil {
					b.Fatal(err)
				}
				subj := ev.Subject()
				m := &nats.Msg{Subject: subj, Data: data, Header: nats.Header{
					jetstream.MsgIDHeader:               []string{ev.ID.String()},
					events.HeaderEventType:              []string{ev.Type},
					jetstream.ExpectedStreamHeader:      []string{events.StreamName},
					jetstream.ExpectedLastSubjSeqHeader: []string{strconv.FormatUint(lastSeq[subj], 10)},
				}}
				seq++
				lastSeq[subj] = seq
				if _, err := js.PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("publishes not acknowledged")
		}
	}
	info, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		b.Fatal(err)
	}
	if got := info.CachedInfo().State.Msgs; got != seq {
		b.Fatalf("stream holds %d messages, %d published (a publish failed)", got, seq)
	}
	return int(seq)
}

// readRaw receives n messages through an ordered consumer with filter and
// does nothing with them.
func readRaw(b *testing.B, js jetstream.JetStream, filter string, n int) {
	ctx := b.Context()
	cons, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	bytes := 0
	for range n {
		m, err := it.Next()
		if err != nil {
			b.Fatal(err)
		}
		bytes += len(m.Data())
	}
	if bytes == 0 {
		b.Fatal("no data")
	}
}

var errDone = errors.New("done")

// subscribeAll runs fn on the first n events matching filter through
// JetStreamStore.Subscribe, as the projector reads them.
func subscribeAll(b *testing.B, store *events.JetStreamStore, filter string, n int, fn func(*events.Event) error) {
	got := 0
	err := store.Subscribe(b.Context(), filter, 0, func(ev events.Event) error {
		if err := fn(&ev); err != nil {
			return err
		}
		if got++; got == n {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		b.Fatalf("after %d events: %v", got, err)
	}
}
