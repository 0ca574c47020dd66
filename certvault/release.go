package certvault

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
	"github.com/ferry-dev/ferry/job/jobstore"
)

// ReleasePath is where the key release endpoint is served (POST only).
const ReleasePath = "/v1/releases"

// ReleaseSuite names the HPKE suite the released key is sealed with.
const ReleaseSuite = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"

// releaseInfoPrefix starts the HPKE info of a release; the connection's
// channel binding and the grant ID follow, so a sealed key opens only for
// the one connection (and the one grant) it was released on.
const releaseInfoPrefix = "ferry/certvault/release/v1|"

// maxReleaseBody bounds the body of a release request: a job ID and a
// 32-byte key in base64 fit in a few hundred bytes.
const maxReleaseBody = 4 << 10

// The HPKE suite of releases: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// AES-256-GCM.
var (
	releaseKEM  = hpke.DHKEM(ecdh.X25519())
	releaseKDF  = hpke.HKDFSHA256()
	releaseAEAD = hpke.AES256GCM()
)

// releaseInfo is the HPKE info of a release on the connection whose
// Channel-Binding value is binding, under grant grantID.
func releaseInfo(binding, grantID string) []byte {
	return []byte(releaseInfoPrefix + binding + "|" + grantID)
}

// ReleaseRequest is the body of POST /v1/releases.
type ReleaseRequest struct {
	JobID string `json:"job_id"`
	// HPKEPublicKey is a one-time X25519 public key (32 bytes; standard
	// base64 in JSON) of DHKEM(X25519, HKDF-SHA256): the private key comes
	// back sealed to it.
	HPKEPublicKey []byte `json:"hpke_public_key"`
}

// Release is the answer of POST /v1/releases: the job's client certificate
// chain and its PKCS#8 private key sealed with HPKE (Suite) to the
// request's public key, with info "ferry/certvault/release/v1|" +
// Channel-Binding value + "|" + GrantID.
type Release struct {
	SHA1      string    `json:"sha1"`
	SHA256    string    `json:"sha256"`
	Chain     [][]byte  `json:"chain"` // DER, leaf first (base64 in JSON)
	SealedKey []byte    `json:"sealed_key"`
	GrantID   string    `json:"grant_id"`
	Suite     string    `json:"suite"`
	NotAfter  time.Time `json:"not_after"`
}

// ReleaseHandler serves POST /v1/releases, the only way a private key
// leaves the vault. Mount it behind auth.Middleware on a TLS 1.3 server
// (it uses the session Middleware put in the request's context, and
// authenticates the request itself when there is none). jobs reads the
// job from its events (never a read model or cache).
//
// A key is released only when, in this order: the caller is a verified
// agent principal (spiffe://<td>/agent/<id>; E_ACCESSDENIED otherwise); the
// request carries a Channel-Binding header equal to the server's own
// tls-exporter value for the connection (E_ACCESSDENIED); the body is valid
// (E_INVALIDARG, RPC_X_NULL_REF_POINTER); the job exists (BG_E_NOT_FOUND);
// the agent holds the job's current lease (E_ACCESSDENIED); the job is
// CONNECTING or TRANSFERRING (BG_E_INVALID_STATE); the job has a client
// certificate (CRYPT_E_NOT_FOUND); and Vault.Key gives it, which checks the
// owner's right to the store and appends the KeyReleased audit event before
// anything is released (audit log unwritable: 503
// ERROR_SERVICE_UNAVAILABLE, nothing released). Every refusal of a
// verified caller is a KeyReleaseDenied event (best effort: the refusal
// stands if it cannot be written).
func (v *Vault) ReleaseHandler(auth *identity.Authenticator, jobs *jobstore.Repo) http.Handler {
	return releaseEndpoint(v, "release keys", auth, jobs, v.release)
}

