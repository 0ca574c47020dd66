//go:build goldenrecord

package events_test

// The recorder of events/testdata/golden. It ran once to record the
// histories and events there; they are data now, and TestGolden* read them
// without this file (it is behind a build tag so that changes to the job
// model never have to keep it compiling).
//
// To record something new (a new event type or version, a new history):
// add it below, then
//
//	go test -tags goldenrecord ./events/ -run TestRecordGolden -record
//	go test ./events/ -run TestGolden -update   # the expected states
//
// The recorder never overwrites a file with different content: what is
// recorded stays as it was stored, forever. Review the new files and commit
// them.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

var record = flag.Bool("record", false, "record the missing golden events and histories of events/testdata/golden")

const (
	alice   = "spiffe://ferry.test/user/alice"
	bob     = "spiffe://ferry.test/user/bob"
	admin   = "spiffe://ferry.test/user/ops-admin"
	clock   = "spiffe://ferry.test/service/coordinator"
	hostA   = "host-a"
	hostB   = "host-b"
	certSHA = "3f786850e387550fdab836ed7e6dc881de23001b"
)

func agentPrincipal(id string) string { return "spiffe://ferry.test/agent/" + id }

// uuidV7 makes a deterministic UUIDv7: the millisecond timestamp of t, then
// n where the random bits would be.
func uuidV7(t time.Time, n uint64) uuid.UUID {
	var u uuid.UUID
	ms := uint64(t.UnixMilli())
	binary.BigEndian.PutUint64(u[0:8], ms<<16)
	u[6] = 0x70 | byte(n>>56)&0x0f
	u[7] = byte(n >> 48)
	binary.BigEndian.PutUint64(u[8:16], n&0x0000ffffffffffff)
	u[8] = 0x80 | u[8]&0x3f
	return u
}

// recorder drives one job through job.Decide and job.Evolve, as the
// coordinator and the agents do, with a fixed clock and fixed IDs.
type recorder struct {
	t     *testing.T
	no    uint64 // the history's number, part of every ID it makes
	id    string
	j     job.Job
	now   time.Time
	evs   []events.Event
	reqNo int
}

func newRecorder(t *testing.T, created time.Time, no uint64) *recorder {
	return &recorder{t: t, no: no, id: jobID(created, no), now: created}
}

// jobID is the ID of the job of history no; its events' IDs are
// uuidV7(time, no<<40 | 1<<32 | index).
func jobID(created time.Time, no uint64) string { return uuidV7(created, no<<40).String() }

// do runs c as actor after d has passed and records its events. The command
// must be accepted and change something.
func (r *recorder) do(d time.Duration, actor string, c job.Command) {
	r.t.Helper()
	r.now = r.now.Add(d)
	ps, err := job.Decide(&r.j, c, r.now)
	if err != nil || len(ps) == 0 {
		r.t.Fatalf("%s: %s at %s: %d events, %v", r.id, job.CommandName(c), r.now, len(ps), err)
	}
	m := events.Meta{Time: r.now, Actor: actor}
	if actor == alice || actor == bob || actor == admin {
		r.reqNo++
		m.CorrelationID = fmt.Sprintf("req-%d-%02d", r.no, r.reqNo)
	}
	for _, p := range ps {
		if te, ok := p.(*events.JobTransientError); ok && te.Attempt == 0 {
			// What job.Decide records in version 2 (the attempt that
			// failed and the delay), for a Decide that does not fill it
			// in yet.
			te.Attempt = r.j.Attempt
			te.RetryAfterSec = int64((te.RetryAt.Sub(r.now) + time.Second - 1) / time.Second)
		}
		ev, err := events.New(events.KindJob, r.id, m, p)
		if err != nil {
			r.t.Fatal(err)
		}
		ev.ID = uuidV7(r.now, r.no<<40|1<<32|uint64(len(r.evs)+1))
		ev.Seq = uint64(len(r.evs) + 1)
		if err := job.Evolve(&r.j, &ev); err != nil {
			r.t.Fatal(err)
		}
		r.evs = append(r.evs, ev)
	}
}

func (r *recorder) lease(d time.Duration, agent string) {
	r.do(d, agentPrincipal(agent), job.Lease{Agent: agent, DispatchSeq: r.j.Version})
}

func (r *recorder) agent(d time.Duration, agent string, c job.Command) {
	r.do(d, agentPrincipal(agent), c)
}

