package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// TestAgentList: the dev stack's agent registers; an administrator sees it
// alive with its pool and slots, as a table and as JSON.
func TestAgentList(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	startStack(t, dataDir, root, o.CAFile)
	deadline := time.Now().Add(30 * time.Second)
	var r coordinator.AgentsResponse
	for {
		out, code := ferry(t, dataDir, "agent", "list", "-o", "json")
		if code != 0 {
			t.Fatalf("agent list exited %d: %s", code, out)
		}
		r = coordinator.AgentsResponse{}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("agent list -o json: %v: %s", err, out)
		}
		if len(r.Agents) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents %+v: the dev agent never registered", r)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not timing
	}
	a := r.Agents[0]
	if a.State != "alive" || a.Pool != "default" || a.Slots < 1 || a.ID == "" || !strings.HasSuffix(a.Principal, "/agent/"+a.ID) {
		t.Fatalf("agent %+v", a)
	}
	out, code := ferry(t, dataDir, "agent", "list")
	if code != 0 || !strings.Contains(out, a.ID) || !strings.Contains(out, "alive") {
		t.Fatalf("agent list: exit %d\n%s", code, out)
	}
}
