package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/google/uuid"
)

// CreateRequest is the body of POST /v1/jobs.
type CreateRequest struct {
	DisplayName string `json:"display_name"`
	Description string `json:"description,omitempty"`
	Priority    string `json:"priority,omitempty"`
	Pool        string `json:"pool,omitempty"`
	// Agent pins the job to one agent (host pinning); it then waits for
	// that agent while it is offline.
	Agent              string            `json:"agent,omitempty"`
	Files              []events.FileSpec `json:"files,omitempty"`
	MinimumRetryDelayS *int64            `json:"minimum_retry_delay_s,omitempty"`
	NoProgressTimeoutS *int64            `json:"no_progress_timeout_s,omitempty"`
	// MaxDownloadTimeS is SetMaximumDownloadTime (default 90 days, 0: none).
	MaxDownloadTimeS *int64 `json:"max_download_time_s,omitempty"`
	// Options are the job's HTTP options and BITS properties.
	Options *job.OptionsPatch `json:"options,omitempty"`
	// Resume queues the job right after creating it.
	Resume bool `json:"resume,omitempty"`
}

// AddFilesRequest is the body of POST /v1/jobs/{id}/files.
type AddFilesRequest struct {
	Files []events.FileSpec `json:"files"`
}

// PatchRequest is the body of PATCH /v1/jobs/{id}.
type PatchRequest struct {
	DisplayName        *string `json:"display_name,omitempty"`
	Description        *string `json:"description,omitempty"`
	Priority           *string `json:"priority,omitempty"`
	MinimumRetryDelayS *int64  `json:"minimum_retry_delay_s,omitempty"`
	NoProgressTimeoutS *int64  `json:"no_progress_timeout_s,omitempty"`
	MaxDownloadTimeS   *int64  `json:"max_download_time_s,omitempty"`
	// Options changes the options present; the others stay.
	Options *job.OptionsPatch `json:"options,omitempty"`
}

// ActionResponse answers job actions: the BITS result code and the job after
// the action.
type ActionResponse struct {
	Code    string  `json:"code"`
	HResult string  `json:"hresult"`
	Job     job.Job `json:"job"`
}

// ListResponse answers GET /v1/jobs.
type ListResponse struct {
	Jobs []job.Job `json:"jobs"`
}

// Handler returns the HTTP API.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/jobs", s.handle(s.createJob))
	mux.HandleFunc("GET /v1/jobs", s.handle(s.listJobs))
	mux.HandleFunc("GET /v1/jobs/{id}", s.handle(s.getJob))
	mux.HandleFunc("PATCH /v1/jobs/{id}", s.handle(s.patchJob))
	mux.HandleFunc("POST /v1/jobs/{id}/files", s.handle(s.addFiles))
	mux.HandleFunc("POST /v1/jobs/{id}/{action}", s.handle(s.action))
	mux.HandleFunc("PUT /v1/jobs/{id}/client-certificate", s.handle(s.setClientCertificate))
	mux.HandleFunc("GET /v1/jobs/{id}/client-certificate", s.handle(s.getClientCertificate))
	mux.HandleFunc("DELETE /v1/jobs/{id}/client-certificate", s.handle(s.removeClientCertificate))
	mux.HandleFunc("POST /v1/jobs/{id}/take-ownership", s.handle(s.takeOwnership))
	mux.HandleFunc("POST "+WriteOnlyHeadersPath, s.handle(s.makeHeadersWriteOnly))
	mux.HandleFunc("DELETE "+WriteOnlyHeadersPath, s.handle(s.clearWriteOnlyHeaders))
	mux.HandleFunc("GET /v1/jobs/{id}/events", s.handle(s.jobEvents))
	mux.HandleFunc("GET /v1/pools/{pool}/bandwidth", s.handle(s.getBandwidth))
	mux.HandleFunc("PUT /v1/pools/{pool}/bandwidth", s.handle(s.putBandwidth))
	mux.HandleFunc("GET /v1/agents", s.handle(s.listAgents))
	s.eventRoutes(mux)
	s.replayRoutes(mux)
	s.projectionRoutes(mux)
	mux.Handle("GET "+identity.SessionPath, s.cfg.Auth.SessionHandler())
	mux.HandleFunc("/", s.handle(func(w http.ResponseWriter, r *http.Request, _ caller) error {
		return &job.Error{Code: withStatus(job.ERROR_NOT_FOUND, http.StatusNotFound), Detail: fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)}
	}))
	// Health needs no identity (probes); everything else does. The session
	// endpoint reports what it received even when it does not verify.
	root := http.NewServeMux()
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	root.Handle("/", s.cfg.Auth.Middleware(mux, identity.SessionPath))
	return root
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c caller) error

