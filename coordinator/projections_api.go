package coordinator

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
)

// NDJSON is the media type of progress streams: a client that accepts it
// gets one JSON object per line — {"progress": …} while the operation runs,
// then {"result": …} or {"error": problem}.
const NDJSON = "application/x-ndjson"

// VerifyRequest is the (optional) body of POST /v1/admin/projections/verify.
type VerifyRequest struct {
	// Projection to verify; empty: every projection.
	Projection string `json:"projection,omitempty"`
	// LiveTimeoutS bounds the wait for the live projector (default 120).
	LiveTimeoutS int64 `json:"live_timeout_s,omitempty"`
}

// RebuildRequest is the (optional) body of POST
// /v1/admin/projections/{name}/rebuild.
type RebuildRequest struct {
	// SwitchTimeoutS bounds the wait for every coordinator to leave the
	// old generation before it is deleted (default 120).
	SwitchTimeoutS int64 `json:"switch_timeout_s,omitempty"`
}

// ProjectionLine is one line of a progress stream.
type ProjectionLine struct {
	Progress *ProjectionProgress `json:"progress,omitempty"`
	Result   json.RawMessage     `json:"result,omitempty"`
	Error    *Problem            `json:"error,omitempty"`
}

// ProjectionStatus is one projection in GET /v1/admin/projections.
type ProjectionStatus struct {
	ProjectionPointer
	// Served is the generation this coordinator reads, Applied the log
	// sequence its projector has applied.
	Served  uint64 `json:"served"`
	Applied uint64 `json:"applied"`
	// Readers lists, per bucket of the projection, the coordinators that
	// read it.
	Readers map[string][]string `json:"readers"`
	// Lock is the verify or rebuild running, if any.
	Lock *LockInfo `json:"lock,omitempty"`
}

// ProjectionsResponse answers GET /v1/admin/projections.
type ProjectionsResponse struct {
	Projections []ProjectionStatus `json:"projections"`
}

// projectionRoutes registers the projection verify/rebuild API.
func (s *Service) projectionRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/admin/projections", s.handle(s.listProjections))
	mux.HandleFunc("POST /v1/admin/projections/verify", s.handle(s.verifyProjections))
	mux.HandleFunc("POST /v1/admin/projections/{name}/rebuild", s.handle(s.rebuildProjection))
}

func requireAdmin(c caller, what string) error {
	if !c.admin() {
		return job.Errorf(job.E_ACCESSDENIED, "only administrators may %s", what)
	}
	return nil
}

