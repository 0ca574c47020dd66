package certvault

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
	"github.com/rs/zerolog"
)

// The coordinator's API. In the dev stack the coordinator calls the Vault
// in process: LookupBySubject for SetClientCertificateByName, StoreHeaders
// and DeleteHeaders for MakeCustomHeadersWriteOnly. When certvault runs as a
// process of its own, these endpoints are those calls over mTLS:
//
//	POST   /v1/coordinator/certificate-lookups              LookupBySubject on behalf of a job's owner (CertInfo)
//	PUT    /v1/coordinator/jobs/{id}/write-only-headers      StoreHeaders for the job's owner ({"job_id", "names"})
//	DELETE /v1/coordinator/jobs/{id}/write-only-headers?on_behalf_of=P&role=R&reason=X
//	                                                         DeleteHeaders ({"job_id", "deleted"})
//
// Only ferry's coordinator may call them (IsCoordinator): the caller names
// the principal it acts for, and certvault then applies that principal's
// rights with the same code as for the in-process call — resolve's table
// for lookups (docs/certvault.md), Caller.check for headers. Answers carry
// metadata and header names, never header values; a request that carries
// values (StoreHeadersRequest) prints and logs names only.

// CoordinatorService is the service name of ferry's coordinator: its
// identity is spiffe://<trust-domain>/service/coordinator.
const CoordinatorService = "coordinator"

// The coordinator's endpoints.
const (
	CoordinatorLookupPath  = "/v1/coordinator/certificate-lookups"
	CoordinatorHeadersPath = "/v1/coordinator/jobs/{id}/write-only-headers"
)

// CoordinatorHeadersURL is the path of job jobID's write-only headers in
// the coordinator's API (CoordinatorHeadersPath), escaped.
func CoordinatorHeadersURL(jobID string) string {
	return "/v1/coordinator/jobs/" + url.PathEscape(jobID) + "/write-only-headers"
}

// Bounds of the coordinator's request bodies. Header lines are at most
// job.MaxCustomHeaders characters; JSON escaping (\u003c, surrogate pairs)
// stays well within the bound.
const (
	maxLookupBody         = 16 << 10
	maxStoreHeadersBody   = 192 << 10
	maxOnBehalfOfQueryLen = 4 << 10
)

// IsCoordinator reports whether caller is ferry's coordinator: its verified
// principal is spiffe://<trust-domain>/service/coordinator and the role
// mapper gives it the role service — or admin, the override deployments
// give the coordinator so that it may read owners' stores through the store
// API (services.VaultLookup). The role mapper gives SPIFFE roles only to
// the deployment's trust domain, so a coordinator of another trust domain
// is refused unless an operator gave that principal a role explicitly.
func IsCoordinator(caller Caller) bool {
	if caller.check() != nil || caller.Role != RoleService && caller.Role != RoleAdmin {
		return false
	}
	id, err := identity.ParseSPIFFEID(caller.Principal)
	return err == nil && id.Role == identity.RoleService && id.Name == CoordinatorService
}

// OnBehalfOf is the principal the coordinator acts for — a job's owner, or
// the administrator who took the job over — with the role the coordinator
// gives it: certvault applies that caller's rights, as for a Caller in
// process.
type OnBehalfOf struct {
	Principal string `json:"principal"`
	Role      string `json:"role"`
}

// caller is o as a Caller; RPC_X_NULL_REF_POINTER when it names nobody.
func (o OnBehalfOf) caller() (Caller, error) {
	if o.Principal == "" {
		return Caller{}, job.Errorf(job.RPC_X_NULL_REF_POINTER, "on_behalf_of: the principal the coordinator acts for is required")
	}
	return Caller{Principal: o.Principal, Role: o.Role}, nil
}

// SubjectLookupRequest is the body of POST
// /v1/coordinator/certificate-lookups: SetClientCertificateByName's
// lookup (LookupBySubject) in the store (Location, Store) as OnBehalfOf
// sees it. Location is a name or a number, as ParseLocation accepts it.
type SubjectLookupRequest struct {
	OnBehalfOf OnBehalfOf `json:"on_behalf_of"`
	Location   string     `json:"location"`
	Store      string     `json:"store"`
	Subject    string     `json:"subject"`
}

// StoreHeadersRequest is the body of PUT
// /v1/coordinator/jobs/{id}/write-only-headers: the "Name: value" lines of
// the job's write-only custom headers, stored for OnBehalfOf, the job's
// owner (StoreHeaders).
//
// It never shows its values: fmt (every verb), encoding/json and zerolog
// print the principal and the header names only. Its wire form, with the
// values, is EncodeStoreHeadersRequest's, for the coordinator's request to
// certvault alone.
type StoreHeadersRequest struct {
	OnBehalfOf OnBehalfOf
	Headers    []string
}

// storeHeadersBody is the wire form of a StoreHeadersRequest.
type storeHeadersBody struct {
	OnBehalfOf OnBehalfOf `json:"on_behalf_of"`
	Headers    []string   `json:"headers"`
}

// EncodeStoreHeadersRequest is r's request body, values included. Clear it
// once sent.
func EncodeStoreHeadersRequest(r StoreHeadersRequest) ([]byte, error) {
	return json.Marshal(storeHeadersBody(r))
}

// String shows the principal and the header names, never a value.
func (r StoreHeadersRequest) String() string {
	return fmt.Sprintf("StoreHeadersRequest(%s, names %s)", r.OnBehalfOf.Principal, strings.Join(job.HeaderNames(r.Headers), ", "))
}

