package services

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// EventQuery selects the events of GET /v1/events. The zero value is every
// event the caller may see, up to the end of the log.
type EventQuery struct {
	Job   string
	Types []string
	Agent string
	// Since is an RFC 3339 time, passed on as given (the coordinator checks
	// it); FromSeq a stream sequence. At most one of them.
	Since   string
	FromSeq uint64
	// Follow keeps the stream open for new events.
	Follow bool
}

func (q EventQuery) values() url.Values {
	v := url.Values{}
	if q.Job != "" {
		v.Set("job", q.Job)
	}
	for _, t := range q.Types {
		v.Add("type", t)
	}
	if q.Agent != "" {
		v.Set("agent", q.Agent)
	}
	if q.Since != "" {
		v.Set("since", q.Since)
	}
	if q.FromSeq > 0 {
		v.Set("from_seq", strconv.FormatUint(q.FromSeq, 10))
	}
	if q.Follow {
		v.Set("follow", "true")
	}
	return v
}

// EventLog streams GET /v1/events: fn gets every event, with its sequence,
// in stream order. Without Follow it returns nil at the end the log had
// when the stream started; with Follow it goes on until ctx ends. fn may
// end it early with ErrStop (EventLog returns nil) or another error (which
// it returns). A connection that drops is resumed right after the last
// event with Last-Event-ID, so nothing is missed or shown twice.
func (c *Client) EventLog(ctx context.Context, q EventQuery, fn func(events.Event) error) error {
	return c.followEvents(ctx, "/v1/events?"+q.values().Encode(), 0, fn)
}

// followEvents reads the event stream at path (GET /v1/events, or a job's
// GET /v1/jobs/{id}/events) from after sequence after, reconnecting with
// Last-Event-ID and a growing backoff whenever the connection drops. It
// returns nil at the stream's "end" event or when fn returns ErrStop,
// ctx's error when ctx ends, and any other error of fn or of the
// coordinator (a problem document) as it is.
func (c *Client) followEvents(ctx context.Context, path string, after uint64, fn func(events.Event) error) error {
	backoff := 100 * time.Millisecond
	for {
		err := c.eventsOnce(ctx, path, &after, fn)
		switch {
		case err == nil, errors.Is(err, ErrStop):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case !isTransport(err):
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// eventsOnce reads one response, moving *after past every event fn took.
// It returns nil after the stream's "end" event and a transportError when
// the response ends without one.
func (c *Client) eventsOnce(ctx context.Context, path string, after *uint64, fn func(events.Event) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if *after > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(*after, 10))
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return transportError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeProblem(resp)
	}
	return readSSE(resp.Body, func(id, name string, data []byte) error {
		if name == "end" {
			return ErrStop
		}
		seq, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			return errors.New("coordinator sent an event without a sequence")
		}
		ev, err := events.Unmarshal(data)
		if err != nil {
			return err
		}
		ev.Seq = seq
		if err := fn(ev); err != nil {
			return err
		}
		*after = seq
		return nil
	})
}

// readSSE calls fn for every message of a server-sent event stream (its
// id, event name and data; comments skipped) until the stream ends, which
// is a transportError, or fn returns an error, which it returns.
func readSSE(r io.Reader, fn func(id, name string, data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var id, name string
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if data != nil || name != "" {
				if err := fn(id, name, data); err != nil {
					return err
				}
			}
			id, name, data = "", "", nil
		case line[0] == ':':
		case bytes.HasPrefix(line, []byte("id: ")):
			id = string(line[4:])
		case bytes.HasPrefix(line, []byte("event: ")):
			name = string(line[7:])
		case bytes.HasPrefix(line, []byte("data: ")):
			data = append(data[:0:0], line[6:]...)
		}
	}
	if err := sc.Err(); err != nil {
		return transportError{err}
	}
	return transportError{io.ErrUnexpectedEOF}
}
