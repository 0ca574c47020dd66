package services_test

// Stack-level tests of job options and per-file settings: ranges, expected
// digests, maximum size, dynamic content, custom headers, redirect policy,
// response headers, and the API's refusals of bad option input.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// TestOptionFileRangesOutOfOrder: a file with two ranges given out of
// order (the later part of the remote file first) is exactly the two
// ranges' bytes concatenated in the given order; each range is one
// request with its own Range header.
func TestOptionFileRangesOutOfOrder(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	c := origintest.Content{Seed: 801, Size: 300_000}
	url := s.serve("/ranges.bin", c, `"r"`)
	ranges := []events.FileRange{{Offset: 200_000, Length: 50_000}, {Offset: 10_000, Length: 30_000}}
	dest := s.dest("opt/ranges.bin")
	id := s.create(events.FileSpec{RemoteURL: url, LocalName: dest, Ranges: ranges})
	s.until(id, "TRANSFERRED", state(job.Transferred))
	want := c.RangesSHA256(origintest.Range{Offset: 200_000, Length: 50_000}, origintest.Range{Offset: 10_000, Length: 30_000})
	j := s.completeAndCheck(id, dest, want)
	if j.Files[0].BytesTotal != 80_000 || !slices.Equal(j.Files[0].Ranges, ranges) {
		t.Fatalf("file %+v: want 80,000 bytes and the ranges in the given order", j.Files[0])
	}
	var got []string
	for _, r := range s.requests("/ranges.bin") {
		got = append(got, r.Range)
	}
	if w := []string{"bytes=200000-249999", "bytes=10000-39999"}; !slices.Equal(got, w) {
		t.Fatalf("Range headers %q, want %q", got, w)
	}
	evs := s.events(id)
	fxCheckTypes(t, evs, events.TypeJobCreated, events.TypeFilesAdded, events.TypeJobQueued, events.TypeJobLeased,
		events.TypeJobConnecting, events.TypeJobTransferring, events.TypeFileTransferred, events.TypeJobTransferred,
		events.TypeJobCompleteRequested, events.TypeJobAcknowledged)
	fxCheckStarts(t, evs, events.JobTransferring{Offset: 0, BytesTotal: 80_000})
}

// TestOptionExpectedSHA256: a file whose content does not match its
// expected digest fails the job with BG_E_VALIDATION_FAILED (0x80200053,
// fatal) and nothing staged is kept; once the origin serves the right
// content, Resume fetches it again from zero and the file is exact.
func TestOptionExpectedSHA256(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	wrong := origintest.Content{Seed: 901, Size: 350_000}
	right := origintest.Content{Seed: 902, Size: 360_000}
	url := s.serve("/digest.bin", wrong, `"wrong"`)
	dest := s.dest("opt/digest.bin")
	// Upper case: the job model normalizes the digest.
	id := s.create(events.FileSpec{RemoteURL: url, LocalName: dest, SHA256: strings.ToUpper(right.SHA256())})
	j := s.until(id, "ERROR", state(job.Errored))
	fxCheckErr(t, "validation", j.Error, fxWantErr{"BG_E_VALIDATION_FAILED", "0x80200053", job.ContextRemoteFile})
	if !strings.Contains(j.Error.Description, right.SHA256()) || !strings.Contains(j.Error.Description, wrong.SHA256()) {
		t.Fatalf("the description must name both digests: %s", j.Error.Description)
	}
	if j.Files[0].ExpectedSHA256 != right.SHA256() {
		t.Fatalf("expected digest %q, want it in lower case", j.Files[0].ExpectedSHA256)
	}
	if left := fxPartFilesOf(t, s.root, dest); len(left) != 0 {
		t.Fatalf("bytes that failed validation were kept: %v", left)
	}

	// Fix the origin; the same job, resumed, gets the right file.
	s.serve("/digest.bin", right, `"right"`)
	s.action(id, "resume")
	s.until(id, "TRANSFERRED", state(job.Transferred))
	s.completeAndCheck(id, dest, right.SHA256())
	if reqs := s.requests("/digest.bin"); len(reqs) != 2 || reqs[1].Range != "" {
		t.Fatalf("requests %+v: the second attempt must start from zero", reqs)
	}
	evs := s.events(id)
	fxCheckTypes(t, evs, events.TypeJobCreated, events.TypeFilesAdded, events.TypeJobQueued, events.TypeJobLeased,
		events.TypeJobConnecting, events.TypeJobTransferring, events.TypeJobFailed,
		events.TypeJobQueued, events.TypeJobLeased, events.TypeJobConnecting, events.TypeJobTransferring,
		events.TypeFileTransferred, events.TypeJobTransferred, events.TypeJobCompleteRequested, events.TypeJobAcknowledged)
	fxCheckPath(t, evs, job.Suspended, job.Queued, job.Connecting, job.Transferring, job.Errored,
		job.Queued, job.Connecting, job.Transferring, job.Transferred, job.Acknowledged)
	fxCheckStarts(t, evs, events.JobTransferring{Offset: 0, BytesTotal: wrong.Size}, events.JobTransferring{Offset: 0, BytesTotal: right.Size})
}

