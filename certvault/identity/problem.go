package identity

import (
	"net/http"

	"github.com/ferry-dev/ferry/job/httpapi"
)

func writeProblem(w http.ResponseWriter, r *http.Request, err error) { httpapi.WriteError(w, r, err) }

var (
	writeJSON  = httpapi.WriteJSON
	withStatus = httpapi.WithStatus
)
