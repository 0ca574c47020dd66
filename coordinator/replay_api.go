package coordinator

import "net/http"

// replayRoutes registers the replay and export/import API.
func (s *Service) replayRoutes(mux *http.ServeMux) {}