func dur(d time.Duration) *time.Duration { return &d }

func ptr[T any](v T) *T { return &v }

func errInfo(c job.Code, ctx, desc string, file int) events.ErrorInfo {
	return events.ErrorInfo{Context: ctx, Code: c.Symbol, HResult: c.HResultString(), Description: desc, FileIndex: file}
}

var t0 = time.Date(2026, 11, 2, 8, 30, 0, 0, time.UTC)

// historyCompleteRanges: three files (an expected digest, ranges, one added
// later) transferred and completed.
func historyCompleteRanges(t *testing.T) *recorder {
	r := newRecorder(t, t0, 1)
	base := events.FileSpec{RemoteURL: "https://images.example.net/releases/2026.11/base.img", LocalName: "/srv/images/base.img",
		SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
	delta := events.FileSpec{RemoteURL: "https://images.example.net/releases/2026.11/delta.bin", LocalName: "/srv/images/delta.bin",
		Ranges: []events.FileRange{{Offset: 0, Length: 1 << 20}, {Offset: 4 << 20, Length: -1}}}
	r.do(0, alice, job.Create{JobID: r.id, DisplayName: "nightly images", Description: "base image and delta for the build farm",
		Owner: alice, Priority: job.High, MinimumRetryDelay: dur(time.Minute), Files: []events.FileSpec{base, delta}})
	r.do(2*time.Second, alice, job.AddFiles{Files: []events.FileSpec{{RemoteURL: "https://images.example.net/releases/2026.11/manifest.json", LocalName: "/srv/images/manifest.json"}}})
	r.do(time.Second, alice, job.Resume{})
	r.lease(300*time.Millisecond, hostA)
	r.agent(20*time.Millisecond, hostA, job.StartConnecting{Agent: hostA, FileIndex: 0})
	r.agent(80*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, FileIndex: 0, BytesTotal: 256 << 20})
	r.agent(time.Second, hostA, job.Checkpoint{Agent: hostA, FileIndex: 0, BytesTransferred: 64 << 20, BytesTotal: 256 << 20})
	r.agent(time.Second, hostA, job.Checkpoint{Agent: hostA, FileIndex: 0, BytesTransferred: 128 << 20, BytesTotal: 256 << 20})
	r.agent(2*time.Second, hostA, job.FileDone{Agent: hostA, FileIndex: 0, Bytes: 256 << 20, SHA256: base.SHA256,
		TempName: "images/.base.img.ferry-" + r.id + "-0.part", ETag: `"5f1c-2026.11"`, LastModified: "Sun, 01 Nov 2026 23:10:04 GMT",
		ResponseHeaders: map[string]string{"Content-Length": "268435456", "Content-Type": "application/octet-stream", "Etag": `"5f1c-2026.11"`, "Last-Modified": "Sun, 01 Nov 2026 23:10:04 GMT"}})
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA, FileIndex: 1})
	r.agent(40*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, FileIndex: 1, BytesTotal: 5 << 20})
	r.agent(200*time.Millisecond, hostA, job.FileDone{Agent: hostA, FileIndex: 1, Bytes: 5 << 20,
		SHA256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae", TempName: "images/.delta.bin.ferry-" + r.id + "-1.part",
		ResponseHeaders: map[string]string{"Content-Range": "bytes 4194304-8388607/8388608", "Content-Type": "application/octet-stream"}})
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA, FileIndex: 2})
	r.agent(30*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, FileIndex: 2, BytesTotal: 2311})
	r.agent(5*time.Millisecond, hostA, job.FileDone{Agent: hostA, FileIndex: 2, Bytes: 2311,
		SHA256: "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9", TempName: "images/.manifest.json.ferry-" + r.id + "-2.part",
		ResponseHeaders: map[string]string{"Content-Length": "2311", "Content-Type": "application/json"}})
	r.do(40*time.Second, alice, job.Complete{})
	r.agent(50*time.Millisecond, hostA, job.CompleteDone{Agent: hostA, Files: []int{0, 1, 2}})
	return r
}