// TestOptionMaxDownloadSize: max_download_size below the file's size
// fails the job with BG_E_TOO_LARGE (0x80200020, fatal) from the
// announced size, before any byte is staged; a file of exactly the limit
// downloads.
func TestOptionMaxDownloadSize(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	const limit = 150_000
	big := origintest.Content{Seed: 1001, Size: limit + 1}
	fits := origintest.Content{Seed: 1002, Size: limit}
	maxSize := int64(limit)
	opts := &job.OptionsPatch{MaxDownloadSize: &maxSize}

	id := s.createReq(coordinator.CreateRequest{Options: opts,
		Files: []events.FileSpec{{RemoteURL: s.serve("/big.bin", big, `"big"`), LocalName: s.dest("opt/big.bin")}}})
	j := s.until(id, "ERROR", state(job.Errored))
	fxCheckErr(t, "too large", j.Error, fxWantErr{"BG_E_TOO_LARGE", "0x80200020", job.ContextRemoteFile})
	if j.Options.MaxDownloadSize != limit {
		t.Fatalf("options %+v", j.Options)
	}
	evs := s.events(id)
	fxCheckTypes(t, evs, events.TypeJobCreated, events.TypeFilesAdded, events.TypeJobQueued, events.TypeJobLeased,
		events.TypeJobConnecting, events.TypeJobFailed)
	if n := len(s.requests("/big.bin")); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}

	dest := s.dest("opt/fits.bin")
	id = s.createReq(coordinator.CreateRequest{Options: opts,
		Files: []events.FileSpec{{RemoteURL: s.serve("/fits.bin", fits, `"fits"`), LocalName: dest}}})
	s.until(id, "TRANSFERRED", state(job.Transferred))
	s.completeAndCheck(id, dest, fits.SHA256())
}

// fxDynamic is a handler that serves content without Content-Length
// (chunked) and without range support. Its first response is cut after
// cutAt bytes.
type fxDynamic struct {
	c      origintest.Content
	cutAt  int64
	mu     sync.Mutex
	ranges []string // Range header of each request
}

func (d *fxDynamic) requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.ranges)
}

func (d *fxDynamic) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	d.ranges = append(d.ranges, r.Header.Get("Range"))
	first := len(d.ranges) == 1
	d.mu.Unlock()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush() // headers out: the body is chunked, with no length
	rd := d.c.Reader()
	if first {
		_, _ = io.CopyN(w, rd, d.cutAt)
		_ = rc.Flush()
		panic(http.ErrAbortHandler)
	}
	_, _ = io.Copy(w, rd)
}

