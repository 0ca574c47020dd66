package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"
)

// minBurst lets a limited transfer still read a useful chunk per wait.
const minBurst = 256 << 10

// limiters holds one token bucket for the agent and one per class. They
// always exist (rate.Inf when unlimited) so that a running transfer sees a
// change at its next chunk.
type limiters struct {
	total *rate.Limiter
	class map[job.Priority]*rate.Limiter
}

func newLimiters() *limiters {
	l := &limiters{total: rate.NewLimiter(rate.Inf, minBurst), class: map[job.Priority]*rate.Limiter{}}
	for _, p := range []job.Priority{job.Foreground, job.High, job.Normal, job.Low} {
		l.class[p] = rate.NewLimiter(rate.Inf, minBurst)
	}
	return l
}

func setRate(l *rate.Limiter, bps int64) {
	if bps <= 0 {
		l.SetLimit(rate.Inf)
		l.SetBurst(minBurst)
		return
	}
	l.SetLimit(rate.Limit(bps))
	l.SetBurst(int(min(max(bps/4, minBurst), math.MaxInt32)))
}

// SetBandwidth changes the agent's limits; running transfers follow from
// their next chunk.
func (a *Agent) SetBandwidth(b dispatch.Bandwidth) error {
	if err := b.Validate(); err != nil {
		return fmt.Errorf("agent: bandwidth: %w", err)
	}
	setRate(a.limits.total, b.Total)
	for p, l := range a.limits.class {
		setRate(l, b.Class[p])
	}
	a.log.Info().Int64("total_bps", b.Total).Interface("class_bps", b.Class).Msg("bandwidth limits set")
	return nil
}

// Bandwidth reports the limits in force.
func (a *Agent) Bandwidth() dispatch.Bandwidth {
	bps := func(l *rate.Limiter) int64 {
		if l.Limit() == rate.Inf {
			return 0
		}
		return int64(l.Limit())
	}
	b := dispatch.Bandwidth{Total: bps(a.limits.total)}
	for p, l := range a.limits.class {
		if r := bps(l); r > 0 {
			if b.Class == nil {
				b.Class = map[job.Priority]int64{}
			}
			b.Class[p] = r
		}
	}
	return b
}

// limiter is the limiter of a transfer of priority p.
func (a *Agent) limiter(p job.Priority) download.Limiter {
	c := a.limits.class[p]
	if c == nil {
		c = a.limits.class[job.Normal]
	}
	return download.CombineLimiters(a.limits.total, c)
}

// watchBandwidth applies the pool's bandwidth setting whenever it changes.
func (a *Agent) watchBandwidth(ctx context.Context) error {
	kv, err := dispatch.EnsureSettingsBucket(ctx, a.js)
	if err != nil {
		return err
	}
	w, err := kv.Watch(ctx, dispatch.BandwidthKey(a.cfg.Pool))
	if err != nil {
		return fmt.Errorf("agent: watch bandwidth: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil { // initial values delivered
				continue
			}
			var b dispatch.Bandwidth
			if e.Operation() == jetstream.KeyValuePut {
				if err := json.Unmarshal(e.Value(), &b); err != nil {
					a.log.Warn().Err(err).Msg("ignoring a bandwidth setting that is not valid JSON")
					continue
				}
			}
			if err := a.SetBandwidth(b); err != nil {
				a.log.Warn().Err(err).Msg("ignoring an invalid bandwidth setting")
			}
		}
	}
}