// historyRetries: transient errors and retries (one after an origin's
// Retry-After), a takeover by another host that restarts the file, a resume
// from TRANSIENT_ERROR, completion.
func historyRetries(t *testing.T) *recorder {
	r := newRecorder(t, t0.Add(time.Hour), 2)
	r.do(0, alice, job.Create{JobID: r.id, DisplayName: "sensor archive", Owner: alice, MinimumRetryDelay: dur(30 * time.Second),
		NoProgressTimeout: dur(6 * time.Hour), Files: []events.FileSpec{{RemoteURL: "https://archive.example.org/sensors/2026-11-01.tar.zst", LocalName: "/var/lib/sensors/2026-11-01.tar.zst"}}})
	r.do(time.Second, alice, job.Resume{})
	r.lease(200*time.Millisecond, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(21*time.Second, hostA, job.Fail{Agent: hostA, Transient: true,
		Error: errInfo(job.ERROR_WINHTTP_CANNOT_CONNECT, job.ContextRemoteFile, "dial tcp 203.0.113.7:443: connect: connection refused", 0)})
	r.lease(30*time.Second, hostA) // the retry delay elapsed: JobQueued retry + JobLeased
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(90*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, BytesTotal: 10 << 20})
	r.agent(time.Second, hostA, job.Checkpoint{Agent: hostA, BytesTransferred: 4 << 20, BytesTotal: 10 << 20})
	r.agent(300*time.Millisecond, hostA, job.Fail{Agent: hostA, Transient: true, RetryAfter: 2 * time.Minute,
		Error: errInfo(job.HTTPStatusCode(503), job.ContextRemoteFile, "HTTP 503 Service Unavailable (Retry-After: 120)", 0)})
	r.lease(2*time.Minute, hostB) // another host: the file starts again there
	r.agent(10*time.Millisecond, hostB, job.StartConnecting{Agent: hostB})
	r.agent(80*time.Millisecond, hostB, job.StartTransferring{Agent: hostB, BytesTotal: 10 << 20})
	r.agent(time.Second, hostB, job.Checkpoint{Agent: hostB, BytesTransferred: 6 << 20, BytesTotal: 10 << 20})
	r.agent(500*time.Millisecond, hostB, job.Fail{Agent: hostB, Transient: true,
		Error: errInfo(job.ERROR_WINHTTP_CONNECTION_ERROR, job.ContextRemoteFile, "read tcp 10.0.0.12:50514->203.0.113.7:443: connection reset by peer", 0)})
	r.do(5*time.Second, alice, job.Resume{}) // at once, without waiting for the retry
	r.lease(100*time.Millisecond, hostB)
	r.agent(10*time.Millisecond, hostB, job.StartConnecting{Agent: hostB})
	r.agent(60*time.Millisecond, hostB, job.StartTransferring{Agent: hostB, BytesTotal: 10 << 20, Offset: 6 << 20})
	r.agent(700*time.Millisecond, hostB, job.FileDone{Agent: hostB, Bytes: 10 << 20,
		SHA256: "e3b98a4da31a127d4bde6e43033f66ba274cab0eb7eb1c70ec41402bf6273dd8", TempName: "sensors/.2026-11-01.tar.zst.ferry-" + r.id + "-0.part",
		ETag: `W/"a1f-99"`})
	r.do(3*time.Second, alice, job.Complete{})
	r.agent(20*time.Millisecond, hostB, job.CompleteDone{Agent: hostB, Files: []int{0}})
	return r
}

// jobTransientErrorV1 is the shape of JobTransientError version 1, as the
// coordinator and agents wrote it before version 2.
type jobTransientErrorV1 struct {
	Error   events.ErrorInfo `json:"error"`
	RetryAt time.Time        `json:"retry_at"`
}

// asV1 is the retries history as it was stored before JobTransientError v2:
// the same events, the transient errors in version 1.
func asV1(t *testing.T, evs []events.Event) []events.Event {
	out := make([]events.Event, len(evs))
	for i, ev := range evs {
		if ev.Type == events.TypeJobTransientError {
			p, err := ev.Payload()
			if err != nil {
				t.Fatal(err)
			}
			te := p.(*events.JobTransientError)
			data, err := json.Marshal(jobTransientErrorV1{Error: te.Error, RetryAt: te.RetryAt})
			if err != nil {
				t.Fatal(err)
			}
			// Through the stored form, so no v2 payload stays cached.
			ev = events.Event{ID: ev.ID, Type: ev.Type, Version: 1, Kind: ev.Kind, AggregateID: ev.AggregateID, Time: ev.Time,
				Actor: ev.Actor, CausationID: ev.CausationID, CorrelationID: ev.CorrelationID, Data: data, Seq: ev.Seq}
		}
		out[i] = ev
	}
	return out
}

