package services

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"

	"github.com/ferry-dev/ferry/coordinator"
)

// Projections reports each projection: its current generation and bucket,
// the coordinators reading each bucket, and a verify or rebuild running
// (administrators only).
func (c *Client) Projections(ctx context.Context) (coordinator.ProjectionsResponse, error) {
	var r coordinator.ProjectionsResponse
	return r, c.do(ctx, http.MethodGet, "/v1/admin/projections", nil, &r)
}

// VerifyProjections replays the log into a scratch bucket on the
// coordinator and compares it with the live read model (administrators
// only). progress, if set, gets the coordinator's progress reports.
func (c *Client) VerifyProjections(ctx context.Context, req coordinator.VerifyRequest, progress func(coordinator.ProjectionProgress)) (coordinator.VerifyReport, error) {
	var r coordinator.VerifyReport
	return r, c.longOp(ctx, "/v1/admin/projections/verify", req, progress, &r)
}

// RebuildProjection builds a new generation of projection name from the
// log and switches every coordinator to it (administrators only).
func (c *Client) RebuildProjection(ctx context.Context, name string, req coordinator.RebuildRequest, progress func(coordinator.ProjectionProgress)) (coordinator.RebuildReport, error) {
	var r coordinator.RebuildReport
	return r, c.longOp(ctx, "/v1/admin/projections/"+url.PathEscape(name)+"/rebuild", req, progress, &r)
}

// longOp posts in to path asking for a progress stream, and decodes the
// result into out.
func (c *Client) longOp(ctx context.Context, path string, in any, progress func(coordinator.ProjectionProgress), out any) error {
	resp, err := c.sendJSON(ctx, http.MethodPost, path, coordinator.NDJSON+", application/json", in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != coordinator.NDJSON {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var l coordinator.ProjectionLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("coordinator sent a bad progress line: %w", err)
		}
		switch {
		case l.Error != nil:
			return &APIError{*l.Error}
		case l.Result != nil:
			return json.Unmarshal(l.Result, out)
		case l.Progress != nil && progress != nil:
			progress(*l.Progress)
		}
	}
	err = sc.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("the coordinator's answer ended before the result (the operation may have finished: look with `ferry replay verify`): %w", err)
}
