package identity

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/ferry-dev/ferry/job"
)

// problem is the RFC 9457 document ferry servers answer errors with, in the
// shape coordinator.ProblemFor produces (identity may not import
// coordinator): the extension members code (symbol) and hresult.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	Code     string `json:"code"`
	HResult  string `json:"hresult"`
}

// writeProblem answers with err as problem+json. Errors without a code are
// internal: the caller sees E_FAIL and a generic detail, never the cause.
func writeProblem(w http.ResponseWriter, r *http.Request, err error) {
	p := problem{Type: "about:blank", Instance: r.URL.Path}
	var je *job.Error
	if errors.As(err, &je) {
		p.Title, p.Status, p.Code, p.HResult = je.Code.Message, je.Code.Status, je.Code.Symbol, je.Code.HResultString()
		p.Detail = je.Detail
		if p.Detail == "" {
			p.Detail = je.Code.Message
		}
	} else {
		c := job.E_FAIL
		p.Title, p.Status, p.Code, p.HResult = c.Message, c.Status, c.Symbol, c.HResultString()
		p.Detail = "internal error; see the server's log"
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func withStatus(c job.Code, status int) job.Code { c.Status = status; return c }