// TestOptionDynamicContent: a job with dynamic_content downloads a file
// served without Content-Length and without range support. Its first
// response is cut: TRANSIENT_ERROR, and on Resume the transfer starts over
// from zero (restarted "dynamic-content") without ever sending Range; the
// size is unknown (-1) until the end; the file is exact.
func TestOptionDynamicContent(t *testing.T) {
	c := origintest.Content{Seed: 1101, Size: 500_000}
	dyn := &fxDynamic{c: c, cutAt: 120_000}
	srv, ca := fxTLSServer(t, dyn)
	s := newFXStack(t, fxOptions{extraCAs: []string{ca}})
	yes := true
	dest := s.dest("opt/dynamic.bin")
	id := s.createReq(coordinator.CreateRequest{Options: &job.OptionsPatch{Dynamic: &yes},
		Files: []events.FileSpec{{RemoteURL: srv.URL + "/render", LocalName: dest}}})
	j := s.until(id, "TRANSIENT_ERROR", state(job.TransientError))
	fxCheckErr(t, "cut dynamic response", j.Error, fxConnErr)
	if !j.Options.Dynamic {
		t.Fatalf("options %+v", j.Options)
	}
	s.action(id, "resume")
	j = s.until(id, "TRANSFERRED", state(job.Transferred))
	if _, ok := j.Files[0].ResponseHeaders["Content-Length"]; ok {
		t.Fatalf("response headers %v: the origin sent no Content-Length", j.Files[0].ResponseHeaders)
	}
	s.completeAndCheck(id, dest, c.SHA256())
	if got := dyn.requests(); !slices.Equal(got, []string{"", ""}) {
		t.Fatalf("Range headers %q: want two requests, never a Range", got)
	}
	evs := s.events(id)
	fxCheckTypes(t, evs, fxTypesFaultResume...)
	fxCheckPath(t, evs, fxPathFaultResume...)
	fxCheckStarts(t, evs,
		events.JobTransferring{Offset: 0, BytesTotal: -1},
		events.JobTransferring{Offset: 0, BytesTotal: -1, Restarted: "dynamic-content"})
	ft, _ := fxPayloads[*events.FileTransferred](t, evs)
	if ft[0].Bytes != c.Size {
		t.Fatalf("FileTransferred %+v", ft[0])
	}
}

// TestOptionCustomHeaders: custom headers reach the origin on every request
// (the first, cut one and the Range resume), and their values appear in no
// line of the stack's log (trace level).
func TestOptionCustomHeaders(t *testing.T) {
	logs := &lineBuffer{}
	lg := zerolog.New(logs).Level(zerolog.TraceLevel).With().Timestamp().Logger()
	s := newFXStack(t, fxOptions{log: &lg})
	t.Cleanup(func() {
		if t.Failed() {
			ls := logs.lines()
			t.Logf("stack log (last lines):\n%s", strings.Join(ls[max(0, len(ls)-60):], "\n"))
		}
	})
	token, trace := "tok-"+fxRandHex(t), "trace-"+fxRandHex(t)
	headers := []string{"X-Ferry-Token: " + token, "x-trace-id:" + trace}
	c := origintest.Content{Seed: 1201, Size: 600_000}
	url := s.serve("/hdr.bin", c, `"h"`)
	s.ot.Inject(origintest.Fault{Path: "/hdr.bin", Count: 1, Drop: true, DropAfter: 200_000})
	dest := s.dest("opt/hdr.bin")
	id := s.createReq(coordinator.CreateRequest{Options: &job.OptionsPatch{CustomHeaders: &headers},
		Files: []events.FileSpec{{RemoteURL: url, LocalName: dest}}})
	j := s.until(id, "TRANSIENT_ERROR", state(job.TransientError))
	if w := []string{"X-Ferry-Token: " + token, "X-Trace-Id: " + trace}; !slices.Equal(j.Options.CustomHeaders, w) {
		t.Fatalf("custom headers %q, want %q", j.Options.CustomHeaders, w)
	}
	s.action(id, "resume")
	s.until(id, "TRANSFERRED", state(job.Transferred))
	s.completeAndCheck(id, dest, c.SHA256())

	reqs := s.requests("/hdr.bin")
	if len(reqs) != 2 || reqs[1].Range != "bytes=200000-" {
		t.Fatalf("requests %+v: want the cut one and a Range resume", reqs)
	}
	for i, r := range reqs {
		if r.Header.Get("X-Ferry-Token") != token || r.Header.Get("X-Trace-Id") != trace {
			t.Fatalf("request %d carried X-Ferry-Token %q, X-Trace-Id %q", i, r.Header.Get("X-Ferry-Token"), r.Header.Get("X-Trace-Id"))
		}
	}

	// The scan must be able to find something: the log is the stack's,
	// and mentions this job.
	lines := logs.lines()
	if all := strings.Join(lines, "\n"); !strings.Contains(all, id) || !strings.Contains(all, `"message":"job leased"`) {
		t.Fatalf("the captured log does not show the job's transfer (%d lines)", len(lines))
	}
	for i, l := range lines {
		for _, secret := range []string{token, trace} {
			if strings.Contains(l, secret) {
				t.Errorf("log line %d holds a custom header value: %s", i+1, l)
			}
		}
	}
}

