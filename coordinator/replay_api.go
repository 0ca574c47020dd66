package coordinator

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/history"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/google/uuid"
)

// The replay API:
//
//	GET  /v1/jobs/{id}/history?seq=N|at=RFC3339  a job's state at a point and its timeline
//	GET  /v1/events/export?since=RFC3339&kind=job,agent,vault  the event log as NDJSON (administrators)
//	POST /v1/events/import  appends an export's events, IDs and per-subject order kept (administrators)

// HistoryResponse answers GET /v1/jobs/{id}/history.
type HistoryResponse = history.Result

// ContentTypeNDJSON is the media type of event exports.
const ContentTypeNDJSON = "application/x-ndjson"

// Headers of GET /v1/events/export. ExportLastSeqHeader is the stream's
// last sequence when the export started: the export ends there. The
// ExportEventsTrailer, a trailer, counts the lines sent; a response without
// it was cut short.
const (
	ExportLastSeqHeader = "Ferry-Export-Last-Seq"
	ExportEventsTrailer = "Ferry-Export-Events"
)

// ImportResult answers POST /v1/events/import.
type ImportResult struct {
	// Lines is how many events the file held (up to a refused line).
	Lines int `json:"lines"`
	// Imported events were appended; Skipped ones were already on their
	// subject (same event ID).
	Imported int `json:"imported"`
	Skipped  int `json:"skipped"`
	// Subjects is how many subjects the file's events belong to.
	Subjects int `json:"subjects"`
}

// ImportProblem is the problem document of a refused import: the problem,
// the line that was refused (0 when the refusal is about no one line), and
// what was imported before it.
type ImportProblem struct {
	Problem
	Line int `json:"line,omitempty"`
	ImportResult
}

// importBatch is how many of one subject's events one append stores
// (atomically); within events.MaxAppend.
const importBatch = 256

// replayRoutes registers the replay and export/import API.
func (s *Service) replayRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/jobs/{id}/history", s.handle(s.jobHistory))
	mux.HandleFunc("GET /v1/events/export", s.handle(s.exportEvents))
	mux.HandleFunc("POST /v1/events/import", s.handle(s.importEvents))
}

// --- history -----------------------------------------------------------------

// jobHistory answers GET /v1/jobs/{id}/history: the job's state after
// sequence seq or at time at (neither: now), the timeline up to there, and
// which part of the history that is. Who may read the job may read its
// history.
func (s *Service) jobHistory(w http.ResponseWriter, r *http.Request, c caller) error {
	p, err := parsePoint(r.URL.Query())
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	cur, err := s.load(r.Context(), id, c)
	if err != nil {
		return err
	}
	evs, err := s.loadEvents(r.Context(), events.JobSubject(id), cur.Version)
	if err != nil {
		return err
	}
	res, err := history.Build(evs, p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// parsePoint reads ?seq=N or ?at=RFC3339.
func parsePoint(q url.Values) (history.Point, error) {
	var p history.Point
	if v := q.Get("seq"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return p, job.Errorf(job.E_INVALIDARG, "seq %q is not a stream sequence (a positive integer)", v)
		}
		p.Seq = n
	}
	if v := q.Get("at"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return p, job.Errorf(job.E_INVALIDARG, "at %q is not an RFC 3339 time such as 2026-11-02T09:30:00Z", v)
		}
		p.Time = t
	}
	return p, p.Validate()
}

