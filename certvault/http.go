package certvault

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
)

// Problem is the problem document certvault answers errors with (the same
// shape as the coordinator's).
type Problem = httpapi.Problem

// ProblemFor maps an error to its problem document.
func ProblemFor(err error) Problem { return httpapi.ProblemFor(err) }

// MaxBody bounds every request body.
const MaxBody = 1 << 20

// importBody is the JSON of POST …/certificates: {"pem": "…"} or
// {"pfx": "<base64>", "password": "…"}.
type importBody struct {
	PEM      *string `json:"pem"`
	PFX      []byte  `json:"pfx"`
	Password *string `json:"password"`
}

// DecodeImportRequest decodes the body of an import request strictly: one
// JSON object, no unknown fields, nothing after it. Errors are E_INVALIDARG
// (RPC_X_NULL_REF_POINTER when neither pem nor pfx is given) and never
// quote the body, which may hold a key or a password.
func DecodeImportRequest(body []byte) (ImportRequest, error) {
	var b importBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.Is(err, io.EOF):
			return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "the request body is empty: a JSON object {\"pem\": …} or {\"pfx\": …, \"password\": …} is required")
		case errors.As(err, &syn):
			return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "the request body is not valid JSON (at byte %d)", syn.Offset)
		case errors.As(err, &typ):
			return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "field %q must be %s", typ.Field, jsonKind(typ.Field))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			name := strings.TrimPrefix(err.Error(), "json: unknown field ")
			return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "unknown field %s: the fields are pem, pfx and password", truncate(name, 40))
		case strings.Contains(err.Error(), "illegal base64"):
			return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "field \"pfx\" must be standard base64")
		}
		return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "the request body cannot be decoded as an import request")
	}
	if dec.More() {
		return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "the request body has data after the JSON object")
	}
	var req ImportRequest
	if b.PEM != nil {
		req.PEM = []byte(*b.PEM)
	}
	req.PFX = b.PFX
	if b.Password != nil {
		req.Password = []byte(*b.Password)
	}
	switch {
	case b.PEM == nil && b.PFX == nil:
		return ImportRequest{}, job.Errorf(job.RPC_X_NULL_REF_POINTER, "a certificate is required: give pem, or pfx with its password")
	case b.PEM != nil && b.PFX != nil:
		return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "give either pem or pfx, not both")
	case b.PEM != nil && b.Password != nil:
		return ImportRequest{}, job.Errorf(job.E_INVALIDARG, "password applies to pfx only; encrypted PEM keys are not supported (convert to PKCS#12)")
	case b.PEM != nil && len(req.PEM) == 0 || b.PFX != nil && len(req.PFX) == 0:
		return ImportRequest{}, job.Errorf(job.RPC_X_NULL_REF_POINTER, "the certificate is empty")
	}
	return req, nil
}

func jsonKind(field string) string {
	if field == "pfx" {
		return "a base64 string"
	}
	return "a string"
}