func fxRandHex(t *testing.T) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestOptionRedirectPolicy: an origin that redirects (302) to the file,
// with a query on the target. DISALLOW fails the job with
// ERROR_WINHTTP_REDIRECT_FAILED (0x80072F7A, fatal) before the target is
// asked; ALLOW_REPORT downloads and records the final URL in
// FileTransferred.final_url with the query replaced by "?…"; the default
// (ALLOW_SILENT) downloads and records none.
func TestOptionRedirectPolicy(t *testing.T) {
	var target string
	redir, ca := fxTLSServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target, http.StatusFound)
	}))
	s := newFXStack(t, fxOptions{extraCAs: []string{ca}})
	c := origintest.Content{Seed: 1301, Size: 120_000}
	target = s.serve("/real.bin", c, `"real"`) + "?sig=redirect-secret"
	start := redir.URL + "/start?token=job-secret"

	for _, tc := range []struct {
		policy   string
		finalURL string
		fail     bool
	}{
		{job.RedirectDisallow, "", true},
		{job.RedirectAllowReport, s.ot.URL + "/real.bin?…", false},
		{job.RedirectAllowSilent, "", false},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			defer func(outer *testing.T) { s.t = outer }(s.t)
			s.t = t
			before := len(s.requests("/real.bin"))
			policy := tc.policy
			dest := s.dest("redirect/" + strings.ToLower(tc.policy) + ".bin")
			id := s.createReq(coordinator.CreateRequest{Options: &job.OptionsPatch{RedirectPolicy: &policy},
				Files: []events.FileSpec{{RemoteURL: start, LocalName: dest}}})
			if tc.fail {
				j := s.until(id, "ERROR", state(job.Errored))
				fxCheckErr(t, "redirect", j.Error, fxWantErr{"ERROR_WINHTTP_REDIRECT_FAILED", "0x80072F7A", job.ContextRemoteFile})
				if strings.Contains(j.Error.Description, "secret") {
					t.Fatalf("the description shows a query: %s", j.Error.Description)
				}
				if n := len(s.requests("/real.bin")) - before; n != 0 {
					t.Fatalf("the redirect target was asked %d times", n)
				}
				fxCheckTypes(t, s.events(id), events.TypeJobCreated, events.TypeFilesAdded, events.TypeJobQueued,
					events.TypeJobLeased, events.TypeJobConnecting, events.TypeJobFailed)
				return
			}
			s.until(id, "TRANSFERRED", state(job.Transferred))
			j := s.completeAndCheck(id, dest, c.SHA256())
			ft, _ := fxPayloads[*events.FileTransferred](t, s.events(id))
			if ft[0].FinalURL != tc.finalURL || j.Files[0].FinalURL != tc.finalURL {
				t.Fatalf("final_url %q (job %q), want %q", ft[0].FinalURL, j.Files[0].FinalURL, tc.finalURL)
			}
			if strings.Contains(ft[0].FinalURL, "secret") {
				t.Fatalf("final_url shows the query: %s", ft[0].FinalURL)
			}
		})
	}
}

