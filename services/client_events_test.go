package services

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
)

// TestClientEventStreams: a job's events (Events) and the log
// (EventLog) are read by one SSE reader: keep-alive comments are skipped,
// a connection that drops is resumed with Last-Event-ID after the last
// event fn took (nothing twice, nothing missed), the log's "end" event
// ends EventLog cleanly, and a problem document is returned, not retried.
func TestClientEventStreams(t *testing.T) {
	var evs [][]byte
	for i := 1; i <= 4; i++ {
		ev, err := events.New(events.KindJob, "j1", events.Meta{Time: time.Unix(int64(i), 0)}, &events.JobQueued{Reason: "resume"})
		if err != nil {
			t.Fatal(err)
		}
		one := []events.Event{ev}
		if err := events.AssignIDs(one); err != nil {
			t.Fatal(err)
		}
		b, err := events.Marshal(&one[0])
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, b)
	}
	var mu sync.Mutex
	var resumes []string // Last-Event-ID of every request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/jobs/gone/events" {
			httpapi.WriteError(w, r, job.Errorf(job.BG_E_NOT_FOUND, "no job gone"))
			return
		}
		mu.Lock()
		resumes = append(resumes, r.Header.Get("Last-Event-ID"))
		mu.Unlock()
		after, _ := strconv.Atoi(r.Header.Get("Last-Event-ID"))
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, ": keep-alive\n\n")
		// Two events per connection, then the connection drops; the log
		// (not a job's stream) ends with "end" after the last one.
		for seq := after + 1; seq <= len(evs) && seq <= after+2; seq++ {
			fmt.Fprintf(w, "id: %d\nevent: JobQueued\ndata: %s\n\n", seq, evs[seq-1])
			if seq == len(evs) && r.URL.Path == "/v1/events" {
				fmt.Fprint(w, "event: end\ndata: {\"end_seq\":4}\n\n")
			}
		}
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var seqs []uint64
	err := c.Events(ctx, "j1", 0, func(ev events.Event) error {
		seqs = append(seqs, ev.Seq)
		if ev.Seq == 3 {
			return ErrStop
		}
		return nil
	})
	if err != nil || fmt.Sprint(seqs) != "[1 2 3]" || fmt.Sprint(resumes) != "[ 2]" {
		t.Fatalf("Events: %v, seqs %v, Last-Event-IDs %q", err, seqs, resumes)
	}

	seqs, resumes = nil, nil
	err = c.EventLog(ctx, EventQuery{}, func(ev events.Event) error {
		seqs = append(seqs, ev.Seq)
		return nil
	})
	if err != nil || fmt.Sprint(seqs) != "[1 2 3 4]" || fmt.Sprint(resumes) != "[ 2]" {
		t.Fatalf("EventLog: %v, seqs %v, Last-Event-IDs %q", err, seqs, resumes)
	}

	boom := errors.New("boom")
	if err := c.Events(ctx, "j1", 1, func(events.Event) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn's error: %v", err)
	}
	var apiErr *APIError
	if err := c.Events(ctx, "gone", 0, func(events.Event) error { return nil }); !errors.As(err, &apiErr) || apiErr.Code != job.BG_E_NOT_FOUND.Symbol {
		t.Fatalf("a problem document: %v", err)
	}
}
