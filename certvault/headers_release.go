package certvault

import (
	"context"
	"crypto/hpke"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// HeadersReleasePath is where a job's write-only header values are
// released (POST only).
const HeadersReleasePath = "/v1/releases/headers"

// headersInfoPrefix starts the HPKE info of a header release, as
// releaseInfoPrefix does for keys; the two never open each other's answers.
const headersInfoPrefix = "ferry/certvault/release-headers/v1|"

func headersInfo(binding, grantID string) []byte {
	return []byte(headersInfoPrefix + binding + "|" + grantID)
}

// HeadersRelease is the answer of POST /v1/releases/headers: the names of
// the job's write-only custom headers and their "Name: value" lines (a
// JSON array of strings) sealed with HPKE (Suite) to the request's public
// key, with info "ferry/certvault/release-headers/v1|" + Channel-Binding
// value + "|" + GrantID.
type HeadersRelease struct {
	JobID         string   `json:"job_id"`
	Names         []string `json:"names"`
	SealedHeaders []byte   `json:"sealed_headers"`
	GrantID       string   `json:"grant_id"`
	Suite         string   `json:"suite"`
}

// HeadersReleaseHandler serves POST /v1/releases/headers, the only way the
// values of a job's write-only custom headers leave the vault. The body is
// a ReleaseRequest, as for keys. Mount it like ReleaseHandler.
//
// The values are released only when the checks of a key release pass, in
// the same order and with the same answers (a verified agent principal, the
// connection's channel binding, a valid body, the job from its events, the
// agent's lease, CONNECTING or TRANSFERRING); then the job's events must
// list write-only headers (ERROR_NOT_FOUND otherwise — after TakeOwnership
// or DELETE they list none, so a record left behind is never released);
// then Vault.Headers checks the record against the job (its owner, its
// names) and appends WriteOnlyHeadersReleased before anything is released
// (audit log unwritable: 503 ERROR_SERVICE_UNAVAILABLE, nothing released).
// Every refusal of a verified caller is a WriteOnlyHeadersReleaseDenied
// event (best effort).
func (v *Vault) HeadersReleaseHandler(auth *identity.Authenticator, jobs *jobstore.Repo) http.Handler {
	return releaseEndpoint(v, "release headers", auth, jobs, v.releaseHeaders)
}

// headersRequest is the HeadersRequest of a release call, once the job is
// known.
func headersRequest(c *releaseCall) HeadersRequest {
	req := HeadersRequest{Agent: c.principal, Job: c.jobID}
	if j := c.job; j != nil {
		req.Owner, req.Names = j.Owner, slices.Clone(j.Options.WriteOnlyHeaders)
		req.Lease = fmt.Sprint(j.Attempt)
	}
	return req
}

func (v *Vault) releaseHeaders(w http.ResponseWriter, r *http.Request, auth *identity.Authenticator, jobs *jobstore.Repo) (*HeadersRelease, error) {
	ctx := r.Context()
	deny := func(c *releaseCall, err error) error {
		req := headersRequest(c)
		if aerr := v.DenyHeaders(ctx, req, err); aerr != nil {
			v.log.Error().Err(aerr).Str("agent", req.Agent).Str("job", req.Job).Msg("audit of a refused header release failed")
		}
		v.log.Warn().Str("agent", req.Agent).Str("job", req.Job).Str("code", job.CodeOf(err).Symbol).Msg("write-only header release refused")
		return err
	}
	c, err := admit(w, r, auth, jobs, "write-only headers", deny)
	if err != nil {
		return nil, err
	}
	if len(c.job.Options.WriteOnlyHeaders) == 0 {
		return nil, deny(c, job.Errorf(job.ERROR_NOT_FOUND, "the job has no write-only custom headers"))
	}
	req := headersRequest(c)
	req.GrantID = newGrantID()
	// Headers audits (released before returning, denied on its own
	// refusals) and fails closed.
	lines, err := v.Headers(ctx, req)
	if err != nil {
		return nil, err
	}
	plain, err := json.Marshal(lines)
	clearLines(lines)
	if err != nil {
		return nil, internal("encode the headers", err)
	}
	sealed, err := hpke.Seal(c.pub, releaseKDF, releaseAEAD, headersInfo(c.binding, req.GrantID), plain)
	clear(plain)
	if err != nil {
		return nil, internal("seal the headers", err)
	}
	return &HeadersRelease{JobID: req.Job, Names: req.Names, SealedHeaders: sealed, GrantID: req.GrantID, Suite: ReleaseSuite}, nil
}

// FetchHeaders asks certvault at vaultURL for the values of job jobID's
// write-only custom headers, as Fetch asks for a key: a one-time X25519 key
// pair, POST /v1/releases/headers on a TLS connection of its own with its
// Channel-Binding (identity.DoBound), the answer opened with that binding
// and the grant ID. It returns the "Name: value" lines, checked like
// SetCustomHeaders input and against the names the answer gives. Never log
// them.
//
// A refusal is returned as the *job.Error of the vault's problem document
// (E_ACCESSDENIED, BG_E_INVALID_STATE, ERROR_NOT_FOUND, …).
func FetchHeaders(ctx context.Context, tlsCfg *tls.Config, vaultURL, jobID string) ([]string, error) {
	raw, priv, binding, err := postRelease(ctx, tlsCfg, vaultURL, HeadersReleasePath, jobID)
	defer clear(raw)
	if err != nil {
		return nil, err
	}
	var rel HeadersRelease
	if err := json.Unmarshal(raw, &rel); err != nil {
		return nil, fmt.Errorf("certvault: release: decode the answer: %w", err)
	}
	defer clear(rel.SealedHeaders)
	switch {
	case rel.Suite != ReleaseSuite:
		return nil, fmt.Errorf("certvault: release: unexpected suite %q", rel.Suite)
	case rel.GrantID == "":
		return nil, errors.New("certvault: release: the answer has no grant ID")
	case rel.JobID != jobID:
		return nil, errors.New("certvault: release: the answer is for another job")
	}
	plain, err := hpke.Open(priv, releaseKDF, releaseAEAD, headersInfo(binding, rel.GrantID), rel.SealedHeaders)
	if err != nil {
		return nil, fmt.Errorf("certvault: release: the sealed headers do not open: %w", err)
	}
	defer clear(plain)
	var lines []string
	if err := json.Unmarshal(plain, &lines); err != nil {
		return nil, errors.New("certvault: release: the released headers are not a list of header lines")
	}
	checked, err := job.ValidateCustomHeaders(lines)
	if err != nil || len(checked) == 0 || !slices.Equal(job.HeaderNames(checked), rel.Names) {
		// Not err itself: its detail could quote a header.
		clearLines(lines)
		return nil, errors.New("certvault: release: the released headers are not valid header lines for the names given")
	}
	return checked, nil
}
