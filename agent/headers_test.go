package agent

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

func TestWithWriteOnly(t *testing.T) {
	plain := customHeaders([]string{"Authorization: plain", "X-Trace: 1"})
	h := withWriteOnly(plain, []string{"Authorization: Bearer s", "Cookie: a=1", "Cookie: b=2"})
	if got := h.Values("Authorization"); !slices.Equal(got, []string{"Bearer s"}) {
		t.Errorf("Authorization %q: the write-only value must replace the plain one", got)
	}
	if got := h.Values("Cookie"); !slices.Equal(got, []string{"a=1", "b=2"}) {
		t.Errorf("Cookie %q", got)
	}
	if h.Get("X-Trace") != "1" {
		t.Error("a plain header of another name was lost")
	}
	if plain.Get("Authorization") != "plain" {
		t.Error("withWriteOnly changed its argument")
	}
	if got := withWriteOnly(nil, []string{"X-Api-Key: k"}); got.Get("X-Api-Key") != "k" {
		t.Errorf("no plain headers: %v", got)
	}
	if got := withWriteOnly(http.Header{"A": {"1"}}, nil); got.Get("A") != "1" {
		t.Errorf("no write-only headers: %v", got)
	}
}

type fakeHeaders struct {
	calls int
	lines []string
	err   error
}

func (f *fakeHeaders) ReleaseHeaders(context.Context, string) ([]string, error) {
	f.calls++
	return f.lines, f.err
}

// TestHeaderSource: one release per lease (and per set of names); refusals
// fail the transfer like an unreleased certificate, transient when
// certvault is unavailable; no certvault at all is transient too.
func TestHeaderSource(t *testing.T) {
	ctx := context.Background()
	f := &fakeHeaders{lines: []string{"X-Api-Key: k"}}
	a := &Agent{cfg: Config{WriteOnlyHeaders: f}}
	j := &job.Job{ID: "j1", Attempt: 1, Options: events.JobOptions{WriteOnlyHeaders: []string{"X-Api-Key"}}}
	h := a.writeOnlyHeadersFor(j)
	for range 3 {
		if lines, err := h.get(ctx, j); err != nil || !slices.Equal(lines, f.lines) {
			t.Fatalf("get: %q %v", lines, err)
		}
	}
	if f.calls != 1 {
		t.Fatalf("%d releases in one lease, want 1", f.calls)
	}
	j.Attempt = 2 // a new lease (after a yield)
	_, _ = h.get(ctx, j)
	j.Options.WriteOnlyHeaders = []string{"X-Other"} // the owner changed them
	_, _ = h.get(ctx, j)
	if f.calls != 3 {
		t.Fatalf("%d releases, want 3", f.calls)
	}

	for _, tc := range []struct {
		err       error
		code      job.Code
		transient bool
	}{
		{job.Errorf(job.E_ACCESSDENIED, "the agent does not hold the job's lease"), job.E_ACCESSDENIED, false},
		{job.Errorf(job.ERROR_NOT_FOUND, "the job has no write-only custom headers"), job.ERROR_NOT_FOUND, false},
		{job.Errorf(job.ERROR_SERVICE_UNAVAILABLE, "audit"), job.ERROR_SERVICE_UNAVAILABLE, true},
		{errors.New("dial tcp: connection refused"), job.ERROR_SERVICE_UNAVAILABLE, true},
	} {
		f := &fakeHeaders{err: tc.err}
		h := (&Agent{cfg: Config{WriteOnlyHeaders: f}}).writeOnlyHeadersFor(j)
		_, err := h.get(ctx, j)
		var fl *download.Failure
		if !errors.As(err, &fl) || fl.Code != tc.code || fl.Transient != tc.transient || fl.Context != job.ContextRemoteFile {
			t.Errorf("%v: %v", tc.err, err)
		}
	}
	var none *headerSource // an agent without certvault
	_, err := none.get(ctx, j)
	var fl *download.Failure
	if !errors.As(err, &fl) || fl.Code != job.ERROR_SERVICE_UNAVAILABLE || !fl.Transient {
		t.Errorf("no certvault: %v", err)
	}
}
