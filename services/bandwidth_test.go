package services_test

import (
	"errors"

	"github.com/ferry-dev/ferry/services"
	"reflect"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
)

// TestBandwidthAtRunTime: an administrator changes a pool's limits through
// the API and the running agent applies them, with no restart.
func TestBandwidthAtRunTime(t *testing.T) {
	s := startStack(t)
	ctx := t.Context()
	if b, err := s.client.Bandwidth(ctx, "default"); err != nil || b.Total != 0 || len(b.Class) != 0 {
		t.Fatalf("initial limits %+v, %v", b, err)
	}
	want := dispatch.Bandwidth{Total: 50 << 20, Class: map[job.Priority]int64{job.Low: 1 << 20, job.Normal: 8 << 20}}
	if _, err := s.client.SetBandwidth(ctx, "default", want); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !reflect.DeepEqual(s.dev.Agent().Bandwidth(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("agent limits %+v, want %+v", s.dev.Agent().Bandwidth(), want)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not timing
	}
	if got, err := s.client.Bandwidth(ctx, "default"); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("read back %+v, %v", got, err)
	}
	// Lifting the limits: the agent goes back to unlimited.
	if _, err := s.client.SetBandwidth(ctx, "default", dispatch.Bandwidth{}); err != nil {
		t.Fatal(err)
	}
	for b := s.dev.Agent().Bandwidth(); b.Total != 0 || len(b.Class) != 0; b = s.dev.Agent().Bandwidth() {
		if time.Now().After(deadline) {
			t.Fatalf("limits not lifted: %+v", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Bad input is refused and changes nothing.
	_, err := s.client.SetBandwidth(ctx, "default", dispatch.Bandwidth{Total: -1})
	if code := apiCode(err); code != "E_INVALIDARG" {
		t.Fatalf("negative rate: %v", err)
	}
	_, err = s.client.SetBandwidth(ctx, "default", dispatch.Bandwidth{Class: map[job.Priority]int64{"URGENT": 1}})
	if code := apiCode(err); code != "E_INVALIDARG" {
		t.Fatalf("unknown class: %v", err)
	}
}

func apiCode(err error) string {
	var e *services.APIError
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}