// releaseEndpoint is the HTTP edge shared by the key and header releases:
// POST only, fail closed when not configured, the caller's request ID, and
// errors as problem documents.
func releaseEndpoint[T any](v *Vault, what string, auth *identity.Authenticator, jobs *jobstore.Repo,
	do func(http.ResponseWriter, *http.Request, *identity.Authenticator, *jobstore.Repo) (T, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			v.releaseProblem(w, r, &job.Error{Code: httpapi.WithStatus(job.E_NOTIMPL, http.StatusMethodNotAllowed),
				Detail: fmt.Sprintf("method %s is not allowed here; use POST", r.Method)})
			return
		}
		if auth == nil || jobs == nil || jobs.Store == nil { // fail closed
			v.releaseProblem(w, r, internal(what, errors.New("release handler not configured")))
			return
		}
		if id := r.Header.Get("X-Request-Id"); validRequestID(id) {
			r = r.WithContext(withRequestID(r.Context(), id))
		}
		rel, err := do(w, r, auth, jobs)
		if err != nil {
			v.releaseProblem(w, r, err)
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, rel)
	})
}

// releaseCall is what the checks shared by both releases (keys and
// write-only header values) learnt about a request.
type releaseCall struct {
	principal string // the caller's verified principal
	binding   string // the connection's Channel-Binding value
	pub       hpke.PublicKey
	jobID     string   // the job named, when it is a valid ID
	job       *job.Job // the job replayed from its events, once loaded
}