// Handler serves the store API under /v1/stores. auth identifies the caller
// of each request (from its verified client certificate; certvault has no
// authentication of its own): an error from it that carries a code is
// answered with that code, any other with E_UNAUTHENTICATED.
//
//	POST   /v1/stores/{location}/{store}/certificates         import (201, CertInfo)
//	GET    /v1/stores/{location}/{store}/certificates         list ({"certificates": [CertInfo…]})
//	GET    /v1/stores/{location}/{store}/certificates/{sha1}  one certificate (CertInfo)
//	DELETE /v1/stores/{location}/{store}/certificates/{sha1}  remove (204)
//	POST   /v1/admin/rotate-key                               rotate the key-encryption key (admins; RotateKeyResult)
//	POST   /v1/coordinator/certificate-lookups                lookup by subject on behalf of a job's owner (coordinator only)
//	PUT    /v1/coordinator/jobs/{id}/write-only-headers       store a job's write-only header values (coordinator only)
//	DELETE /v1/coordinator/jobs/{id}/write-only-headers       delete them (coordinator only)
//
// {location} is a name or number (ParseLocation); {store} is
// percent-encoded where needed ("spiffe:%2F%2Fexample.org%2Fuser%2Falice%5CMY"
// in USERS). Errors are application/problem+json (Problem). Request bodies
// and passwords are never logged or echoed.
func (v *Vault) Handler(auth func(*http.Request) (Caller, error)) http.Handler {
	if auth == nil { // fail closed
		auth = func(*http.Request) (Caller, error) { return Caller{}, errors.New("no authenticator configured") }
	}
	h := &handler{v: v, auth: auth}
	mux := http.NewServeMux()
	const certs = "/v1/stores/{location}/{store}/certificates"
	mux.HandleFunc("POST "+certs, h.serve(h.importCert))
	mux.HandleFunc("GET "+certs, h.serve(h.list))
	mux.HandleFunc("GET "+certs+"/{sha1}", h.serve(h.lookup))
	mux.HandleFunc("DELETE "+certs+"/{sha1}", h.serve(h.remove))
	mux.HandleFunc(certs, h.notAllowed("GET, POST"))
	mux.HandleFunc(certs+"/{sha1}", h.notAllowed("GET, DELETE"))
	mux.HandleFunc("POST "+RotateKeyPath, h.rotateKey)
	mux.HandleFunc(RotateKeyPath, h.notAllowed("POST"))
	// The coordinator's calls when certvault is a process of its own
	// (coordinator_api.go).
	mux.HandleFunc("POST "+CoordinatorLookupPath, h.coordinator(h.lookupBySubject))
	mux.HandleFunc(CoordinatorLookupPath, h.notAllowed("POST"))
	mux.HandleFunc("PUT "+CoordinatorHeadersPath, h.coordinator(h.storeHeaders))
	mux.HandleFunc("DELETE "+CoordinatorHeadersPath, h.coordinator(h.deleteHeaders))
	mux.HandleFunc(CoordinatorHeadersPath, h.notAllowed("PUT, DELETE"))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.problem(w, r, job.Errorf(job.ERROR_NOT_FOUND, "no such resource: the certificate store API is /v1/stores/{location}/{store}/certificates[/{sha1}]; admins rotate keys with POST "+RotateKeyPath))
	})
	return mux
}

type handler struct {
	v    *Vault
	auth func(*http.Request) (Caller, error)
}

// authenticate identifies the caller and puts the request's ID in its
// context; on failure it answers and returns false.
func (h *handler) authenticate(w http.ResponseWriter, r *http.Request) (Caller, *http.Request, bool) {
	caller, err := h.auth(r)
	if err != nil {
		var je *job.Error
		if !errors.As(err, &je) {
			err = &job.Error{Code: job.E_UNAUTHENTICATED, Err: err}
		}
		h.problem(w, r, err)
		return Caller{}, r, false
	}
	if id := r.Header.Get("X-Request-Id"); validRequestID(id) {
		r = r.WithContext(withRequestID(r.Context(), id))
	}
	return caller, r, true
}

// serve authenticates, parses {location} and runs fn; fn's error becomes a
// problem document.
func (h *handler) serve(fn func(http.ResponseWriter, *http.Request, Caller, Location) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		caller, r, ok := h.authenticate(w, r)
		if !ok {
			return
		}
		loc, err := ParseLocation(r.PathValue("location"))
		if err == nil {
			err = fn(w, r, caller, loc)
		}
		if err != nil {
			h.problem(w, r, err)
		}
	}
}

func (h *handler) notAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		c := job.E_NOTIMPL
		c.Status = http.StatusMethodNotAllowed
		h.problem(w, r, &job.Error{Code: c, Detail: fmt.Sprintf("method %s is not allowed here; use %s", r.Method, allow)})
	}
}

