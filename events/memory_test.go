package events_test

import (
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
)

func TestMemoryStore(t *testing.T) {
	eventstest.RunConformance(t, func(*testing.T) events.Store { return events.NewMemoryStore() })
}

func TestSubjectFilters(t *testing.T) {
	// Filters as the memory store matches them, checked against the
	// semantics NATS documents.
	for _, c := range []struct {
		filter, subject string
		want            bool
	}{
		{"ferry.evt.job.a", "ferry.evt.job.a", true},
		{"ferry.evt.job.a", "ferry.evt.job.b", false},
		{"ferry.evt.job.*", "ferry.evt.job.a", true},
		{"ferry.evt.*.a", "ferry.evt.job.a", true},
		{"ferry.evt.*.a", "ferry.evt.job.b", false},
		{"ferry.evt.*", "ferry.evt.job.a", false},
		{"ferry.evt.>", "ferry.evt.job.a", true},
		{"ferry.evt.job.>", "ferry.evt.job", false},
		{"ferry.>", "ferry.evt.job.a", true},
		{">", "ferry.evt.job.a", true},
		{"*.*.*.*", "ferry.evt.job.a", true},
		{"*.*.*", "ferry.evt.job.a", false},
		{"ferry.evt.job.a.b", "ferry.evt.job.a", false},
	} {
		if got := events.SubjectMatches(c.filter, c.subject); got != c.want {
			t.Errorf("SubjectMatches(%q, %q) = %v, want %v", c.filter, c.subject, got, c.want)
		}
	}
}