// admit runs, in order, the checks that both releases share: a verified
// agent principal with an agent ID, the connection's channel binding, a
// valid body, the job (from its events), the agent's lease on it, and its
// state (CONNECTING or TRANSFERRING). what names what is released, for the
// refusals. deny audits a refusal of a verified caller with what the
// checks found so far and returns the error to answer; a caller that is not
// a verified principal with a role is refused without an audit (nobody to
// name).
func admit(w http.ResponseWriter, r *http.Request, auth *identity.Authenticator, jobs *jobstore.Repo, what string,
	deny func(*releaseCall, error) error) (*releaseCall, error) {
	ctx := r.Context()
	s, ok := identity.SessionFrom(ctx)
	if !ok {
		s, _ = auth.Authenticate(r)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	c := &releaseCall{principal: s.Principal}
	refuse := func(err error) (*releaseCall, error) { return nil, deny(c, err) }
	if err := s.RequireRole(identity.RoleAgent); err != nil {
		return refuse(err)
	}
	agentID, ok := auth.Roles.AgentID(s.Principal)
	if !ok {
		return refuse(job.Errorf(job.E_ACCESSDENIED, "principal %s has no agent ID (%s are released only to spiffe://%s/agent/<id>)", s.Principal, what, auth.Roles.TrustDomain))
	}
	if err := identity.CheckChannelBinding(r); err != nil {
		return refuse(err)
	}
	binding, err := identity.ChannelBinding(r.TLS)
	if err != nil { // checked just above; cannot happen
		return refuse(&job.Error{Code: job.E_ACCESSDENIED, Detail: "this connection has no tls-exporter channel binding", Err: err})
	}
	c.binding = binding

	var body ReleaseRequest
	if err := httpapi.DecodeJSON(w, r, &body, maxReleaseBody); err != nil {
		return refuse(err)
	}
	if events.ValidID(body.JobID) {
		c.jobID = body.JobID
	}
	if body.JobID == "" {
		return refuse(job.Errorf(job.RPC_X_NULL_REF_POINTER, "job_id is required"))
	}
	if len(body.HPKEPublicKey) == 0 {
		return refuse(job.Errorf(job.RPC_X_NULL_REF_POINTER, "hpke_public_key is required: a fresh X25519 public key (32 bytes, base64)"))
	}
	if c.pub, err = releaseKEM.NewPublicKey(body.HPKEPublicKey); err != nil {
		return refuse(job.Errorf(job.E_INVALIDARG, "hpke_public_key is not an X25519 public key (32 bytes, base64)"))
	}

	j, err := jobs.Load(ctx, body.JobID)
	if err == nil && leaseRefusal(&j, agentID, what) != nil {
		// Reads may come from a replica a few events behind the one the
		// agent wrote its lease to: before refusing, read the job up to
		// where the stream leader says it ends, and decide on that.
		j, err = jobs.LoadLatest(ctx, body.JobID)
	}
	if err != nil {
		var je *job.Error
		if !errors.As(err, &je) {
			err = unavailable("read the job", err)
		}
		return refuse(err)
	}
	c.job = &j
	if err := leaseRefusal(&j, agentID, what); err != nil {
		return refuse(err)
	}
	return c, nil
}

// leaseRefusal says why agentID may not have what of job j released: it
// does not hold the job's lease, or the job is not transferring.
func leaseRefusal(j *job.Job, agentID, what string) error {
	if j.Agent == "" || j.Agent != agentID {
		return job.Errorf(job.E_ACCESSDENIED, "the agent does not hold the job's lease")
	}
	if j.State != job.Connecting && j.State != job.Transferring {
		return job.Errorf(job.BG_E_INVALID_STATE, "the job is %s; %s are released only while it is CONNECTING or TRANSFERRING", j.State, what)
	}
	return nil
}

// newGrantID is a fresh grant ID: 16 random bytes in hex.
func newGrantID() string {
	grant := make([]byte, 16)
	_, _ = rand.Read(grant) // crypto/rand.Read does not fail
	return hex.EncodeToString(grant)
}

// keyRequest is the KeyRequest of a release call: the job's certificate
// (named in denials too, so they are in its history,
// ferry.evt.vault.<sha1>), its owner and the lease, once the job is known.
func keyRequest(c *releaseCall, roles identity.RoleMap) KeyRequest {
	req := KeyRequest{Agent: c.principal, Job: c.jobID}
	if j := c.job; j != nil {
		req.Lease = fmt.Sprint(j.Attempt)
		req.Owner = Caller{Principal: j.Owner, Role: string(roles.RoleOf(j.Owner))}
		if ref := j.ClientCertificate; ref != nil {
			req.Location, _ = ParseLocation(ref.Location)
			req.Store = ref.Store
			req.SHA1, _ = ParseThumbprint(ref.SHA1)
		}
	}
	return req
}

// release runs the checks and the release. Refusals it decides itself are
// audited here; Key audits its own.
func (v *Vault) release(w http.ResponseWriter, r *http.Request, auth *identity.Authenticator, jobs *jobstore.Repo) (*Release, error) {
	ctx := r.Context()
	deny := func(c *releaseCall, err error) error {
		req := keyRequest(c, auth.Roles)
		if aerr := v.DenyRelease(ctx, req, err); aerr != nil {
			v.log.Error().Err(aerr).Str("agent", req.Agent).Str("job", req.Job).Msg("audit of a refused key release failed")
		}
		v.log.Warn().Str("agent", req.Agent).Str("job", req.Job).Str("code", job.CodeOf(err).Symbol).Msg("key release refused")
		return err
	}
	c, err := admit(w, r, auth, jobs, "keys", deny)
	if err != nil {
		return nil, err
	}
	ref := c.job.ClientCertificate
	if ref == nil {
		return nil, deny(c, job.Errorf(job.CRYPT_E_NOT_FOUND, "the job has no client certificate"))
	}
	if _, err := ParseLocation(ref.Location); err != nil {
		return nil, deny(c, err)
	}
	if _, err := ParseThumbprint(ref.SHA1); err != nil {
		return nil, deny(c, err)
	}
	req := keyRequest(c, auth.Roles)
	req.GrantID = newGrantID()

	// Key audits (KeyReleased before returning, KeyReleaseDenied on its
	// own refusals) and fails closed.
	cert, err := v.Key(ctx, req)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, internal("encode the private key", err)
	}
	sealed, err := hpke.Seal(c.pub, releaseKDF, releaseAEAD, releaseInfo(c.binding, req.GrantID), der)
	clear(der)
	if err != nil {
		return nil, internal("seal the private key", err)
	}
	cert.PrivateKey = nil
	leaf := cert.Leaf
	s1, s256 := sha1.Sum(leaf.Raw), sha256.Sum256(leaf.Raw)
	return &Release{
		SHA1: hex.EncodeToString(s1[:]), SHA256: hex.EncodeToString(s256[:]),
		Chain: cert.Certificate, SealedKey: sealed, GrantID: req.GrantID,
		Suite: ReleaseSuite, NotAfter: leaf.NotAfter.UTC(),
	}, nil
}

// releaseProblem answers with a problem document and logs internal errors
// (never a body, header or key).
func (v *Vault) releaseProblem(w http.ResponseWriter, r *http.Request, err error) {
	if p := httpapi.WriteError(w, r, err); p.Status >= 500 {
		v.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("key release failed")
	}
}
