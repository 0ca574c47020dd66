package coordinator

import (
	"net/http"

	"github.com/ferry-dev/ferry/job/httpapi"
	"github.com/rs/zerolog"
)

// Problem is the problem document the API answers errors with.
type Problem = httpapi.Problem

// ProblemFor maps an error to its problem document.
func ProblemFor(err error) Problem { return httpapi.ProblemFor(err) }

// writeProblem answers with a problem document and logs internal errors once.
func writeProblem(w http.ResponseWriter, r *http.Request, log zerolog.Logger, err error) {
	if p := httpapi.WriteError(w, r, err); p.Status >= 500 {
		log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("request failed")
	}
}

var (
	writeJSON  = httpapi.WriteJSON
	withStatus = httpapi.WithStatus
)

func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	return httpapi.DecodeJSON(w, r, v, 0)
}