// TestOptionResponseHeaders: the headers of the response that carried the
// file (ETag, Content-Length, Last-Modified, Content-Type) are in
// FileTransferred.response_headers and in GET /v1/jobs/{id}.
func TestOptionResponseHeaders(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	c := origintest.Content{Seed: 1401, Size: 123_457}
	dest := s.dest("opt/headers.bin")
	id := s.create(events.FileSpec{RemoteURL: s.serve("/headers.bin", c, `"rh-1"`), LocalName: dest})
	j := s.until(id, "TRANSFERRED", state(job.Transferred))
	want := map[string]string{
		"Etag":           `"rh-1"`,
		"Content-Length": strconv.FormatInt(c.Size, 10),
		"Content-Type":   "application/octet-stream",
		"Last-Modified":  fxModified.Format(http.TimeFormat),
	}
	ft, _ := fxPayloads[*events.FileTransferred](t, s.events(id))
	if fmt.Sprint(ft[0].ResponseHeaders) != fmt.Sprint(want) {
		t.Fatalf("FileTransferred.response_headers %v, want %v", ft[0].ResponseHeaders, want)
	}
	// The read model, as the API answers it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.dev.Coordinator().Projector().WaitFor(ctx, j.Version); err != nil {
		t.Fatal(err)
	}
	status, _, body := s.rawAPI(http.MethodGet, "/v1/jobs/"+id, nil)
	var got struct {
		Files []struct {
			ResponseHeaders map[string]string `json:"response_headers"`
		} `json:"files"`
	}
	if err := json.Unmarshal(body, &got); err != nil || status != http.StatusOK || len(got.Files) != 1 {
		t.Fatalf("GET /v1/jobs/%s: %d %v %s", id, status, err, body)
	}
	if fmt.Sprint(got.Files[0].ResponseHeaders) != fmt.Sprint(want) {
		t.Fatalf("GET /v1/jobs/{id} files[0].response_headers %v, want %v", got.Files[0].ResponseHeaders, want)
	}
	s.completeAndCheck(id, dest, c.SHA256())
}

// jobEventCounts counts, in the event stream itself, the jobs (subjects)
// and all their events.
func (s *fxStack) jobEventCounts() (jobs int, evs uint64) {
	s.t.Helper()
	ctx := context.Background()
	st, err := s.dev.NATS().JS.Stream(ctx, events.StreamName)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.SubjectPrefix+events.KindJob+".>"))
	if err != nil {
		s.t.Fatal(err)
	}
	for _, n := range info.State.Subjects {
		evs += n
	}
	return len(info.State.Subjects), evs
}

