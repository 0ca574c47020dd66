package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
)

// Bandwidth limits the downloads of each agent of a pool, in bytes per
// second; 0 means no limit. Total bounds all of an agent's transfers
// together, Class each priority class's transfers together; a transfer
// waits on both. Agents apply a change from their next read.
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
		if q, err := job.ParsePriority(string(p)); err != nil || p == "" || q != p {
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

// EnsureSettingsBucket opens (creating if needed) the settings bucket.
func EnsureSettingsBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: SettingsBucket, History: 5,
		Description: "ferry run-time settings (bandwidth limits per pool)"})
	if err != nil {
		return nil, fmt.Errorf("settings bucket: %w", err)
	}
	return kv, nil
}

// GetBandwidth reads a pool's limits (zero: none set).
func GetBandwidth(ctx context.Context, kv jetstream.KeyValue, pool string) (Bandwidth, error) {
	var b Bandwidth
	e, err := kv.Get(ctx, BandwidthKey(pool))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return b, nil
	case err != nil:
		return b, fmt.Errorf("bandwidth of pool %s: %w", pool, err)
	}
	err = json.Unmarshal(e.Value(), &b)
	return b, err
}

// PutBandwidth stores a pool's limits; the pool's agents apply them.
func PutBandwidth(ctx context.Context, kv jetstream.KeyValue, pool string, b Bandwidth) error {
	if err := b.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, BandwidthKey(pool), data)
	return err
}
