// Package httpapi owns the HTTP edge that ferry's servers (coordinator,
// certvault) share: errors of the job vocabulary as RFC 9457 problem
// documents with the extension members code and hresult, JSON answers, and
// strict decoding of JSON request bodies.
//
// It imports job only.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ferry-dev/ferry/job"
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

// ProblemFor maps an error to its problem document. Errors that carry no
// code are internal: the caller sees E_FAIL and a generic message, never the
// cause.
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
		Detail: "internal error; see the server's log", Code: c.Symbol, HResult: c.HResultString()}
}

// WriteProblem answers with p.
func WriteProblem(w http.ResponseWriter, r *http.Request, p Problem) {
	if p.Instance == "" {
		p.Instance = r.URL.Path
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// WriteError answers with err's problem document and returns it.
func WriteError(w http.ResponseWriter, r *http.Request, err error) Problem {
	p := ProblemFor(err)
	WriteProblem(w, r, p)
	return p
}

// WriteJSON answers with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WithStatus is c answered with another HTTP status.
func WithStatus(c job.Code, status int) job.Code { c.Status = status; return c }

// DefaultMaxBody bounds request bodies when DecodeJSON is given 0.
const DefaultMaxBody = 1 << 20

// DecodeJSON decodes a JSON request body strictly: one object, no unknown
// fields, no trailing data, at most maxBody bytes (0: DefaultMaxBody).
// Errors are E_INVALIDARG job errors that say exactly what is wrong.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any, maxBody int64) error {
	if maxBody <= 0 {
		maxBody = DefaultMaxBody
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &job.Error{Code: WithStatus(job.E_INVALIDARG, http.StatusUnsupportedMediaType),
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
			return &job.Error{Code: WithStatus(job.E_INVALIDARG, http.StatusRequestEntityTooLarge),
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
