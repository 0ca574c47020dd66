package coordinator

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"unicode/utf16"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// CertLookup resolves the certificate a job names, as the job's owner sees
// certvault's stores. *certvault.Vault implements it; the coordinator only
// reads metadata (never a key).
type CertLookup interface {
	Lookup(ctx context.Context, caller certvault.Caller, loc certvault.Location, store string, sha1 [20]byte) (certvault.CertInfo, error)
	LookupBySubject(ctx context.Context, caller certvault.Caller, loc certvault.Location, store, subject string) (certvault.CertInfo, error)
}

// ClientCertificateRequest is the body of PUT /v1/jobs/{id}/client-certificate:
// a store location (a BG_CERT_STORE_LOCATION name, or its value 0..7 as a
// JSON number or string), a store name, and exactly one of a SHA-1
// thumbprint (SetClientCertificateByID) or a subject name
// (SetClientCertificateByName).
type ClientCertificateRequest struct {
	Location   json.RawMessage `json:"location"`
	Store      string          `json:"store"`
	Thumbprint string          `json:"thumbprint,omitempty"`
	Subject    string          `json:"subject,omitempty"`
}

// ClientCertificateResponse answers GET /v1/jobs/{id}/client-certificate
// (GetClientCertificate).
type ClientCertificateResponse struct {
	Location   string `json:"location"`
	Store      string `json:"store"`
	Thumbprint string `json:"thumbprint"` // SHA-1, 40 lower-case hex digits
	Subject    string `json:"subject,omitempty"`
}

// certRequest is a validated ClientCertificateRequest.
type certRequest struct {
	loc     certvault.Location
	store   string
	sha1    [20]byte
	subject string // set when named by subject
}

// parseCertRequest checks a request in SetClientCertificateByID's order:
// the location (E_NOTIMPL), missing values (RPC_X_NULL_REF_POINTER), the
// thumbprint's length (RPC_X_BAD_STUB_DATA), the store name's length
// (BG_E_STRING_TOO_LONG). Whether the caller may use the store, and whether
// it and the certificate exist, is certvault's answer.
func parseCertRequest(req ClientCertificateRequest) (certRequest, error) {
	var out certRequest
	loc, err := parseLocationJSON(req.Location)
	if err != nil {
		return out, err
	}
	out.loc = loc
	switch {
	case req.Thumbprint != "" && req.Subject != "":
		return out, job.Errorf(job.E_INVALIDARG, "give either a thumbprint or a subject name, not both")
	case req.Store == "":
		return out, job.Errorf(job.RPC_X_NULL_REF_POINTER, "the store name is required")
	case req.Thumbprint == "" && req.Subject == "":
		return out, job.Errorf(job.RPC_X_NULL_REF_POINTER, "the certificate's thumbprint or subject name is required")
	}
	if req.Thumbprint != "" {
		if out.sha1, err = certvault.ParseThumbprint(req.Thumbprint); err != nil {
			return out, err
		}
	} else {
		name, err := certvault.ParseSubjectName(req.Subject)
		if err != nil {
			return out, err
		}
		out.subject = name.String()
	}
	if n := len(utf16.Encode([]rune(req.Store))); n > certvault.MaxNameUnits {
		return out, job.Errorf(job.BG_E_STRING_TOO_LONG, "the store name is %d characters long; at most %d are allowed", n, certvault.MaxNameUnits)
	}
	out.store = req.Store
	return out, nil
}

// parseLocationJSON accepts a location as a JSON string (a name or "0".."7")
// or a JSON number 0..7. Absent, null and anything outside the enum are
// E_NOTIMPL, as certvault.ParseLocation answers.
func parseLocationJSON(raw json.RawMessage) (certvault.Location, error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return certvault.ParseLocation("")
	case raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, job.Errorf(job.E_INVALIDARG, "location is not a valid JSON string")
		}
		return certvault.ParseLocation(s)
	case raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9':
		// A number: only the plain digits 0..7 name a location.
		return certvault.ParseLocation(string(raw))
	}
	return 0, job.Errorf(job.E_INVALIDARG, "location must be a BG_CERT_STORE_LOCATION name or number, not %s", truncate(string(raw), 32))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// loadFresh loads a job from its events (not the read model, which may lag)