// TestOptionBadInputRefused: bad option and range input through the API is
// answered with application/problem+json carrying the exact code and
// HRESULT, and changes nothing: the job's event count and last sequence
// stay, and the event stream holds as many jobs and job events as before
// (a refused creation creates no job).
func TestOptionBadInputRefused(t *testing.T) {
	s := newFXStack(t, fxOptions{})
	c := origintest.Content{Seed: 1501, Size: 1_000}
	url := s.serve("/in.bin", c, `"in"`)
	s.ot.Inject(origintest.Fault{Path: "/gone.bin", Status: 404})
	j, err := s.client.Create(context.Background(), coordinator.CreateRequest{DisplayName: "bad input",
		Files: []events.FileSpec{{RemoteURL: url, LocalName: s.dest("in/a.bin")}}})
	if err != nil {
		t.Fatal(err)
	}
	id := j.ID
	file := func(rs ...events.FileRange) map[string]any {
		return map[string]any{"files": []events.FileSpec{{RemoteURL: url, LocalName: s.dest("in/b.bin"), Ranges: rs}}}
	}
	tooMany := make([]events.FileRange, job.DefaultMaxRangesPerFile+1)
	for i := range tooMany {
		tooMany[i] = events.FileRange{Offset: int64(i) * 10, Length: 5}
	}
	type refusal struct {
		name, method, path string
		body               any
		status             int
		code, hresult      string
	}
	check := func(r refusal) {
		t.Helper()
		lastBefore, err := s.store.LastSeq(context.Background(), events.JobSubject(id))
		if err != nil {
			t.Fatal(err)
		}
		nBefore := len(s.events(id))
		jobsBefore, jobEventsBefore := s.jobEventCounts()
		if jobsBefore == 0 || jobEventsBefore < uint64(nBefore) {
			t.Fatalf("the event stream shows %d jobs with %d events; the job alone has %d", jobsBefore, jobEventsBefore, nBefore)
		}
		status, ctype, body := s.rawAPI(r.method, r.path, r.body)
		var p coordinator.Problem
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatalf("%s: not JSON: %s", r.name, body)
		}
		if status != r.status || ctype != "application/problem+json" || p.Code != r.code || p.HResult != r.hresult || p.Status != r.status {
			t.Fatalf("%s: %d %s %+v; want %d application/problem+json %s %s", r.name, status, ctype, p, r.status, r.code, r.hresult)
		}
		lastAfter, err := s.store.LastSeq(context.Background(), events.JobSubject(id))
		if err != nil {
			t.Fatal(err)
		}
		if nAfter := len(s.events(id)); nAfter != nBefore || lastAfter != lastBefore {
			t.Fatalf("%s: the job had %d events (last %d), now %d (last %d)", r.name, nBefore, lastBefore, nAfter, lastAfter)
		}
		if jobsAfter, jobEventsAfter := s.jobEventCounts(); jobsAfter != jobsBefore || jobEventsAfter != jobEventsBefore {
			t.Fatalf("%s: %d jobs with %d events before, %d with %d after", r.name, jobsBefore, jobEventsBefore, jobsAfter, jobEventsAfter)
		}
	}
	jobPath := "/v1/jobs/" + id
	for _, r := range []refusal{
		{"invalid range at creation", http.MethodPost, "/v1/jobs", map[string]any{"display_name": "x", "resume": true,
			"files": []events.FileSpec{{RemoteURL: url, LocalName: s.dest("in/c.bin"), Ranges: []events.FileRange{{Offset: 0, Length: 0}}}}},
			http.StatusBadRequest, "BG_E_INVALID_RANGE", "0x8020002B"},
		{"invalid range", http.MethodPost, jobPath + "/files", file(events.FileRange{Offset: -1, Length: 10}),
			http.StatusBadRequest, "BG_E_INVALID_RANGE", "0x8020002B"},
		{"overlapping ranges", http.MethodPost, jobPath + "/files", file(events.FileRange{Offset: 100, Length: 50}, events.FileRange{Offset: 0, Length: 101}),
			http.StatusBadRequest, "BG_E_OVERLAPPING_RANGES", "0x8020002C"},
		{"too many ranges", http.MethodPost, jobPath + "/files", file(tooMany...),
			http.StatusBadRequest, "BG_E_TOO_MANY_RANGES_IN_FILE", "0x80200052"},
		{"proxy list too large", http.MethodPatch, jobPath, map[string]any{"options": map[string]any{
			"proxy": map[string]any{"usage": "OVERRIDE", "list": []string{"http://" + strings.Repeat("p", job.MaxProxyList) + ":8080"}}}},
			http.StatusBadRequest, "BG_E_PROXY_LIST_TOO_LARGE", "0x80200018"},
		{"bad notify flag", http.MethodPatch, jobPath, map[string]any{"options": map[string]any{
			"notify": map[string]any{"flags": []string{"JOB_TRANSFERRED", "JOB_EXPLODED"}, "url": "https://hooks.example/ferry"}}},
			http.StatusBadRequest, "E_NOTIMPL", "0x80004001"},
	} {
		check(r)
	}

	// Read-only after the first resume: a job that was resumed (and
	// failed, so that nothing else writes to it meanwhile).
	j, err = s.client.Create(context.Background(), coordinator.CreateRequest{DisplayName: "resumed",
		Files: []events.FileSpec{{RemoteURL: s.ot.URL + "/gone.bin", LocalName: s.dest("in/gone.bin")}}, Resume: true})
	if err != nil {
		t.Fatal(err)
	}
	id, jobPath = j.ID, "/v1/jobs/"+j.ID
	s.until(id, "ERROR", state(job.Errored))
	for _, r := range []refusal{
		{"dynamic_content after resume", http.MethodPatch, jobPath, map[string]any{"options": map[string]any{"dynamic_content": true}},
			http.StatusConflict, "BG_E_READ_ONLY_PROPERTY_AFTER_RESUME", "0x80200062"},
		{"max_download_size after resume", http.MethodPatch, jobPath, map[string]any{"options": map[string]any{"max_download_size": 10}},
			http.StatusConflict, "BG_E_READ_ONLY_PROPERTY_AFTER_RESUME", "0x80200062"},
	} {
		check(r)
	}
	// The same kind of change that is allowed after a resume goes through:
	// the refusals above were about the property, not the job.
	r, err := s.client.Patch(context.Background(), id, coordinator.PatchRequest{Options: &job.OptionsPatch{CustomHeaders: &[]string{"X-A: b"}}})
	if err != nil || r.Code != "S_OK" || !slices.Equal(r.Job.Options.CustomHeaders, []string{"X-A: b"}) {
		t.Fatalf("allowed patch: %+v, %v", r, err)
	}
}
