package coordinator

import "net/http"

// eventRoutes registers the event-stream API (GET /v1/events).
func (s *Service) eventRoutes(mux *http.ServeMux) {}
