//go:build goldenrecord

package events_test

// The recorder of the agent events in testdata/golden/events, beside
// golden_record_test.go (whose helpers it uses): run
//
//	go test -tags goldenrecord ./events/ -run TestRecordGolden -record

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// agentEvents are host-a's sessions: it joins, a coordinator sees it expire,
// it joins again and leaves gracefully.
func agentEvents(t *testing.T) []events.Event {
	at := t0.Add(-time.Hour)
	var out []events.Event
	add := func(d time.Duration, actor string, p events.Payload) {
		at = at.Add(d)
		ev, err := events.New(events.KindAgent, hostA, events.Meta{Time: at, Actor: actor}, p)
		if err != nil {
			t.Fatal(err)
		}
		ev.ID = uuidV7(at, 10<<40|1<<32|uint64(len(out)+1))
		out = append(out, ev)
	}
	joined := &events.AgentJoined{Agent: hostA, Principal: agentPrincipal(hostA), Pool: "edge", Version: "v0.9.0 3f1c2a9b7d4e", Slots: 4}
	add(0, agentPrincipal(hostA), joined)
	add(26*time.Minute, clock, &events.AgentLeft{Agent: hostA, Reason: events.AgentLeftExpired})
	add(4*time.Minute, agentPrincipal(hostA), joined)
	add(20*time.Hour, agentPrincipal(hostA), &events.AgentLeft{Agent: hostA, Reason: events.AgentLeftGraceful})
	return out
}

func TestRecordGoldenAgents(t *testing.T) {
	if !*record {
		t.Skip("-record not set")
	}
	seen := map[string]bool{}
	for _, ev := range agentEvents(t) {
		if seen[ev.Type] {
			continue // one envelope of every type and version: the first one
		}
		seen[ev.Type] = true
		b, err := events.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		writeOnce(t, filepath.Join(goldenDir, "events", ev.Type+".v1.json"), append(b, '\n'))
	}
}
