package services_test

import (
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// TestTransfersDoNotShareConnections: the agent uses one HTTP client per
// transfer, so a connection (which may carry one job's client certificate)
// never serves another job: two consecutive jobs against the same origin
// open a connection each.
func TestTransfersDoNotShareConnections(t *testing.T) {
	s := newStack(t)
	const size = 1000
	prev := 0
	for i, name := range []string{"a.bin", "b.bin"} {
		id := s.create(events.FileSpec{RemoteURL: s.origin.URL(size), LocalName: s.dest(name)})
		j := s.until(id, "TRANSFERRED", state(job.Transferred))
		if j.Files[0].SHA256 != servicestest.Sum(size) {
			t.Fatalf("job %d: sha256 %s", i, j.Files[0].SHA256)
		}
		got := s.origin.Conns()
		if got <= prev {
			t.Fatalf("job %d opened no connection of its own (origin saw %d before it, %d after): a connection was shared between jobs", i, prev, got)
		}
		prev = got
	}
}