// and checks that the caller may see it.
func (s *Service) loadFresh(ctx context.Context, id string, c caller) (job.Job, error) {
	j, err := s.repo.Load(ctx, id)
	if err != nil {
		return job.Job{}, err
	}
	return j, c.mayAccess(&j)
}

// setClientCertificate is SetClientCertificateByID / ByName.
func (s *Service) setClientCertificate(w http.ResponseWriter, r *http.Request, c caller) error {
	if s.cfg.Certs == nil {
		return job.Errorf(job.ERROR_SERVICE_UNAVAILABLE, "this coordinator has no certificate vault: client certificates cannot be set")
	}
	var body ClientCertificateRequest
	if err := decodeBody(w, r, &body); err != nil {
		return err
	}
	req, err := parseCertRequest(body)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	j, err := s.loadFresh(r.Context(), id, c)
	if err != nil {
		return err
	}
	if j.Owner != c.Principal {
		// BITS: only the job's owner names its certificate, not even an
		// administrator (who may take ownership first).
		return job.Errorf(job.E_ACCESSDENIED, "only the job's owner may set its client certificate")
	}
	// The owner is the caller: the certificate must be one the owner may use.
	owner := certvault.Caller{Principal: c.Principal, Role: string(c.Role)}
	var info certvault.CertInfo
	by := job.CertByID
	if req.subject != "" {
		by = job.CertByName
		info, err = s.cfg.Certs.LookupBySubject(r.Context(), owner, req.loc, req.store, req.subject)
	} else {
		info, err = s.cfg.Certs.Lookup(r.Context(), owner, req.loc, req.store, req.sha1)
	}
	if err != nil {
		return err
	}
	if req.subject == "" && info.SHA1 != hex.EncodeToString(req.sha1[:]) {
		return fmt.Errorf("coordinator: certvault answered certificate %s for thumbprint %x", info.SHA1, req.sha1)
	}
	return s.respond(w, r, job.SetClientCertificate{
		Location: int(info.Location), LocationName: info.Location.String(), Store: info.Store,
		SHA1: info.SHA1, Subject: info.Subject, By: by, CallerPrincipal: c.Principal,
	}, c)
}

// getClientCertificate is GetClientCertificate: RPC_X_BAD_STUB_DATA (404)
// when the job has none.
func (s *Service) getClientCertificate(w http.ResponseWriter, r *http.Request, c caller) error {
	j, err := s.loadFresh(r.Context(), r.PathValue("id"), c)
	if err != nil {
		return err
	}
	ref := j.ClientCertificate
	if ref == nil {
		return &job.Error{Code: withStatus(job.RPC_X_BAD_STUB_DATA, http.StatusNotFound), Detail: "the job has no client certificate"}
	}
	writeJSON(w, http.StatusOK, ClientCertificateResponse{Location: ref.Location, Store: ref.Store, Thumbprint: ref.SHA1, Subject: ref.Subject})
	return nil
}

// removeClientCertificate is RemoveClientCertificate: S_FALSE when the job
// has none.
func (s *Service) removeClientCertificate(w http.ResponseWriter, r *http.Request, c caller) error {
	return s.respond(w, r, job.RemoveClientCertificate{CallerPrincipal: c.Principal}, c)
}

// takeOwnership is TakeOwnership: an administrator becomes the job's owner,
// and the job's client certificate, custom headers (plain and write-only)
// and notification target (the previous owner's) are removed.
func (s *Service) takeOwnership(w http.ResponseWriter, r *http.Request, c caller) error {
	if !c.admin() {
		return job.Errorf(job.E_ACCESSDENIED, "only administrators may take ownership of a job")
	}
	if r.ContentLength > 0 {
		var empty struct{}
		if err := decodeBody(w, r, &empty); err != nil {
			return err
		}
	}
	res, err := s.run(r, job.TakeOwnership{NewOwner: c.Principal}, c)
	if err != nil {
		return err
	}
	if len(res.Events) > 0 {
		// The previous owner's write-only header values go too. Best
		// effort: the job no longer lists them, so certvault would not
		// release them anyway.
		s.dropHeaders(r.Context(), c, res.Job.ID, events.HeadersDeletedOwnershipMoved)
	}
	answer(w, res, false)
	return nil
}