// historySuspendPreempt: suspend and resume, preemption by higher-priority
// work, a restart from zero (the origin stopped answering ranges), a
// takeover by another host, and a Complete whose rename failed, then
// succeeded.
func historySuspendPreempt(t *testing.T) *recorder {
	r := newRecorder(t, t0.Add(2*time.Hour), 3)
	r.do(0, alice, job.Create{JobID: r.id, DisplayName: "dataset mirror", Owner: alice, Priority: job.Low,
		Files: []events.FileSpec{{RemoteURL: "https://data.example.com/corpus/v7/shard-000.parquet", LocalName: "/data/corpus/shard-000.parquet"}}})
	r.do(time.Second, alice, job.Resume{})
	r.lease(200*time.Millisecond, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(50*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, BytesTotal: 1 << 30})
	r.agent(3*time.Second, hostA, job.Checkpoint{Agent: hostA, BytesTransferred: 192 << 20, BytesTotal: 1 << 30})
	r.do(400*time.Millisecond, alice, job.Suspend{})
	r.do(10*time.Minute, alice, job.Resume{})
	r.lease(150*time.Millisecond, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(50*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, BytesTotal: 1 << 30, Offset: 192 << 20})
	r.agent(2*time.Second, hostA, job.Checkpoint{Agent: hostA, BytesTransferred: 320 << 20, BytesTotal: 1 << 30})
	r.agent(700*time.Millisecond, hostA, job.Yield{Agent: hostA}) // a FOREGROUND job took the slot
	r.lease(45*time.Second, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(60*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, BytesTotal: 1 << 30, Restarted: "no-range-support"})
	r.agent(time.Second, hostA, job.Checkpoint{Agent: hostA, BytesTransferred: 64 << 20, BytesTotal: 1 << 30})
	// host-a goes silent; its dispatch is redelivered to host-b.
	r.lease(5*time.Minute, hostB)
	r.agent(10*time.Millisecond, hostB, job.StartConnecting{Agent: hostB})
	r.agent(40*time.Millisecond, hostB, job.StartTransferring{Agent: hostB, BytesTotal: 1 << 30})
	r.agent(8*time.Second, hostB, job.Checkpoint{Agent: hostB, BytesTransferred: 512 << 20, BytesTotal: 1 << 30})
	r.agent(8*time.Second, hostB, job.FileDone{Agent: hostB, Bytes: 1 << 30,
		SHA256: "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c", TempName: "corpus/.shard-000.parquet.ferry-" + r.id + "-0.part"})
	r.do(time.Minute, alice, job.Complete{})
	r.agent(30*time.Millisecond, hostB, job.CompleteFailed{Agent: hostB, Error: errInfo(job.ERROR_DISK_FULL, job.ContextLocalFile,
		"rename corpus/.shard-000.parquet.ferry-"+r.id+"-0.part: no space left on device", 0)})
	r.do(20*time.Minute, alice, job.Complete{})
	r.agent(20*time.Millisecond, hostB, job.CompleteDone{Agent: hostB, Files: []int{0}})
	return r
}

