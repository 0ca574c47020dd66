package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/job/history"
)

// History returns job id's state at p (the zero Point: now) and its
// timeline up to there.
func (c *Client) History(ctx context.Context, id string, p history.Point) (coordinator.HistoryResponse, error) {
	var h coordinator.HistoryResponse
	q := url.Values{}
	if p.Seq != 0 {
		q.Set("seq", strconv.FormatUint(p.Seq, 10))
	}
	if !p.Time.IsZero() {
		q.Set("at", p.Time.Format(time.RFC3339Nano))
	}
	path := "/v1/jobs/" + url.PathEscape(id) + "/history"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return h, c.do(ctx, http.MethodGet, path, nil, &h)
}

// ExportOptions select what Export exports: events whose time is at or
// after Since (zero: all), of the kinds listed (job, agent, vault; none:
// all).
type ExportOptions struct {
	Since time.Time
	Kinds []string
}

// ErrExportIncomplete means the coordinator ended an export before its end.
var ErrExportIncomplete = errors.New("the export was cut short")

// Export writes the coordinator's event log as NDJSON to w (see
// history.EncodeLine) and returns how many events it wrote. An export the
// coordinator could not finish is an error wrapping ErrExportIncomplete,
// after w got what came.
func (c *Client) Export(ctx context.Context, w io.Writer, o ExportOptions) (int, error) {
	q := url.Values{}
	if !o.Since.IsZero() {
		q.Set("since", o.Since.Format(time.RFC3339Nano))
	}
	if len(o.Kinds) > 0 {
		q.Set("kind", strings.Join(o.Kinds, ","))
	}
	path := "/v1/events/export"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", coordinator.ContentTypeNDJSON)
	resp, err := c.send(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, decodeProblem(resp)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("%w after %d bytes: %v", ErrExportIncomplete, n, err)
	}
	count := resp.Trailer.Get(coordinator.ExportEventsTrailer)
	events, err := strconv.Atoi(count)
	if err != nil {
		return 0, fmt.Errorf("%w after %d bytes (no %s trailer): see the coordinator's log", ErrExportIncomplete, n, coordinator.ExportEventsTrailer)
	}
	return events, nil
}

// Import sends an export (NDJSON) to the coordinator, which appends the
// events it does not have yet. A refused line is an *APIError whose detail
// names the line and what was imported before it.
func (c *Client) Import(ctx context.Context, r io.Reader) (coordinator.ImportResult, error) {
	var res coordinator.ImportResult
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/v1/events/import", r)
	if err != nil {
		return res, err
	}
	req.Header.Set("Content-Type", coordinator.ContentTypeNDJSON)
	req.Header.Set("Accept", "application/json")
	resp, err := c.send(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return res, decodeProblem(resp)
	}
	return res, json.NewDecoder(resp.Body).Decode(&res)
}
