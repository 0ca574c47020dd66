package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"
)

// Bandwidth limits an agent's downloads in bytes per second; 0 means no
// limit. Total bounds all transfers together, Class each priority class's
// transfers together; a transfer waits on both.
type Bandwidth struct {
	Total int64                  `json:"total_bps,omitempty"`
	Class map[job.Priority]int64 `json:"class_bps,omitempty"`
}

// Validate refuses negative rates and unknown classes.
func (b Bandwidth) Validate() error {
	var errs []error
	if b.Total < 0 {
		errs = append(errs, fmt.Errorf("total rate %d is negative", b.Total))
	}
	for p, r := range b.Class {
		if _, err := job.ParsePriority(string(p)); err != nil || p == "" {
			errs = append(errs, fmt.Errorf("unknown priority class %q", p))
		}
		if r < 0 {
			errs = append(errs, fmt.Errorf("%s rate %d is negative", p, r))
		}
	}
	return errors.Join(errs...)
}

// SettingsBucket is the KV bucket of run-time settings agents watch; the
// bandwidth of the agents of pool P is the JSON Bandwidth at key
// BandwidthKey(P).
const SettingsBucket = "ferry_settings"

// BandwidthKey is the settings key of a pool's bandwidth limits.
func BandwidthKey(pool string) string { return "bandwidth." + pool }

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
func (a *Agent) SetBandwidth(b Bandwidth) error {
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
	kv, err := EnsureSettingsBucket(ctx, a.js)
	if err != nil {
		return err
	}
	w, err := kv.Watch(ctx, BandwidthKey(a.cfg.Pool))
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
			var b Bandwidth
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

// EnsureSettingsBucket opens (creating if needed) the settings bucket.
func EnsureSettingsBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: SettingsBucket, History: 5,
		Description: "ferry run-time settings (bandwidth limits per pool)"})
	if err != nil {
		return nil, fmt.Errorf("settings bucket: %w", err)
	}
	return kv, nil
}