// GoString redacts %#v too.
func (r StoreHeadersRequest) GoString() string { return r.String() }

// Format prints String for every verb.
func (r StoreHeadersRequest) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, r.String()) }

// MarshalJSON encodes the principal and the header names only.
func (r StoreHeadersRequest) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		OnBehalfOf OnBehalfOf `json:"on_behalf_of"`
		Names      []string   `json:"names"`
	}{r.OnBehalfOf, job.HeaderNames(r.Headers)})
}

// MarshalZerologObject logs the principal and the header names only.
func (r StoreHeadersRequest) MarshalZerologObject(e *zerolog.Event) {
	e.Str("on_behalf_of", r.OnBehalfOf.Principal).Strs("names", job.HeaderNames(r.Headers))
}

// HeadersStored answers PUT /v1/coordinator/jobs/{id}/write-only-headers:
// the names of the headers stored, never their values.
type HeadersStored struct {
	JobID string   `json:"job_id"`
	Names []string `json:"names"`
}

// HeadersDeleted answers DELETE /v1/coordinator/jobs/{id}/write-only-headers:
// whether certvault had values for the job.
type HeadersDeleted struct {
	JobID   string `json:"job_id"`
	Deleted bool   `json:"deleted"`
}

// deleteReasons are the reasons of WriteOnlyHeadersDeleted a coordinator
// may give.
var deleteReasons = []string{events.HeadersDeletedByOwner, events.HeadersDeletedOwnershipMoved, events.HeadersDeletedNotApplied}

// coordinator authenticates a call to the coordinator's API and refuses
// every caller but the coordinator (before its body is read); fn's error
// becomes a problem document.
func (h *handler) coordinator(fn func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		caller, r, ok := h.authenticate(w, r)
		if !ok {
			return
		}
		err := caller.check()
		if err == nil && !IsCoordinator(caller) {
			err = job.Errorf(job.E_ACCESSDENIED, "%s (role %s) may not call certvault's coordinator API: it is for ferry's coordinator, spiffe://<trust-domain>/service/%s",
				truncate(caller.Principal, 200), caller.Role, CoordinatorService)
		}
		if err != nil {
			h.v.log.Warn().Str("principal", truncate(caller.Principal, 200)).Str("role", caller.Role).Str("method", r.Method).
				Str("path", r.URL.Path).Msg("coordinator API call refused")
		}
		if err == nil {
			err = fn(w, r)
		}
		if err != nil {
			h.problem(w, r, err)
		}
	}
}

// lookupBySubject serves POST /v1/coordinator/certificate-lookups.
func (h *handler) lookupBySubject(w http.ResponseWriter, r *http.Request) error {
	var body SubjectLookupRequest
	if err := httpapi.DecodeJSON(w, r, &body, maxLookupBody); err != nil {
		return err
	}
	owner, err := body.OnBehalfOf.caller()
	if err != nil {
		return err
	}
	loc, err := ParseLocation(body.Location)
	if err != nil {
		return err
	}
	info, err := h.v.LookupBySubject(r.Context(), owner, loc, body.Store, body.Subject)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}

// storeHeaders serves PUT /v1/coordinator/jobs/{id}/write-only-headers.
// Errors name fields, offsets and header names, never the body.
func (h *handler) storeHeaders(w http.ResponseWriter, r *http.Request) error {
	var body storeHeadersBody
	err := httpapi.DecodeJSON(w, r, &body, maxStoreHeadersBody)
	defer clearLines(body.Headers)
	if err != nil {
		return err
	}
	owner, err := body.OnBehalfOf.caller()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	names, err := h.v.StoreHeaders(r.Context(), owner, id, body.Headers)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, HeadersStored{JobID: id, Names: names})
	return nil
}

// deleteHeaders serves DELETE /v1/coordinator/jobs/{id}/write-only-headers
// with the query on_behalf_of=<principal>&role=<role>&reason=<reason>.
func (h *handler) deleteHeaders(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > 0 {
		return job.Errorf(job.E_INVALIDARG, "a DELETE of write-only headers has no body: give on_behalf_of, role and reason in the query")
	}
	if len(r.URL.RawQuery) > maxOnBehalfOfQueryLen {
		return job.Errorf(job.E_INVALIDARG, "the query is longer than %d bytes", maxOnBehalfOfQueryLen)
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return job.Errorf(job.E_INVALIDARG, "the query cannot be parsed")
	}
	for k, vs := range q {
		switch {
		case k != "on_behalf_of" && k != "role" && k != "reason":
			return job.Errorf(job.E_INVALIDARG, "unknown query parameter %q: the parameters are on_behalf_of, role and reason", truncate(k, 40))
		case len(vs) > 1:
			return job.Errorf(job.E_INVALIDARG, "query parameter %s is given %d times", k, len(vs))
		}
	}
	actor, err := OnBehalfOf{Principal: q.Get("on_behalf_of"), Role: q.Get("role")}.caller()
	if err != nil {
		return err
	}
	reason := q.Get("reason")
	if !slices.Contains(deleteReasons, reason) {
		return job.Errorf(job.E_INVALIDARG, "reason %q is not one of %s", truncate(reason, 40), strings.Join(deleteReasons, ", "))
	}
	id := r.PathValue("id")
	deleted, err := h.v.DeleteHeaders(r.Context(), actor, id, reason)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, HeadersDeleted{JobID: id, Deleted: deleted})
	return nil
}
