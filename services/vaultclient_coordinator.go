package services

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/job"
)

// VaultClient is the coordinator's certvault when certvault runs as a
// separate process (`ferry coordinator run` with certvault_url): it
// implements coordinator.CertLookup and coordinator.HeaderVault over
// certvault's HTTPS API, called with the coordinator's own identity, which
// must be spiffe://<trust-domain>/service/coordinator. The dev stack, where
// both share a process, uses *certvault.Vault directly.
//
//   - Lookup (SetClientCertificateByID) is VaultLookup's: the store API at
//     the owner's store's admin address.
//   - LookupBySubject (SetClientCertificateByName) applies the owner's read
//     rights with the code VaultLookup applies them with (ownerAddress),
//     then asks certvault's coordinator API to look the name up on behalf
//     of the owner (POST /v1/coordinator/certificate-lookups), where
//     certvault applies the same rights with its own code; it needs no
//     admin role in certvault. An ambiguous name keeps certvault's
//     E_INVALIDARG, listing the candidates.
//   - StoreHeaders and DeleteHeaders (MakeCustomHeadersWriteOnly) are PUT
//     and DELETE /v1/coordinator/jobs/{id}/write-only-headers. The values
//     travel in the PUT's body only — coordinator to certvault, over mTLS,
//     never redirected — and the answer names the headers, never a value.
//
// Refusals keep certvault's BITS codes, except certvault refusing the
// coordinator itself, which is ERROR_SERVICE_UNAVAILABLE saying how to
// configure it (the owner's rights were checked before).
type VaultClient struct {
	lookup *VaultLookup
}

// NewVaultClient is a VaultClient that presents tlsCfg's identity to the
// certvault at url.
func NewVaultClient(url string, tlsCfg *tls.Config) *VaultClient {
	return &VaultClient{lookup: NewVaultLookup(url, tlsCfg)}
}

// Lookup is VaultLookup.Lookup.
func (c *VaultClient) Lookup(ctx context.Context, owner certvault.Caller, loc certvault.Location, store string, sum [20]byte) (certvault.CertInfo, error) {
	return c.lookup.Lookup(ctx, owner, loc, store, sum)
}

// LookupBySubject finds the certificate a BITS subject name designates in
// the store (loc, store) as owner may read it (certvault's
// Vault.LookupBySubject, on behalf of owner), and answers with the location
// and store as owner named them.
func (c *VaultClient) LookupBySubject(ctx context.Context, owner certvault.Caller, loc certvault.Location, store, subject string) (certvault.CertInfo, error) {
	// The owner's rights first, as for thumbprints: a refusal after this
	// is the coordinator's.
	if _, _, err := ownerAddress(owner, loc, store); err != nil {
		return certvault.CertInfo{}, err
	}
	body, err := json.Marshal(certvault.SubjectLookupRequest{OnBehalfOf: onBehalfOf(owner),
		Location: loc.String(), Store: store, Subject: subject})
	if err != nil {
		return certvault.CertInfo{}, err
	}
	var info certvault.CertInfo
	if err := c.lookup.call(ctx, http.MethodPost, certvault.CoordinatorLookupPath, body, &info, "look the certificate up"); err != nil {
		return certvault.CertInfo{}, c.refused(err, "look certificates up by subject name", job.E_NOTIMPL)
	}
	return info, nil
}

// StoreHeaders stores the "Name: value" lines of job jobID's write-only
// headers in certvault for owner, replacing any, and returns their names.
func (c *VaultClient) StoreHeaders(ctx context.Context, owner certvault.Caller, jobID string, headers []string) ([]string, error) {
	for _, h := range headers {
		// JSON would replace invalid bytes: certvault would keep another
		// value than the one given.
		if !utf8.ValidString(h) {
			return nil, job.Errorf(job.E_INVALIDARG, "a custom header line is not valid UTF-8")
		}
	}
	body, err := certvault.EncodeStoreHeadersRequest(certvault.StoreHeadersRequest{OnBehalfOf: onBehalfOf(owner), Headers: headers})
	if err != nil {
		return nil, &job.Error{Code: job.E_FAIL, Detail: "the write-only headers cannot be encoded", Err: err}
	}
	var out certvault.HeadersStored
	if err := c.lookup.call(ctx, http.MethodPut, certvault.CoordinatorHeadersURL(jobID), body, &out, "store the write-only header values"); err != nil {
		return nil, c.refused(err, "store write-only header values", job.ERROR_SERVICE_UNAVAILABLE)
	}
	if out.JobID != jobID || len(out.Names) == 0 {
		return nil, &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Detail: "certvault's answer to storing the write-only headers names another job or no header"}
	}
	return out.Names, nil
}

// DeleteHeaders deletes job jobID's write-only header values from
// certvault, reporting whether there were any. actor is who asked; reason
// goes in the WriteOnlyHeadersDeleted event.
func (c *VaultClient) DeleteHeaders(ctx context.Context, actor certvault.Caller, jobID, reason string) (bool, error) {
	q := url.Values{"on_behalf_of": {actor.Principal}, "role": {actor.Role}, "reason": {reason}}
	var out certvault.HeadersDeleted
	if err := c.lookup.call(ctx, http.MethodDelete, certvault.CoordinatorHeadersURL(jobID)+"?"+q.Encode(), nil, &out, "delete the write-only header values"); err != nil {
		return false, c.refused(err, "delete write-only header values", job.ERROR_SERVICE_UNAVAILABLE)
	}
	return out.Deleted, nil
}

func onBehalfOf(c certvault.Caller) certvault.OnBehalfOf {
	return certvault.OnBehalfOf{Principal: c.Principal, Role: c.Role}
}

// refused turns certvault's refusals of the coordinator itself into what
// the coordinator's caller should see: not an access denial of theirs
// (their rights were checked) but a service that is not configured —
// ERROR_SERVICE_UNAVAILABLE naming the fix — and, from a certvault that
// predates the coordinator API (its answer to an unknown path is
// ERROR_NOT_FOUND, which none of these calls gives otherwise), missing.
func (c *VaultClient) refused(err error, what string, missing job.Code) error {
	code := job.CodeOf(err)
	switch {
	case code == job.E_ACCESSDENIED || code.Status == http.StatusUnauthorized:
		return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Err: err,
			Detail: fmt.Sprintf("certvault at %s refused the coordinator's request to %s: it accepts them only from the coordinator's identity, spiffe://<trust-domain>/service/%s, with role service or admin there (docs/certvault.md)",
				c.lookup.URL, what, certvault.CoordinatorService)}
	case code == job.ERROR_NOT_FOUND:
		return &job.Error{Code: missing, Err: err,
			Detail: fmt.Sprintf("certvault at %s does not let the coordinator %s (it predates the coordinator API): upgrade certvault", c.lookup.URL, what)}
	}
	return err
}