// loadEvents returns every event of subject, reading until the last one is
// at least atLeast: the read model (or the stream leader) may know an event
// that the replica answering this read has not stored yet.
func (s *Service) loadEvents(ctx context.Context, subject string, atLeast uint64) ([]events.Event, error) {
	deadline := time.Now().Add(jobstore.DefaultStaleWait)
	var evs []events.Event
	for pause := 2 * time.Millisecond; ; pause = min(2*pause, 200*time.Millisecond) {
		var after uint64
		if len(evs) > 0 {
			after = evs[len(evs)-1].Seq
		}
		more, err := s.store.Load(ctx, subject, after)
		if err != nil {
			return nil, err
		}
		evs = append(evs, more...)
		if after = 0; len(evs) > 0 {
			after = evs[len(evs)-1].Seq
		}
		if after >= atLeast {
			return evs, nil
		}
		if time.Now().After(deadline) {
			return nil, job.Errorf(job.ERROR_SERVICE_UNAVAILABLE, "the event log read of %s stays at sequence %d, behind %d; try again", subject, after, atLeast)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// --- export ------------------------------------------------------------------

var errExportDone = errors.New("export done")

// exportEvents answers GET /v1/events/export: every event in the log up to
// its last sequence when the request came, in stream order, as NDJSON
// (history.EncodeLine), optionally only those of some kinds (?kind=job,agent)
// and those whose time is at or after ?since. Administrators only.
func (s *Service) exportEvents(w http.ResponseWriter, r *http.Request, c caller) error {
	if !c.admin() {
		return job.Errorf(job.E_ACCESSDENIED, "exporting the event log is for administrators")
	}
	q := r.URL.Query()
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return job.Errorf(job.E_INVALIDARG, "since %q is not an RFC 3339 time such as 2026-11-02T09:30:00Z", v)
		}
		since = t
	}
	kinds, err := parseKinds(q.Get("kind"))
	if err != nil {
		return err
	}
	end, err := s.streamEnd(r.Context())
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", ContentTypeNDJSON)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(ExportLastSeqHeader, strconv.FormatUint(end, 10))
	h.Set("Trailer", ExportEventsTrailer)
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	n := 0
	if end > 0 {
		// Every sequence up to end is in the log (it denies deletes), so
		// following all of it reaches end; the kinds are filtered here.
		err := s.store.Subscribe(r.Context(), events.SubjectPrefix+">", 0, func(ev events.Event) error {
			if kinds[ev.Kind] && !ev.Time.Before(since) {
				line, err := history.EncodeLine(&ev)
				if err != nil {
					return err
				}
				if _, err := bw.Write(append(line, '\n')); err != nil {
					return err
				}
				n++
			}
			if ev.Seq >= end {
				return errExportDone
			}
			return nil
		})
		if !errors.Is(err, errExportDone) {
			// The answer has started: cut it, so that the client sees an
			// incomplete export (no trailer) instead of a short one.
			if r.Context().Err() == nil {
				s.log.Error().Err(err).Int("events", n).Msg("event export failed")
			}
			panic(http.ErrAbortHandler)
		}
	}
	if err := bw.Flush(); err != nil {
		panic(http.ErrAbortHandler)
	}
	w.Header().Set(ExportEventsTrailer, strconv.Itoa(n))
	s.log.Info().Str("principal", c.Principal).Int("events", n).Uint64("last_seq", end).Msg("event log exported")
	return nil
}

// parseKinds reads ?kind=job,agent,vault (empty: all).
func parseKinds(v string) (map[string]bool, error) {
	all := map[string]bool{events.KindJob: true, events.KindAgent: true, events.KindVault: true}
	if v == "" {
		return all, nil
	}
	out := map[string]bool{}
	for _, k := range strings.Split(v, ",") {
		k = strings.ToLower(strings.TrimSpace(k))
		if !all[k] {
			return nil, job.Errorf(job.E_INVALIDARG, "kind %q is not one of job, agent, vault", k)
		}
		out[k] = true
	}
	return out, nil
}

// streamEnd is the event log's last sequence (0: empty).
func (s *Service) streamEnd(ctx context.Context) (uint64, error) {
	st, err := s.js.Stream(ctx, events.StreamName)
	if err != nil {
		return 0, fmt.Errorf("coordinator: export: %w", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("coordinator: export: %w", err)
	}
	return info.State.LastSeq, nil
}

// --- import ------------------------------------------------------------------

// importEvents answers POST /v1/events/import: it appends the events of an
// export (NDJSON, as GET /v1/events/export writes it) that are not on their
// subject yet, keeping their IDs and each subject's order. It reads the
// body line by line:
//
//   - An event whose ID is already on its subject is skipped, so importing
//     a file again imports nothing. The subject's IDs are read from the log
//     (not left to JetStream's de-duplication window).
//   - New events of a subject are appended after its last event, in file
//     order, in atomic batches, each chained on the subject's last sequence.
//     They must continue the subject's history: if the subject already has
//     events, the file must hold them up to its last one, in the same order,
//     before the first new one. A job's new events must replay (job.Evolve)
//     from its state, and a job's history must begin with JobCreated.
//   - The first line that is not a well-formed event of a registered type
//     and version, or that breaks one of these rules, ends the import: the
//     events of the lines before it are imported, nothing from it on, and
//     the answer is an ImportProblem naming the line.
//
// Administrators only.
func (s *Service) importEvents(w http.ResponseWriter, r *http.Request, c caller) error {
	if !c.admin() {
		return job.Errorf(job.E_ACCESSDENIED, "importing events is for administrators")
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		switch mt, _, _ := strings.Cut(ct, ";"); strings.TrimSpace(mt) {
		case ContentTypeNDJSON, "application/json", "text/plain", "application/octet-stream":
		default:
			return &job.Error{Code: withStatus(job.E_INVALIDARG, http.StatusUnsupportedMediaType),
				Detail: fmt.Sprintf("Content-Type %q is not %s", ct, ContentTypeNDJSON)}
		}
	}
	im := &importer{s: s, ctx: r.Context(), subjects: map[string]*importSubject{}}
	err := im.run(history.NewExportReader(r.Body))
	// Whatever was read before the end or a refused line is stored.
	if ferr := im.flushAll(); ferr != nil && err == nil {
		err = ferr
	}
	im.res.Subjects = len(im.subjects)
	log := s.log.With().Str("principal", c.Principal).Int("lines", im.res.Lines).Int("imported", im.res.Imported).
		Int("skipped", im.res.Skipped).Logger()
	if err != nil {
		// Read the rest, so that the client, still sending, gets the answer.
		_, _ = io.Copy(io.Discard, r.Body)
		var le *importLineError
		p := ImportProblem{ImportResult: im.res}
		switch {
		case errors.As(err, &le):
			p.Problem, p.Line = ProblemFor(le.err), le.line
			p.Detail = fmt.Sprintf("line %d: %s (nothing from this line on was imported; before it, %d events were imported and %d skipped)",
				le.line, p.Detail, im.res.Imported, im.res.Skipped)
			log.Warn().Int("line", le.line).Str("detail", p.Detail).Msg("event import refused a line")
		default:
			p.Problem = ProblemFor(err)
			p.Detail += fmt.Sprintf(" (%d events were imported and %d skipped)", im.res.Imported, im.res.Skipped)
			if p.Status >= 500 {
				log.Error().Err(err).Msg("event import failed")
			}
		}
		p.Instance = r.URL.Path
		h := w.Header()
		h.Set("Content-Type", "application/problem+json")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(p.Status)
		_ = json.NewEncoder(w).Encode(p)
		return nil
	}
	log.Info().Msg("events imported")
	writeJSON(w, http.StatusOK, im.res)
	return nil
}

// importLineError is a refusal of one line.
type importLineError struct {
	line int
	err  error
}

func (e *importLineError) Error() string { return fmt.Sprintf("line %d: %v", e.line, e.err) }
func (e *importLineError) Unwrap() error { return e.err }

type importer struct {
	s        *Service
	ctx      context.Context
	subjects map[string]*importSubject
	order    []*importSubject // in the order the file names them
	res      ImportResult
}

// importSubject is what an import knows about one subject.
type importSubject struct {
	subject string
	// ids locates every event ID of the subject: >= 0, the index among the
	// events it had before the import; < 0, minus the line that imported
	// it.
	ids map[uuid.UUID]int
	// existing is how many events it had; matched the index of the last of
	// them the file held so far (-1: none) and matchedLine its line.
	existing, matched, matchedLine int
	// taking: the file's events of this subject are new from here on.
	taking bool
	// last is the subject's last sequence: the expectation of the next
	// append.
	last uint64
	// j is, for a job, its state after its events and the new ones so far.
	j       *job.Job
	pending []events.Event
}

func (im *importer) run(x *history.ExportReader) error {
	for {
		ev, line, err := x.Next()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			var le *history.LineError
			if errors.As(err, &le) {
				return &importLineError{line: le.Line, err: job.Errorf(job.RPC_X_BAD_STUB_DATA, "%v", le.Err)}
			}
			return job.Errorf(job.E_INVALIDARG, "reading the request body after line %d: %v", x.Line(), err)
		}
		im.res.Lines++
		if err := im.add(ev, line); err != nil {
			return err
		}
	}
}

// refuse is a refusal of a line whose event breaks the import's rules.
func refuse(line int, format string, args ...any) error {
	return &importLineError{line: line, err: &job.Error{Code: withStatus(job.E_INVALIDARG, http.StatusConflict), Detail: fmt.Sprintf(format, args...)}}
}

func (im *importer) add(ev events.Event, line int) error {
	switch ev.Kind {
	case events.KindJob, events.KindAgent, events.KindVault:
	default:
		return &importLineError{line: line, err: job.Errorf(job.RPC_X_BAD_STUB_DATA, "kind %q is not job, agent or vault", ev.Kind)}
	}
	s, err := im.subject(ev.Subject(), ev.Kind)
	if err != nil {
		return err
	}
	if where, ok := s.ids[ev.ID]; ok {
		switch {
		case where < 0:
			return &importLineError{line: line, err: job.Errorf(job.RPC_X_BAD_STUB_DATA, "event %s appears twice (first on line %d)", ev.ID, -where)}
		case s.taking:
			return refuse(line, "event %s is already on %s, but the file has events of that subject before it that are not: the histories differ", ev.ID, s.subject)
		case where <= s.matched:
			return refuse(line, "event %s is on %s before the event of line %d: the file has that subject's events in another order", ev.ID, s.subject, s.matchedLine)
		}
		s.matched, s.matchedLine = where, line
		im.res.Skipped++
		return nil
	}
	if !s.taking {
		// The subject's first new event must follow its last one.
		switch {
		case s.existing == 0:
		case s.matched < 0:
			return refuse(line, "%s already has %d events here and the file holds none of them before this line: importing would join two different histories (an export made with --since must reach back to events imported before)", s.subject, s.existing)
		case s.matched < s.existing-1:
			return refuse(line, "%s has %d events here after the one on line %d that the file does not hold: the histories differ", s.subject, s.existing-1-s.matched, s.matchedLine)
		}
		s.taking = true
	}
	if s.j != nil {
		if err := evolveImported(s.j, ev); err != nil {
			return &importLineError{line: line, err: err}
		}
	}
	s.ids[ev.ID] = -line
	s.pending = append(s.pending, ev)
	if len(s.pending) >= importBatch {
		return im.flush(s)
	}
	return nil
}

// evolveImported applies a job's imported event to its state, refusing
// what would not make a job the projector can replay.
func evolveImported(j *job.Job, ev events.Event) error {
	created := ev.Type == events.TypeJobCreated
	switch {
	case !j.Exists() && !created:
		return &job.Error{Code: withStatus(job.E_INVALIDARG, http.StatusConflict),
			Detail: fmt.Sprintf("the history of job %s starts with %s, not JobCreated: the file lacks its beginning (an export made with --since?)", ev.AggregateID, ev.Type)}
	case j.Exists() && created:
		return job.Errorf(job.RPC_X_BAD_STUB_DATA, "job %s is created a second time", ev.AggregateID)
	}
	if created {
		p, err := ev.Payload()
		if err != nil {
			return job.Errorf(job.RPC_X_BAD_STUB_DATA, "%v", err)
		}
		if id := p.(*events.JobCreated).JobID; id != ev.AggregateID {
			return job.Errorf(job.RPC_X_BAD_STUB_DATA, "JobCreated of job %s names job %q", ev.AggregateID, id)
		}
	}
	ev.Seq = 0 // the exporting installation's sequence means nothing here
	if err := job.Evolve(j, &ev); err != nil {
		return job.Errorf(job.RPC_X_BAD_STUB_DATA, "%s does not apply to job %s: %v", ev.Type, ev.AggregateID, err)
	}
	return nil
}

// subject returns what the import knows about subject, reading its events
// from the log the first time.
func (im *importer) subject(subject, kind string) (*importSubject, error) {
	if s, ok := im.subjects[subject]; ok {
		return s, nil
	}
	last, err := im.s.store.LastSeq(im.ctx, subject)
	if err != nil {
		return nil, err
	}
	var evs []events.Event
	if last > 0 {
		if evs, err = im.s.loadEvents(im.ctx, subject, last); err != nil {
			return nil, err
		}
	}
	s := &importSubject{subject: subject, ids: make(map[uuid.UUID]int, len(evs)), existing: len(evs), matched: -1, last: last}
	for i := range evs {
		s.ids[evs[i].ID] = i
	}
	if len(evs) > 0 {
		s.last = evs[len(evs)-1].Seq
	}
	if kind == events.KindJob {
		j, err := job.Replay(evs)
		if err != nil {
			return nil, fmt.Errorf("coordinator: import: %s here does not replay: %w", subject, err)
		}
		s.j = &j
	}
	im.subjects[subject] = s
	im.order = append(im.order, s)
	return s, nil
}

// flush appends a subject's pending events.
func (im *importer) flush(s *importSubject) error {
	if len(s.pending) == 0 {
		return nil
	}
	evs := s.pending
	last, err := im.s.store.Append(im.ctx, s.subject, s.last, evs)
	if err != nil {
		if events.IsConflict(err) {
			return &job.Error{Code: withStatus(job.E_FAIL, http.StatusConflict),
				Detail: fmt.Sprintf("%s changed during the import (another writer); its last %d events read were not stored: import the file again (what is stored is skipped)", s.subject, len(evs))}
		}
		return fmt.Errorf("coordinator: import %s: %w", s.subject, err)
	}
	s.last, s.pending = last, nil
	im.res.Imported += len(evs)
	return nil
}

func (im *importer) flushAll() error {
	var errs []error
	for _, s := range im.order {
		if err := im.flush(s); err != nil {
			errs = append(errs, err)
			s.pending = nil
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}
