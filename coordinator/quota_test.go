package coordinator_test

import (
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
)

// TestJobsPerUserLimit: a user with MaxJobsPerUser unfinished jobs gets
// BG_E_TOO_MANY_JOBS_PER_USER and no job; finishing one makes room;
// administrators are exempt; other users have their own count.
func TestJobsPerUserLimit(t *testing.T) {
	e := newEnvWith(t, false, func(c *coordinator.Config) { c.Limits.MaxJobsPerUser = 2 })
	first := e.create(`{"display_name":"1"}`)
	e.create(`{"display_name":"2"}`)
	// The count comes from the read model: wait until it shows both.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body, _ := e.do("POST", "/v1/jobs", `{"display_name":"3"}`)
		if code == 429 {
			if body["code"] != "BG_E_TOO_MANY_JOBS_PER_USER" || body["hresult"] != "0x80200049" {
				t.Fatalf("refusal: %v", body)
			}
			break
		}
		if code != 201 || time.Now().After(deadline) {
			t.Fatalf("third job: %d %v", code, body)
		}
		// The projection had not caught up: that job counts too now.
		e.do("POST", "/v1/jobs/"+body["id"].(string)+"/cancel", "")
		time.Sleep(10 * time.Millisecond) // polling a condition, not timing
	}
	admin := e.as(identity.RoleAdmin, "root")
	for i := range 3 {
		if code, body, _ := e.doAs(admin, "POST", "/v1/jobs", `{"display_name":"admin"}`); code != 201 {
			t.Fatalf("admin job %d: %d %v", i, code, body)
		}
	}
	bob := e.as(identity.RoleUser, "bob")
	if code, body, _ := e.doAs(bob, "POST", "/v1/jobs", `{"display_name":"bob"}`); code != 201 {
		t.Fatalf("bob: %d %v", code, body)
	}
	// A cancelled job no longer counts.
	if code, body, _ := e.do("POST", "/v1/jobs/"+first+"/cancel", ""); code != 200 {
		t.Fatalf("cancel: %d %v", code, body)
	}
	for {
		code, body, _ := e.do("POST", "/v1/jobs", `{"display_name":"again"}`)
		if code == 201 {
			break
		}
		if code != 429 || time.Now().After(deadline) {
			t.Fatalf("after a cancel: %d %v", code, body)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not timing
	}
}
