package services

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
)

// Client talks to a coordinator's HTTP API.
type Client struct {
	BaseURL string
	HTTP    *http.Client
	// Source says where BaseURL came from, for error messages.
	Source string
}

// APIError is a problem document returned by the coordinator.
type APIError struct{ coordinator.Problem }

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%s): %s", e.Code, e.HResult, e.Detail)
}

// ErrNoCoordinator means no coordinator address was configured or found.
var ErrNoCoordinator = errors.New("no coordinator found")

// Discover finds the coordinator and the identity to present: the address
// from cfg.Addr, FERRY_ADDR or the dev stack's dev.json; the credentials
// from cfg or the data directory's credentials (see ClientConfig).
func Discover(cfg ClientConfig) (*Client, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir()
	}
	env, flag := "FERRY_ADDR", "--addr"
	if cfg.Service == "certvault" {
		env, flag = "FERRY_VAULT_ADDR", "--vault-addr"
	}
	addr, source := cfg.Addr, flag
	if addr == "" {
		addr, source = os.Getenv(env), env
	}
	if addr == "" {
		info, err := ReadDevInfo(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("%w: no %s or %s, and no running `ferry dev` recorded in %s", ErrNoCoordinator, flag, env, cfg.DataDir)
		}
		addr, source = info.CoordinatorURL, "the `ferry dev` recorded in "+filepath.Join(cfg.DataDir, DevInfoFile)
		if cfg.Service == "certvault" {
			addr = info.CertvaultURL
		}
	}
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	return &Client{
		BaseURL: strings.TrimSuffix(addr, "/"),
		HTTP:    &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}},
		Source:  source,
	}, nil
}

// Session asks the coordinator what it received from this client: the
// analog of HttpReceiveClientCertificate.
func (c *Client) Session(ctx context.Context, channelBinding bool) (identity.ClientCertInfo, error) {
	var info identity.ClientCertInfo
	path := identity.SessionPath
	if channelBinding {
		path += "?channel_binding=true"
	}
	return info, c.do(ctx, http.MethodGet, path, nil, &info)
}

// Ping checks that the coordinator answers.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.sendJSON(ctx, method, path, "application/json", in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// sendJSON sends a request to path with in, unless nil, as its JSON body
// and accept as its Accept header. It returns the response when the status
// is below 300 (the caller closes its body), else the coordinator's problem.
func (c *Client) sendJSON(ctx context.Context, method, path, accept string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", accept)
	resp, err := c.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, decodeProblem(resp)
	}
	return resp, nil
}

// send does req, saying where the coordinator was looked for when none
// answers.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.HTTP.Do(req)
	if err != nil && req.Context().Err() == nil {
		return nil, fmt.Errorf("no coordinator answers at %s (from %s): is it running? (%w)", c.BaseURL, c.Source, err)
	}
	return resp, err
}

func decodeProblem(resp *http.Response) error {
	var p coordinator.Problem
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(b, &p); err != nil || p.Code == "" {
		return fmt.Errorf("coordinator answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return &APIError{p}
}

// Create makes a job.
func (c *Client) Create(ctx context.Context, req coordinator.CreateRequest) (job.Job, error) {
	var j job.Job
	return j, c.do(ctx, http.MethodPost, "/v1/jobs", req, &j)
}

// Get returns a job.
func (c *Client) Get(ctx context.Context, id string) (job.Job, error) {
	var j job.Job
	return j, c.do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), nil, &j)
}

// List returns jobs; all includes ACKNOWLEDGED and CANCELLED ones.
func (c *Client) List(ctx context.Context, all bool, states string) ([]job.Job, error) {
	q := url.Values{}
	if all {
		q.Set("all", "true")
	}
	if states != "" {
		q.Set("state", states)
	}
	var r coordinator.ListResponse
	path := "/v1/jobs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return r.Jobs, c.do(ctx, http.MethodGet, path, nil, &r)
}

// Action runs resume, suspend, cancel or complete.
func (c *Client) Action(ctx context.Context, id, action string) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	return r, c.do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/"+action, nil, &r)
}

// AddFiles appends files to a job.
func (c *Client) AddFiles(ctx context.Context, id string, files []events.FileSpec) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	return r, c.do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/files", coordinator.AddFilesRequest{Files: files}, &r)
}

// Patch sets job properties.
func (c *Client) Patch(ctx context.Context, id string, req coordinator.PatchRequest) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	return r, c.do(ctx, http.MethodPatch, "/v1/jobs/"+url.PathEscape(id), req, &r)
}

// Bandwidth reads a pool's bandwidth limits.
func (c *Client) Bandwidth(ctx context.Context, pool string) (dispatch.Bandwidth, error) {
	var b dispatch.Bandwidth
	return b, c.do(ctx, http.MethodGet, "/v1/pools/"+url.PathEscape(pool)+"/bandwidth", nil, &b)
}

// SetBandwidth replaces a pool's bandwidth limits (administrators only).
func (c *Client) SetBandwidth(ctx context.Context, pool string, b dispatch.Bandwidth) (dispatch.Bandwidth, error) {
	var out dispatch.Bandwidth
	return out, c.do(ctx, http.MethodPut, "/v1/pools/"+url.PathEscape(pool)+"/bandwidth", b, &out)
}

// Events streams a job's events after sequence after, reconnecting with
// Last-Event-ID when the connection drops, until fn returns an error (which
// Events returns; ErrStop ends it cleanly) or ctx ends.
func (c *Client) Events(ctx context.Context, id string, after uint64, fn func(events.Event) error) error {
	return c.followEvents(ctx, "/v1/jobs/"+url.PathEscape(id)+"/events", after, fn)
}

// ErrStop, returned by an Events or EventLog callback, ends the stream
// without error.
var ErrStop = errors.New("stop")

type transportError struct{ error }

func (e transportError) Unwrap() error { return e.error }

func isTransport(err error) bool {
	var t transportError
	return err == nil || errors.As(err, &t)
}

// Agents lists the agent registry: administrators get every agent, users
// each pool's totals.
func (c *Client) Agents(ctx context.Context) (coordinator.AgentsResponse, error) {
	var r coordinator.AgentsResponse
	return r, c.do(ctx, http.MethodGet, "/v1/agents", nil, &r)
}