// handle checks the caller's role, tags the request with a correlation ID and
// turns errors into problem documents.
func (s *Service) handle(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := callerOf(r)
		if err != nil {
			writeProblem(w, r, s.log, err)
			return
		}
		corr := r.Header.Get("X-Request-Id")
		if corr == "" || len(corr) > 64 {
			corr = uuid.NewString()
		}
		w.Header().Set("X-Request-Id", corr)
		r = r.WithContext(context.WithValue(r.Context(), correlationKey, corr))
		if err := h(w, r, c); err != nil {
			writeProblem(w, r, s.log, err)
		}
	}
}

func seconds(p *int64) *time.Duration {
	if p == nil {
		return nil
	}
	d := time.Duration(*p) * time.Second
	return &d
}

func (s *Service) createJob(w http.ResponseWriter, r *http.Request, c caller) error {
	var req CreateRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	prio, err := job.ParsePriority(req.Priority)
	if err != nil {
		return err
	}
	if err := s.checkJobQuota(r.Context(), c); err != nil {
		return err
	}
	id, err := newJobID()
	if err != nil {
		return err
	}
	res, err := s.exec(r.Context(), id, job.Create{
		JobID: id, DisplayName: req.DisplayName, Description: req.Description, Owner: c.Principal,
		Priority: prio, Pool: req.Pool, Agent: req.Agent, Files: req.Files, Limits: s.cfg.Limits,
		MinimumRetryDelay: seconds(req.MinimumRetryDelayS), NoProgressTimeout: seconds(req.NoProgressTimeoutS),
		MaxDownloadTime: seconds(req.MaxDownloadTimeS), Options: req.Options,
	}, c.Principal, nil)
	if err != nil {
		return err
	}
	if req.Resume {
		if res, err = s.exec(r.Context(), id, job.Resume{}, c.Principal, &res.Job); err != nil {
			// The job exists; say so alongside the refusal.
			p := ProblemFor(err)
			p.JobID = id
			w.Header().Set("Location", "/v1/jobs/"+id)
			httpapi.WriteProblem(w, r, p)
			return nil
		}
	}
	w.Header().Set("Location", "/v1/jobs/"+id)
	writeJSON(w, http.StatusCreated, res.Job)
	return nil
}

// checkJobQuota refuses a user with too many jobs that are not final
// (BG_E_TOO_MANY_JOBS_PER_USER). Administrators are exempt, as in BITS. The
// count comes from the read model, so concurrent creations may overshoot
// the limit by the few that race.
func (s *Service) checkJobQuota(ctx context.Context, c caller) error {
	if c.admin() {
		return nil
	}
	limit := s.cfg.Limits.JobsPerUser()
	n := 0
	if _, err := s.readModel.List(ctx, func(j *job.Job) bool {
		if j.Owner == c.Principal && !j.State.Final() {
			n++
		}
		return false
	}); err != nil {
		return err
	}
	if n >= limit {
		return job.Errorf(job.BG_E_TOO_MANY_JOBS_PER_USER, "you have %d jobs that are not acknowledged or cancelled; the limit is %d", n, limit)
	}
	return nil
}

func (s *Service) listJobs(w http.ResponseWriter, r *http.Request, c caller) error {
	q := r.URL.Query()
	var states map[job.State]bool
	if v := q.Get("state"); v != "" {
		states = map[job.State]bool{}
		for _, st := range strings.Split(v, ",") {
			st = strings.ToUpper(strings.TrimSpace(st))
			if !validState(job.State(st)) {
				return job.Errorf(job.E_INVALIDARG, "unknown state %q", st)
			}
			states[job.State(st)] = true
		}
	}
	all := q.Get("all") == "true"
	jobs, err := s.readModel.List(r.Context(), func(j *job.Job) bool {
		if states != nil && !states[j.State] {
			return false
		}
		// Users see their own jobs, administrators everyone's.
		if c.mayAccess(j) != nil {
			return false
		}
		// ACKNOWLEDGED and CANCELLED jobs are no longer enumerated, as in
		// BITS, unless asked for.
		return all || states != nil || !j.State.Final()
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ListResponse{Jobs: jobs})
	return nil
}

func validState(s job.State) bool {
	for _, v := range job.States {
		if v == s {
			return true
		}
	}
	return false
}

// load returns the job's current state: from the read model, or, when the
// projection has not caught up, by replaying its events.
// load reads one job for a caller: its read-model entry plus the events
// the projector has not applied yet (one read of the log's tail), so that
// a client reads its own writes — `job show` right after `job resume` shows
// the resume — even while the projector lags.
func (s *Service) load(ctx context.Context, id string, c caller) (job.Job, error) {
	j, err := s.repo.Load(ctx, id)
	if err != nil {
		return job.Job{}, err
	}
	return j, c.mayAccess(&j)
}

func (s *Service) getJob(w http.ResponseWriter, r *http.Request, c caller) error {
	j, err := s.load(r.Context(), r.PathValue("id"), c)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j)
	return nil
}