func (h *handler) importCert(w http.ResponseWriter, r *http.Request, caller Caller, loc Location) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		c := job.E_INVALIDARG
		c.Status = http.StatusUnsupportedMediaType
		return &job.Error{Code: c, Detail: fmt.Sprintf("Content-Type %q is not application/json", truncate(ct, 64))}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	defer clear(body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			c := job.E_INVALIDARG
			c.Status = http.StatusRequestEntityTooLarge
			return &job.Error{Code: c, Detail: fmt.Sprintf("the request body is larger than %d bytes", MaxBody)}
		}
		return job.Errorf(job.E_INVALIDARG, "the request body cannot be read")
	}
	req, err := DecodeImportRequest(body)
	defer func() { clear(req.PEM); clear(req.PFX); clear(req.Password) }()
	if err != nil {
		return err
	}
	info, err := h.v.Import(r.Context(), caller, loc, r.PathValue("store"), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", r.URL.EscapedPath()+"/"+info.SHA1)
	writeJSON(w, http.StatusCreated, info)
	return nil
}

func (h *handler) list(w http.ResponseWriter, r *http.Request, caller Caller, loc Location) error {
	list, err := h.v.List(r.Context(), caller, loc, r.PathValue("store"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		Certificates []CertInfo `json:"certificates"`
	}{list})
	return nil
}

func (h *handler) lookup(w http.ResponseWriter, r *http.Request, caller Caller, loc Location) error {
	sum, err := ParseThumbprint(r.PathValue("sha1"))
	if err != nil {
		return err
	}
	info, err := h.v.Lookup(r.Context(), caller, loc, r.PathValue("store"), sum)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}

func (h *handler) remove(w http.ResponseWriter, r *http.Request, caller Caller, loc Location) error {
	sum, err := ParseThumbprint(r.PathValue("sha1"))
	if err != nil {
		return err
	}
	if err := h.v.Remove(r.Context(), caller, loc, r.PathValue("store"), sum); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RotateKeyPath is the admin endpoint of RotateKey.
const RotateKeyPath = "/v1/admin/rotate-key"

// maxRotateBody bounds the body of a rotate-key request.
const maxRotateBody = 4 << 10

// rotateKey serves POST /v1/admin/rotate-key: the body is empty or
// {"finish": bool, "retire": bool}; the answer is the RotateKeyResult. Admins only: the
// role is checked before the body is read.
func (h *handler) rotateKey(w http.ResponseWriter, r *http.Request) {
	caller, r, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	if err := caller.check(); err != nil {
		h.problem(w, r, err)
		return
	}
	if caller.Role != RoleAdmin {
		h.problem(w, r, job.Errorf(job.E_ACCESSDENIED, "%s may not rotate the key-encryption key: it is for admins", caller.Role))
		return
	}
	opts, err := decodeRotateKey(w, r)
	if err != nil {
		h.problem(w, r, err)
		return
	}
	res, err := h.v.RotateKey(r.Context(), caller, opts)
	if err != nil {
		h.problem(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// decodeRotateKey reads the optional body of a rotate-key request.
func decodeRotateKey(w http.ResponseWriter, r *http.Request) (RotateKeyOptions, error) {
	var opts RotateKeyOptions
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		c := job.E_INVALIDARG
		c.Status = http.StatusUnsupportedMediaType
		return opts, &job.Error{Code: c, Detail: fmt.Sprintf("Content-Type %q is not application/json", truncate(ct, 64))}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRotateBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			c := job.E_INVALIDARG
			c.Status = http.StatusRequestEntityTooLarge
			return opts, &job.Error{Code: c, Detail: fmt.Sprintf("the request body is larger than %d bytes", maxRotateBody)}
		}
		return opts, job.Errorf(job.E_INVALIDARG, "the request body cannot be read")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return opts, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&opts); err != nil {
		return opts, job.Errorf(job.E_INVALIDARG, `the request body must be empty or {"finish": true|false, "retire": true|false}`)
	}
	if dec.More() {
		return opts, job.Errorf(job.E_INVALIDARG, "the request body has data after the JSON object")
	}
	return opts, nil
}

// problem answers with a problem document and logs internal errors once.
func (h *handler) problem(w http.ResponseWriter, r *http.Request, err error) {
	if p := httpapi.WriteError(w, r, err); p.Status >= 500 {
		h.v.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("request failed")
	}
}

var writeJSON = httpapi.WriteJSON

// validRequestID accepts a client's request ID as a correlation ID: 1 to 128
// visible ASCII characters.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] >= 0x7f {
			return false
		}
	}
	return true
}