// historyOwnerCertOptions: options at creation and changed later, a client
// certificate set by thumbprint, removed, set by name, write-only headers,
// then an administrator takes ownership (certificate, headers and webhook
// go), the new owner resumes and completes.
func historyOwnerCertOptions(t *testing.T) *recorder {
	r := newRecorder(t, t0.Add(3*time.Hour), 4)
	r.do(0, alice, job.Create{JobID: r.id, DisplayName: "partner feed", Owner: alice, Pool: "edge",
		Options: &job.OptionsPatch{
			CustomHeaders: ptr([]string{"X-Feed-Client: ferry", "Accept: application/x-ndjson"}),
			Proxy:         &events.ProxySettings{Usage: job.ProxyOverride, List: []string{"http://proxy.corp.example:3128"}, Bypass: []string{"*.corp.example"}},
			Notify:        &events.NotifySettings{Flags: []string{job.NotifyJobTransferred, job.NotifyJobError}, URL: "https://hooks.example.com/ferry"},
		},
		Files: []events.FileSpec{{RemoteURL: "https://feeds.partner.example/v2/daily.ndjson", LocalName: "/srv/feeds/daily.ndjson"}}})
	r.do(5*time.Second, alice, job.SetClientCertificate{Location: 0, LocationName: "CURRENT_USER", Store: "MY", SHA1: certSHA,
		Subject: "CN=alice,OU=feeds,O=Example Corp", By: job.CertByID, CallerPrincipal: alice})
	r.do(time.Minute, alice, job.Modify{DisplayName: ptr("partner feed (daily)"), Description: ptr("NDJSON feed, client certificate required"),
		Priority: ptr(job.Foreground), MinimumRetryDelay: dur(2 * time.Minute), MaxDownloadTime: dur(2 * time.Hour),
		Options: &job.OptionsPatch{RedirectPolicy: ptr(job.RedirectAllowReport), IgnoreCertErrors: ptr([]string{job.IgnoreCertDateInvalid}), MaxDownloadSize: ptr(int64(1 << 30))}})
	r.do(30*time.Second, alice, job.RemoveClientCertificate{CallerPrincipal: alice})
	r.do(30*time.Second, alice, job.SetClientCertificate{Location: 0, LocationName: "CURRENT_USER", Store: "MY", SHA1: certSHA,
		Subject: "CN=alice,OU=feeds,O=Example Corp", By: job.CertByName, CallerPrincipal: alice})
	r.do(20*time.Second, alice, job.MakeHeadersWriteOnly{Names: []string{"Authorization"}, CallerPrincipal: alice})
	r.do(4*time.Hour, admin, job.TakeOwnership{NewOwner: bob})
	r.do(10*time.Minute, bob, job.Resume{})
	r.lease(100*time.Millisecond, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(120*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, BytesTotal: -1})
	r.agent(900*time.Millisecond, hostA, job.FileDone{Agent: hostA, Bytes: 734012,
		SHA256: "7d865e959b2466918c9863afca942d0fb89d7c9ac0c99bafc3749504ded97730", TempName: "feeds/.daily.ndjson.ferry-" + r.id + "-0.part",
		ResponseHeaders: map[string]string{"Content-Type": "application/x-ndjson", "Content-Encoding": "identity"},
		FinalURL:        "https://cdn.partner.example/feeds/v2/daily.ndjson"})
	r.do(2*time.Minute, bob, job.Complete{})
	r.agent(15*time.Millisecond, hostA, job.CompleteDone{Agent: hostA, Files: []int{0}})
	return r
}

