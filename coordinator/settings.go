package coordinator

import (
	"net/http"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
)

// getBandwidth answers GET /v1/pools/{pool}/bandwidth: the limits the pool's
// agents apply (zero values: none).
func (s *Service) getBandwidth(w http.ResponseWriter, r *http.Request, _ caller) error {
	pool := r.PathValue("pool")
	if !events.ValidID(pool) {
		return job.Errorf(job.E_INVALIDARG, "pool %q is not valid", pool)
	}
	b, err := dispatch.GetBandwidth(r.Context(), s.settings, pool)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, b)
	return nil
}

// putBandwidth answers PUT /v1/pools/{pool}/bandwidth (administrators only):
// the pool's agents apply the new limits to running transfers at once.
func (s *Service) putBandwidth(w http.ResponseWriter, r *http.Request, c caller) error {
	if !c.admin() {
		return job.Errorf(job.E_ACCESSDENIED, "only administrators may change bandwidth limits")
	}
	pool := r.PathValue("pool")
	if !events.ValidID(pool) {
		return job.Errorf(job.E_INVALIDARG, "pool %q is not valid", pool)
	}
	var b dispatch.Bandwidth
	if err := decodeBody(w, r, &b); err != nil {
		return err
	}
	if err := b.Validate(); err != nil {
		return job.Errorf(job.E_INVALIDARG, "%v", err)
	}
	if err := dispatch.PutBandwidth(r.Context(), s.settings, pool, b); err != nil {
		return err
	}
	s.log.Info().Str("pool", pool).Str("by", c.Principal).Int64("total_bps", b.Total).Interface("class_bps", b.Class).Msg("bandwidth limits changed")
	writeJSON(w, http.StatusOK, b)
	return nil
}
