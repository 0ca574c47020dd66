package services

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/ferry-dev/ferry/coordinator"
)

func writeOnlyPath(id string) string {
	return strings.Replace(coordinator.WriteOnlyHeadersPath, "{id}", url.PathEscape(id), 1)
}

// MakeHeadersWriteOnly is MakeCustomHeadersWriteOnly: headers ("Name:
// value" lines) become the job's write-only custom headers, or, when none
// are given, the job's plain custom headers do. The values go to certvault;
// the job shows their names only (owner only).
func (c *Client) MakeHeadersWriteOnly(ctx context.Context, id string, headers []string) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	var body any
	if len(headers) > 0 {
		body = coordinator.WriteOnlyHeadersRequest{Headers: headers}
	}
	return r, c.do(ctx, http.MethodPost, writeOnlyPath(id), body, &r)
}

// ClearWriteOnlyHeaders removes the job's write-only custom headers and
// deletes their values from certvault: S_FALSE when it had none.
func (c *Client) ClearWriteOnlyHeaders(ctx context.Context, id string) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	return r, c.do(ctx, http.MethodDelete, writeOnlyPath(id), nil, &r)
}
