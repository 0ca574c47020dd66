package coordinator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// HeaderVault keeps the values of jobs' write-only custom headers
// (MakeCustomHeadersWriteOnly). *certvault.Vault implements it. The
// coordinator hands values in and never reads them back: only the agent
// holding a job's lease gets them, from certvault's release endpoint.
type HeaderVault interface {
	// StoreHeaders stores the "Name: value" lines of job jobID's
	// write-only headers for owner, replacing any, and returns their names.
	StoreHeaders(ctx context.Context, owner certvault.Caller, jobID string, headers []string) ([]string, error)
	// DeleteHeaders deletes them, reporting whether there were any.
	DeleteHeaders(ctx context.Context, actor certvault.Caller, jobID, reason string) (bool, error)
}

// WriteOnlyHeadersPath is the resource of a job's write-only custom
// headers: POST makes headers write-only, DELETE clears them.
const WriteOnlyHeadersPath = "/v1/jobs/{id}/custom-headers/write-only"

// WriteOnlyHeadersRequest is the optional body of POST
// /v1/jobs/{id}/custom-headers/write-only: the "Name: value" lines to make
// the job's write-only headers. Without a body the job's plain custom
// headers are moved.
type WriteOnlyHeadersRequest struct {
	Headers []string `json:"headers"`
}

// maxWriteOnlyBody bounds that body: 16,384 characters of headers, even
// escaped as \uXXXX, fit.
const maxWriteOnlyBody = 128 << 10

func (c caller) vaultCaller() certvault.Caller {
	return certvault.Caller{Principal: c.Principal, Role: string(c.Role)}
}

// makeHeadersWriteOnly is MakeCustomHeadersWriteOnly. With a body, its
// headers become the job's write-only headers; without, the job's plain
// custom headers do. Either way they replace any write-only headers the
// job had, and plain headers of the same names are dropped. The values go
// to certvault first, then the job's options name them (JobModified):
// values given in the body never enter an event, a log line or an answer.
// (Moved plain headers were in the job's events when they were set: give a
// secret in the body to keep it out of them from the start.)
//
// Only the owner (E_ACCESSDENIED, administrators included); not on
// ACKNOWLEDGED or CANCELLED jobs (BG_E_INVALID_STATE); lines are checked
// like SetCustomHeaders input (E_INVALIDARG, BG_E_STRING_TOO_LONG). No
// body and no plain headers: S_FALSE.
func (s *Service) makeHeadersWriteOnly(w http.ResponseWriter, r *http.Request, c caller) error {
	if s.cfg.Headers == nil {
		return job.Errorf(job.ERROR_SERVICE_UNAVAILABLE, "this coordinator has no certificate vault: custom headers cannot be made write-only")
	}
	given, hasBody, err := decodeWriteOnly(w, r)
	defer clearLines(given)
	if err != nil {
		return err
	}
	ctx := r.Context()
	id := r.PathValue("id")
	j, err := s.loadFresh(ctx, id, c)
	if err != nil {
		return err
	}
	lines := j.Options.CustomHeaders
	if hasBody {
		if len(given) == 0 {
			return job.Errorf(job.RPC_X_NULL_REF_POINTER, `"headers" must list at least one "Name: value" line (send no body to make the job's custom headers write-only; DELETE clears write-only headers)`)
		}
		if lines, err = job.ValidateCustomHeaders(given); err != nil {
			return err
		}
	}
	cmd := job.MakeHeadersWriteOnly{Names: job.HeaderNames(lines), CallerPrincipal: c.Principal}
	// Decide on the fresh state first: a refusal (owner, state) must come
	// before certvault is touched.
	if _, err := job.Decide(&j, cmd, time.Now()); err != nil {
		return err
	}
	if len(lines) == 0 {
		answer(w, jobstore.Result{Job: j}, false)
		return nil
	}
	if _, err := s.cfg.Headers.StoreHeaders(ctx, c.vaultCaller(), id, lines); err != nil {
		return err
	}
	had := len(j.Options.WriteOnlyHeaders) > 0
	res, err := s.exec(ctx, id, cmd, c.Principal, &j)
	if err != nil {
		if !had {
			// The job changed meanwhile and refused: take back values it
			// will never name. (Had it named headers before, the release
			// checks their names against the record, and refuses a
			// mismatch.)
			s.dropHeaders(ctx, c, id, events.HeadersDeletedNotApplied)
		}
		return err
	}
	answer(w, res, true)
	return nil
}

// clearWriteOnlyHeaders removes the job's write-only custom headers and
// deletes their values from certvault. Owner only; S_FALSE when the job
// has none and certvault had no values.
func (s *Service) clearWriteOnlyHeaders(w http.ResponseWriter, r *http.Request, c caller) error {
	if s.cfg.Headers == nil {
		return job.Errorf(job.ERROR_SERVICE_UNAVAILABLE, "this coordinator has no certificate vault: write-only headers cannot be cleared")
	}
	if r.ContentLength > 0 {
		var empty struct{}
		if err := decodeBody(w, r, &empty); err != nil {
			return err
		}
	}
	res, err := s.run(r, job.ClearWriteOnlyHeaders{CallerPrincipal: c.Principal}, c)
	if err != nil {
		return err
	}
	// After the event: the job no longer names the headers, so certvault
	// releases them to nobody even if this fails; a retry deletes them.
	deleted, err := s.cfg.Headers.DeleteHeaders(r.Context(), c.vaultCaller(), res.Job.ID, events.HeadersDeletedByOwner)
	if err != nil {
		return &job.Error{Code: job.CodeOf(err), Err: err,
			Detail: "the job no longer has write-only headers (they are released to nobody), but certvault could not delete their values; try again"}
	}
	answer(w, res, deleted)
	return nil
}

// dropHeaders deletes a job's write-only header values, best effort: a
// failure is logged (the release's checks are the guarantee).
func (s *Service) dropHeaders(ctx context.Context, c caller, id, reason string) {
	if s.cfg.Headers == nil {
		return
	}
	if _, err := s.cfg.Headers.DeleteHeaders(ctx, c.vaultCaller(), id, reason); err != nil {
		s.log.Warn().Err(err).Str("job", id).Str("reason", reason).Msg("write-only header values not deleted (certvault will not release them)")
	}
}

// decodeWriteOnly reads the optional body: no body (or only white space)
// says to move the plain headers.
func decodeWriteOnly(w http.ResponseWriter, r *http.Request) ([]string, bool, error) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWriteOnlyBody))
	defer clear(raw)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, false, &job.Error{Code: withStatus(job.E_INVALIDARG, http.StatusRequestEntityTooLarge),
				Detail: "the request body is too large"}
		}
		return nil, false, job.Errorf(job.E_INVALIDARG, "the request body cannot be read")
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, false, nil
	}
	var req WriteOnlyHeadersRequest
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(raw))
	if err := httpapi.DecodeJSON(w, r2, &req, maxWriteOnlyBody); err != nil {
		// Its detail names fields and offsets (a syntax error at most
		// one character), never the body.
		return nil, true, err
	}
	return req.Headers, true, nil
}

// clearLines drops references to header lines that may hold secrets.
func clearLines(lines []string) {
	for i := range lines {
		lines[i] = ""
	}
}