// historyFailuresTimeouts: a fatal error and a resume, NoProgressTimeout
// ending a TRANSIENT_ERROR, MaxDownloadTime ending a transfer, the
// inactivity timeout cancelling the job and the agent's cleanup.
func historyFailuresTimeouts(t *testing.T) *recorder {
	r := newRecorder(t, t0.Add(4*time.Hour), 5)
	r.do(0, alice, job.Create{JobID: r.id, DisplayName: "firmware bundle", Owner: alice, MinimumRetryDelay: dur(10 * time.Minute),
		NoProgressTimeout: dur(30 * time.Minute), MaxDownloadTime: dur(time.Hour),
		Files: []events.FileSpec{{RemoteURL: "https://fw.example.net/bundles/rk3588-2026.10.bin", LocalName: "/opt/fw/rk3588.bin"},
			{RemoteURL: "https://fw.example.net/bundles/rk3588-2026.10.sig", LocalName: "/opt/fw/rk3588.sig"}}})
	r.do(time.Second, alice, job.Resume{})
	r.lease(100*time.Millisecond, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(90*time.Millisecond, hostA, job.Fail{Agent: hostA, Error: errInfo(job.HTTPStatusCode(404), job.ContextRemoteFile, "HTTP 404 Not Found", 0)})
	r.do(time.Hour, alice, job.Resume{}) // the publisher fixed the URL's target
	r.lease(100*time.Millisecond, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(60*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, BytesTotal: 96 << 20})
	r.agent(4*time.Second, hostA, job.Checkpoint{Agent: hostA, BytesTransferred: 40 << 20, BytesTotal: 96 << 20})
	r.agent(time.Second, hostA, job.Fail{Agent: hostA, Transient: true,
		Error: errInfo(job.ERROR_WINHTTP_TIMEOUT, job.ContextRemoteFile, "no data for 60s", 0)})
	// The origin stays down: every retry fails before bytes move, and the
	// coordinator's clock ends it after 30 minutes without progress.
	r.do(31*time.Minute, clock, job.Timeout{})
	r.do(2*time.Hour, alice, job.Resume{})
	r.lease(100*time.Millisecond, hostA)
	r.agent(10*time.Millisecond, hostA, job.StartConnecting{Agent: hostA})
	r.agent(60*time.Millisecond, hostA, job.StartTransferring{Agent: hostA, BytesTotal: 96 << 20, Offset: 40 << 20})
	r.agent(20*time.Minute, hostA, job.Checkpoint{Agent: hostA, BytesTransferred: 41 << 20, BytesTotal: 96 << 20})
	r.do(41*time.Minute, clock, job.Timeout{})  // MaxDownloadTime: one hour CONNECTING or TRANSFERRING since the resume
	r.do(91*24*time.Hour, clock, job.Timeout{}) // nobody touched it for 90 days
	r.agent(2*time.Second, hostA, job.FilesDeleted{Agent: hostA})
	return r
}

// historyCancel: a user cancels a job with one file staged; the agent
// cannot delete one of the temporary files.
func historyCancel(t *testing.T) *recorder {
	r := newRecorder(t, t0.Add(5*time.Hour), 6)
	r.do(0, bob, job.Create{JobID: r.id, DisplayName: "log export", Owner: bob,
		Files: []events.FileSpec{{RemoteURL: "https://logs.example.org/export/2026-11-01/app.log.gz", LocalName: "/srv/logs/app.log.gz"},
			{RemoteURL: "https://logs.example.org/export/2026-11-01/db.log.gz", LocalName: "/srv/logs/db.log.gz"}}})
	r.do(time.Second, bob, job.Resume{})
	r.lease(100*time.Millisecond, hostB)
	r.agent(10*time.Millisecond, hostB, job.StartConnecting{Agent: hostB})
	r.agent(40*time.Millisecond, hostB, job.StartTransferring{Agent: hostB, BytesTotal: 3 << 20})
	r.agent(400*time.Millisecond, hostB, job.FileDone{Agent: hostB, Bytes: 3 << 20,
		SHA256: "d2a84f4b8b650937ec8f73cd8be2c74add5a911ba64df27458ed8229da804a26", TempName: "logs/.app.log.gz.ferry-" + r.id + "-0.part"})
	r.agent(10*time.Millisecond, hostB, job.StartConnecting{Agent: hostB, FileIndex: 1})
	r.agent(40*time.Millisecond, hostB, job.StartTransferring{Agent: hostB, FileIndex: 1, BytesTotal: 48 << 20})
	r.agent(time.Second, hostB, job.Checkpoint{Agent: hostB, FileIndex: 1, BytesTransferred: 16 << 20, BytesTotal: 48 << 20})
	r.do(300*time.Millisecond, bob, job.Cancel{})
	r.agent(80*time.Millisecond, hostB, job.FilesDeleted{Agent: hostB, Undeleted: []string{"logs/.db.log.gz.ferry-" + r.id + "-1.part"}})
	return r
}

// vaultEvents are certvault's audit events about the certificate of
// historyOwnerCertOptions and a key rotation.
func vaultEvents(t *testing.T) []events.Event {
	at := t0.Add(-24 * time.Hour)
	var out []events.Event
	add := func(d time.Duration, id, actor, corr string, p events.Payload) {
		at = at.Add(d)
		ev, err := events.New(events.KindVault, id, events.Meta{Time: at, Actor: actor, CorrelationID: corr}, p)
		if err != nil {
			t.Fatal(err)
		}
		ev.ID = uuidV7(at, 9<<40|1<<32|uint64(len(out)+1))
		out = append(out, ev)
	}
	loc, store := "CURRENT_USER", "MY"
	sha256 := "55e2ba3e87f1c4c15ba3b6bb1e38f5a5c44ccfe3b1f1f0d8d1a9f2a1b1e5e3c7"
	add(0, certSHA, alice, "req-vault-01", &events.CertificateImported{Scope: alice, Location: loc, Store: store, SHA1: certSHA, SHA256: sha256,
		Subject: "CN=alice,OU=feeds,O=Example Corp", Issuer: "CN=Example Corp Issuing CA 2,O=Example Corp", Serial: "4a3f09c1d2e87b65",
		NotAfter: time.Date(2027, 11, 1, 0, 0, 0, 0, time.UTC), ChainLen: 2, Format: "pfx", KEKVersion: 1})
	feedJob := jobID(t0.Add(3*time.Hour), 4)
	headers := events.VaultHeadersID(feedJob)
	add(27*time.Hour+time.Minute+20*time.Second, headers, alice, "req-4-06", &events.WriteOnlyHeadersStored{Job: feedJob, Owner: alice,
		Names: []string{"Authorization"}, KEKVersion: 1})
	add(4*time.Hour, headers, admin, "req-4-07", &events.WriteOnlyHeadersDeleted{Job: feedJob, Names: []string{"Authorization"},
		Reason: events.HeadersDeletedOwnershipMoved})
	add(10*time.Minute, certSHA, agentPrincipal(hostA), "", &events.KeyReleased{Scope: alice, Location: loc, Store: store, SHA1: certSHA, SHA256: sha256,
		Owner: alice, Agent: agentPrincipal(hostA), Job: feedJob, Lease: "1", GrantID: "g-7f3a9c"})
	add(time.Second, certSHA, agentPrincipal(hostB), "", &events.KeyReleaseDenied{Scope: alice, Location: loc, Store: store, SHA1: certSHA,
		Owner: alice, Agent: agentPrincipal(hostB), Job: feedJob, Lease: "1", GrantID: "g-7f3a9d",
		Code: "BG_E_INVALID_STATE", HResult: "0x80200002", Reason: "the agent does not hold the job's lease"})
	add(time.Second, headers, agentPrincipal(hostA), "", &events.WriteOnlyHeadersReleased{Job: feedJob, Owner: alice,
		Agent: agentPrincipal(hostA), Lease: "1", GrantID: "g-7f3aa0", Names: []string{"Authorization"}})
	add(time.Second, headers, agentPrincipal(hostB), "", &events.WriteOnlyHeadersReleaseDenied{Job: feedJob, Owner: alice,
		Agent: agentPrincipal(hostB), Lease: "1", GrantID: "g-7f3aa1", Code: "E_ACCESSDENIED", HResult: "0x80070005",
		Reason: "channel binding does not match this connection"})
	add(24*time.Hour, events.VaultKeyringID, admin, "req-vault-02", &events.VaultKeysRewrapped{ActiveVersion: 2, FromVersions: []int{1}, Rewrapped: 14})
	add(time.Hour, certSHA, alice, "req-vault-03", &events.CertificateRemoved{Scope: alice, Location: loc, Store: store, SHA1: certSHA, SHA256: sha256})
	return out
}

func TestRecordGolden(t *testing.T) {
	if !*record {
		t.Skip("-record not set")
	}
	retries := historyRetries(t)
	histories := []struct {
		name string
		evs  []events.Event
	}{
		{"complete-ranges", historyCompleteRanges(t).evs},
		{"retries", retries.evs},
		{"retries-v1", asV1(t, retries.evs)},
		{"suspend-preempt-complete-failed", historySuspendPreempt(t).evs},
		{"owner-cert-options", historyOwnerCertOptions(t).evs},
		{"failures-timeouts", historyFailuresTimeouts(t).evs},
		{"cancel", historyCancel(t).evs},
	}
	// One envelope of every type and version: the first one recorded.
	byType := map[string][]byte{}
	keep := func(ev *events.Event, b []byte) {
		k := fmt.Sprintf("%s.v%d", ev.Type, ev.Version)
		if _, ok := byType[k]; !ok {
			byType[k] = b
		}
	}
	for _, h := range histories {
		var buf bytes.Buffer
		for i := range h.evs {
			b, err := events.Marshal(&h.evs[i])
			if err != nil {
				t.Fatal(err)
			}
			buf.Write(b)
			buf.WriteByte('\n')
			keep(&h.evs[i], b)
		}
		writeOnce(t, filepath.Join(goldenDir, "histories", h.name+".ndjson"), buf.Bytes())
	}
	for _, ev := range vaultEvents(t) {
		b, err := events.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		keep(&ev, b)
	}
	for k, b := range byType {
		writeOnce(t, filepath.Join(goldenDir, "events", k+".json"), append(b, '\n'))
	}
}

// writeOnce writes b to name unless name exists; if it does, its content
// must be b.
func writeOnce(t *testing.T, name string, b []byte) {
	t.Helper()
	old, err := os.ReadFile(name)
	switch {
	case err == nil:
		if !bytes.Equal(old, b) {
			t.Errorf("%s is recorded with other content: recorded events never change (record under a new name)", name)
		}
		return
	case !errors.Is(err, fs.ErrNotExist):
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %s", name)
}