func (s *Service) patchJob(w http.ResponseWriter, r *http.Request, c caller) error {
	var req PatchRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	cmd := job.Modify{DisplayName: req.DisplayName, Description: req.Description,
		MinimumRetryDelay: seconds(req.MinimumRetryDelayS), NoProgressTimeout: seconds(req.NoProgressTimeoutS),
		MaxDownloadTime: seconds(req.MaxDownloadTimeS), Options: req.Options}
	if req.Priority != nil {
		p, err := job.ParsePriority(*req.Priority)
		if err != nil {
			return err
		}
		cmd.Priority = &p
	}
	return s.respond(w, r, cmd, c)
}

func (s *Service) addFiles(w http.ResponseWriter, r *http.Request, c caller) error {
	var req AddFilesRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	return s.respond(w, r, job.AddFiles{Files: req.Files, Limits: s.cfg.Limits}, c)
}

func (s *Service) action(w http.ResponseWriter, r *http.Request, c caller) error {
	var cmd job.Command
	switch a := r.PathValue("action"); a {
	case "resume":
		cmd = job.Resume{}
	case "suspend":
		cmd = job.Suspend{}
	case "cancel":
		cmd = job.Cancel{}
	case "complete":
		cmd = job.Complete{}
	default:
		return &job.Error{Code: withStatus(job.ERROR_NOT_FOUND, http.StatusNotFound), Detail: fmt.Sprintf("unknown job action %q", a)}
	}
	if r.ContentLength > 0 {
		var empty struct{}
		if err := decodeBody(w, r, &empty); err != nil {
			return err
		}
	}
	return s.respond(w, r, cmd, c)
}

// respond runs a command on the job named in the path and answers with the
// result code and the new state.
func (s *Service) respond(w http.ResponseWriter, r *http.Request, cmd job.Command, c caller) error {
	res, err := s.run(r, cmd, c)
	if err != nil {
		return err
	}
	answer(w, res, false)
	return nil
}

// run runs a command on the job named in the path.
func (s *Service) run(r *http.Request, cmd job.Command, c caller) (jobstore.Result, error) {
	id := r.PathValue("id")
	j, err := s.load(r.Context(), id, c)
	if err != nil {
		return jobstore.Result{}, err
	}
	// The read model's view is a fine start: if it lags, the append
	// conflicts and the job is caught up from its events.
	return s.exec(r.Context(), id, cmd, c.Principal, &j)
}

// answer writes the result code and the job after a command: S_FALSE when
// it appended no events, unless changed says that something outside the
// job (certvault) changed.
func answer(w http.ResponseWriter, res jobstore.Result, changed bool) {
	code, status := job.S_OK, http.StatusOK
	switch {
	case len(res.Events) == 0 && !changed:
		code = job.S_FALSE
	case res.Job.PendingComplete:
		status = http.StatusAccepted // the files' host renames them
	case res.Job.State == job.Acknowledged && res.Job.Progress.FilesTransferred < res.Job.Progress.FilesTotal:
		code = job.BG_S_PARTIAL_COMPLETE
	}
	writeJSON(w, status, ActionResponse{Code: code.Symbol, HResult: code.HResultString(), Job: res.Job})
}

// jobEvents streams a job's events as server-sent events: every stored event
// after Last-Event-ID (or ?after=N), then new ones as they happen. Each event's
// id is its stream sequence, so a client that reconnects with Last-Event-ID
// misses nothing and sees nothing twice.
func (s *Service) jobEvents(w http.ResponseWriter, r *http.Request, c caller) error {
	id := r.PathValue("id")
	if _, err := s.load(r.Context(), id, c); err != nil {
		return err
	}
	var after uint64
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return job.Errorf(job.E_INVALIDARG, "Last-Event-ID %q is not a sequence number", v)
		}
		after = n
	} else if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return job.Errorf(job.E_INVALIDARG, "after %q is not a sequence number", v)
		}
		after = n
	}
	err := serveSSE(w, r, func(ctx context.Context, sse *sseStream) error {
		return s.store.Subscribe(ctx, events.JobSubject(id), after, func(ev events.Event) error { return sse.event(&ev) })
	})
	if err != nil {
		s.log.Debug().Err(err).Str("job", id).Msg("event stream ended")
	}
	return nil
}
