package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ferry-dev/ferry/job"
	"github.com/rs/zerolog"
)

// Problem is an RFC 9457 problem document with ferry's extension members:
// code (the BITS symbol) and hresult.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	Code     string `json:"code"`
	HResult  string `json:"hresult"`
	JobID    string `json:"job_id,omitempty"`
}

// ProblemFor maps an error to its problem document. Errors that carry no code
// are internal: the caller sees E_FAIL and a generic message, never the cause.
func ProblemFor(err error) Problem {
	var je *job.Error
	if errors.As(err, &je) {
		detail := je.Detail
		if detail == "" {
			detail = je.Code.Message
		}
		return Problem{Type: "about:blank", Title: je.Code.Message, Status: je.Code.Status,
			Detail: detail, Code: je.Code.Symbol, HResult: je.Code.HResultString()}
	}
	c := job.E_FAIL
	return Problem{Type: "about:blank", Title: c.Message, Status: c.Status,
		Detail: "internal error; see the coordinator's log", Code: c.Symbol, HResult: c.HResultString()}
}

// writeProblem answers with a problem document and logs internal errors once.
func writeProblem(w http.ResponseWriter, r *http.Request, log zerolog.Logger, err error) {
	p := ProblemFor(err)
	p.Instance = r.URL.Path
	if p.Status >= 500 {
		log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("request failed")
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// maxBody bounds every request body.
const maxBody = 1 << 20

// decodeBody decodes a JSON request body strictly: one object, no unknown
// fields, no trailing data, at most maxBody bytes. Errors are E_INVALIDARG
// problems that say exactly what is wrong.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &job.Error{Code: withStatus(job.E_INVALIDARG, http.StatusUnsupportedMediaType),
			Detail: fmt.Sprintf("Content-Type %q is not application/json", ct)}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return &job.Error{Code: withStatus(job.E_INVALIDARG, http.StatusRequestEntityTooLarge),
				Detail: fmt.Sprintf("request body is larger than %d bytes", maxBody)}
		case errors.Is(err, io.EOF):
			return job.Errorf(job.E_INVALIDARG, "request body is empty: a JSON object is required")
		case errors.As(err, &syn):
			return job.Errorf(job.E_INVALIDARG, "request body is not valid JSON (at byte %d): %v", syn.Offset, syn)
		case errors.As(err, &typ):
			return job.Errorf(job.E_INVALIDARG, "field %q must be %s, not %s", typ.Field, typ.Type, typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return job.Errorf(job.E_INVALIDARG, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return job.Errorf(job.E_INVALIDARG, "request body: %v", err)
	}
	if dec.More() {
		return job.Errorf(job.E_INVALIDARG, "request body has data after the JSON object")
	}
	return nil
}

func withStatus(c job.Code, status int) job.Code { c.Status = status; return c }