func (s *Service) listProjections(w http.ResponseWriter, r *http.Request, c caller) error {
	if err := requireAdmin(c, "see projections"); err != nil {
		return err
	}
	ctx := r.Context()
	ptr, _, err := readPointer(ctx, s.projKV, JobsProjection)
	if err != nil {
		return err
	}
	st := ProjectionStatus{ProjectionPointer: ptr, Served: s.models.current().gen, Applied: s.projector.Applied(), Readers: map[string][]string{}}
	lister := s.js.StreamNames(ctx)
	for name := range lister.Name() {
		if b, ok := strings.CutPrefix(name, "KV_"); ok && jobsBucketRE.MatchString(b) {
			readers, err := readersOf(ctx, s.js, b)
			if err != nil {
				return err
			}
			st.Readers[b] = append([]string{}, readers...)
		}
	}
	if err := lister.Err(); err != nil {
		return err
	}
	if e, err := s.projKV.Get(ctx, lockKey(JobsProjection)); err == nil {
		var l LockInfo
		if json.Unmarshal(e.Value(), &l) == nil {
			st.Lock = &l
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	writeJSON(w, http.StatusOK, ProjectionsResponse{Projections: []ProjectionStatus{st}})
	return nil
}

func (s *Service) verifyProjections(w http.ResponseWriter, r *http.Request, c caller) error {
	if err := requireAdmin(c, "verify projections"); err != nil {
		return err
	}
	var req VerifyRequest
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
	}
	if req.LiveTimeoutS < 0 {
		return job.Errorf(job.E_INVALIDARG, "live_timeout_s must not be negative")
	}
	opts := VerifyOptions{By: c.Principal, LiveTimeout: time.Duration(req.LiveTimeoutS) * time.Second}
	if req.Projection != "" {
		opts.Projections = []string{req.Projection}
	}
	st := newOpStream(w, r)
	s.log.Info().Str("by", c.Principal).Strs("projections", opts.Projections).Msg("projection verify started")
	rep, err := s.VerifyProjections(r.Context(), opts, st.progress)
	if err == nil {
		ev := s.log.Info()
		if !rep.Agree {
			ev = s.log.Warn()
		}
		n := 0
		for _, p := range rep.Projections {
			n += len(p.Mismatches)
		}
		ev.Str("by", c.Principal).Bool("agree", rep.Agree).Int("mismatches", n).Msg("projection verify done")
	}
	return st.finish(s, rep, err)
}

func (s *Service) rebuildProjection(w http.ResponseWriter, r *http.Request, c caller) error {
	if err := requireAdmin(c, "rebuild projections"); err != nil {
		return err
	}
	name, err := canonicalProjection(r.PathValue("name"))
	if err != nil {
		return err
	}
	var req RebuildRequest
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
	}
	if req.SwitchTimeoutS < 0 {
		return job.Errorf(job.E_INVALIDARG, "switch_timeout_s must not be negative")
	}
	st := newOpStream(w, r)
	rep, err := s.RebuildProjection(r.Context(), name,
		RebuildOptions{By: c.Principal, SwitchTimeout: time.Duration(req.SwitchTimeoutS) * time.Second}, st.progress)
	return st.finish(s, rep, err)
}

// opStream answers a long operation: with progress lines as NDJSON when the
// client accepts it, else with the result as one JSON document at the end.
// An error before any line was written is an ordinary problem answer.
type opStream struct {
	w       http.ResponseWriter
	r       *http.Request
	rc      *http.ResponseController
	stream  bool
	mu      sync.Mutex
	started bool
	broken  bool
}

func newOpStream(w http.ResponseWriter, r *http.Request) *opStream {
	return &opStream{w: w, r: r, rc: http.NewResponseController(w), stream: strings.Contains(r.Header.Get("Accept"), NDJSON)}
}

func (o *opStream) progress(p ProjectionProgress) {
	if o.stream {
		o.line(ProjectionLine{Progress: &p})
	}
}

func (o *opStream) line(l ProjectionLine) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.broken {
		return
	}
	if !o.started {
		h := o.w.Header()
		h.Set("Content-Type", NDJSON)
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		o.w.WriteHeader(http.StatusOK)
		o.started = true
	}
	b, err := json.Marshal(l)
	if err == nil {
		_, err = o.w.Write(append(b, '\n'))
	}
	if err == nil {
		err = o.rc.Flush()
	}
	if err != nil {
		o.broken = true // the client went away; the operation's context ends
	}
}

func (o *opStream) finish(s *Service, result any, err error) error {
	var je *job.Error
	if err != nil && !errors.As(err, &je) {
		// Administrators see why an operation failed (it names buckets
		// and sequences, nothing secret), unlike the generic E_FAIL of
		// other internal errors.
		err = &job.Error{Code: job.E_FAIL, Detail: err.Error(), Err: err}
	}
	o.mu.Lock()
	started := o.started
	o.mu.Unlock()
	if err != nil && !started {
		return err
	}
	if err != nil {
		p := ProblemFor(err)
		if p.Status >= 500 {
			s.log.Error().Err(err).Str("method", o.r.Method).Str("path", o.r.URL.Path).Msg("request failed")
		}
		o.line(ProjectionLine{Error: &p})
		return nil
	}
	if !o.stream {
		writeJSON(o.w, http.StatusOK, result)
		return nil
	}
	b, merr := json.Marshal(result)
	if merr != nil {
		return merr
	}
	o.line(ProjectionLine{Result: b})
	return nil
}
