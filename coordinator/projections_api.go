package coordinator

import "net/http"

// projectionRoutes registers the projection verify/rebuild API.
func (s *Service) projectionRoutes(mux *http.ServeMux) {}
