package certvault

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
)

// Write-only custom headers (BITS MakeCustomHeadersWriteOnly): a job's
// custom header lines whose values nobody may read back. certvault keeps
// them like private keys — sealed with the same AES-256-GCM envelope under
// the keyring, rewrapped by rotations — one record per job, and hands them
// out only through the header release endpoint, to the agent holding the
// job's lease. Events, logs and answers name the headers, never their
// values.

// headerRecord is a job's write-only header values, stored under headerKey.
// The envelope is bound to the job and to the owner who stored it, so a
// record copied to another job or relabelled with another owner does not
// open.
type headerRecord struct {
	V     int    `json:"v"`
	Job   string `json:"job"`
	Owner string `json:"owner"`
	// Names are the header names, one per line, in order: what the job's
	// options list (events.JobOptions.WriteOnlyHeaders).
	Names []string `json:"names"`
	// Values is the JSON array of the "Name: value" lines, sealed.
	Values   sealedKey `json:"values"`
	StoredAt time.Time `json:"stored_at"`
	// StoreEvent is the ID of the WriteOnlyHeadersStored event of this
	// version of the record.
	StoreEvent string `json:"store_event"`
}

// headerKey is the KV key of a job's record: "h.<base64url(job ID)>".
func headerKey(jobID string) string {
	return "h." + base64.RawURLEncoding.EncodeToString([]byte(jobID))
}

// headerIdentityLabel starts the identity a header record's envelope is
// bound to. Read as the 4-byte length that starts a certificate record's
// identity, it is far above MaxPrincipalLen, so no certificate record has
// this identity.
const headerIdentityLabel = "ferry/certvault/headers/v1\x00"

func headerIdentity(jobID, owner string) []byte {
	b := make([]byte, 0, len(headerIdentityLabel)+8+len(jobID)+len(owner))
	b = append(b, headerIdentityLabel...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(jobID)))
	b = append(b, jobID...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(owner)))
	return append(b, owner...)
}

// checkHeaderJob refuses a job ID that cannot name a record and its audit
// subject (events.VaultHeadersID).
func checkHeaderJob(jobID string) error {
	switch {
	case jobID == "":
		return job.Errorf(job.RPC_X_NULL_REF_POINTER, "the job ID is required")
	case !events.ValidID(jobID) || !events.ValidID(events.VaultHeadersID(jobID)):
		return job.Errorf(job.E_INVALIDARG, "the job ID %q cannot name write-only headers", truncate(jobID, 40))
	}
	return nil
}

// StoreHeaders stores the values of job jobID's write-only custom headers
// ("Name: value" lines, validated like SetCustomHeaders input:
// job.ValidateCustomHeaders), replacing any the job had, and returns their
// names in order. owner is the job's owner: the release checks that the
// job still has this owner. The caller (the coordinator, in process) has
// checked that owner owns the job and may change it; certvault keeps the
// values and audits.
//
// Order of writes (fail closed): the lines are sealed in memory; the
// WriteOnlyHeadersStored event (names only) is appended; only then is the
// record written. No event, nothing stored.
func (v *Vault) StoreHeaders(ctx context.Context, owner Caller, jobID string, headers []string) ([]string, error) {
	if err := owner.check(); err != nil {
		return nil, err
	}
	if err := checkHeaderJob(jobID); err != nil {
		return nil, err
	}
	lines, err := job.ValidateCustomHeaders(headers)
	if err != nil {
		return nil, err
	}
	if len(lines) == 0 {
		return nil, job.Errorf(job.RPC_X_NULL_REF_POINTER, "no custom headers given")
	}
	names := job.HeaderNames(lines)
	plain, err := json.Marshal(lines)
	if err != nil {
		return nil, internal("encode the headers", err)
	}
	defer clear(plain)
	// Shared hold of the keyring until the record is stored (see keyMu).
	v.keyMu.RLock()
	defer v.keyMu.RUnlock()
	sealed, err := seal(v.keys, headerIdentity(jobID, owner.Principal), plain)
	if err != nil {
		return nil, internal("seal the headers", err)
	}
	key := headerKey(jobID)
	var rev uint64
	switch e, err := v.kv.Get(ctx, key); {
	case err == nil:
		rev = e.Revision()
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, unavailable("read the job's headers", err)
	}
	evID, err := v.audit(ctx, events.VaultHeadersID(jobID), owner.Principal, &events.WriteOnlyHeadersStored{
		Job: jobID, Owner: owner.Principal, Names: names, KEKVersion: sealed.KEK, Replaced: rev != 0,
	})
	if err != nil {
		return nil, auditFailed("nothing was stored", err)
	}
	val, err := json.Marshal(headerRecord{V: 1, Job: jobID, Owner: owner.Principal, Names: names,
		Values: sealed, StoredAt: v.now().UTC(), StoreEvent: evID})
	if err != nil {
		return nil, internal("encode the record", err)
	}
	if rev == 0 {
		_, err = v.kv.Create(ctx, key, val)
	} else {
		_, err = v.kv.Update(ctx, key, val, rev)
	}
	if err != nil {
		return nil, afterAudit("store the job's headers", evID, err)
	}
	v.log.Info().Str("principal", owner.Principal).Str("job", jobID).Strs("names", names).Bool("replaced", rev != 0).
		Msg("write-only headers stored")
	return names, nil
}

// DeleteHeaders deletes job jobID's write-only header values, if certvault
// has any, and reports whether it had. reason goes in the
// WriteOnlyHeadersDeleted event (events.HeadersDeletedByOwner,
// events.HeadersDeletedOwnershipMoved), which is appended before the record
// is purged (no revision is kept). actor is who asked (the owner, or the
// administrator who took ownership).
func (v *Vault) DeleteHeaders(ctx context.Context, actor Caller, jobID, reason string) (bool, error) {
	if err := actor.check(); err != nil {
		return false, err
	}
	if err := checkHeaderJob(jobID); err != nil {
		return false, err
	}
	rec, rev, err := v.headerRecord(ctx, jobID)
	if err != nil || rev == 0 {
		return false, err
	}
	evID, err := v.audit(ctx, events.VaultHeadersID(jobID), actor.Principal, &events.WriteOnlyHeadersDeleted{
		Job: jobID, Names: rec.Names, Reason: reason,
	})
	if err != nil {
		return false, auditFailed("nothing was deleted", err)
	}
	if err := v.kv.Purge(ctx, headerKey(jobID), jetstream.LastRevision(rev)); err != nil {
		return false, afterAudit("delete the job's headers", evID, err)
	}
	v.log.Info().Str("principal", actor.Principal).Str("job", jobID).Strs("names", rec.Names).Str("reason", reason).
		Msg("write-only headers deleted")
	return true, nil
}

// headerRecord reads a job's record; revision 0 when there is none.
func (v *Vault) headerRecord(ctx context.Context, jobID string) (headerRecord, uint64, error) {
	e, err := v.kv.Get(ctx, headerKey(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return headerRecord{}, 0, nil
	}
	if err != nil {
		return headerRecord{}, 0, unavailable("read the job's headers", err)
	}
	var rec headerRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Job != jobID {
		return headerRecord{}, 0, internal("decode a header record", fmt.Errorf("%s: %v", e.Key(), err))
	}
	return rec, e.Revision(), nil
}

// HeadersRequest asks for a job's write-only header values on behalf of
// the agent holding its lease. Owner and Names are the job's, as its events
// say now; Agent, Lease and GrantID go in the audit event.
type HeadersRequest struct {
	Job   string
	Owner string
	Names []string

	Agent   string
	Lease   string
	GrantID string
}

// Headers decrypts a job's write-only header values and returns the
// "Name: value" lines. It is for the header release endpoint alone, after
// it has verified the agent, its lease, the job's state and the channel
// binding: Headers checks none of those. It does check that the record
// matches the job as its events say now — stored by the job's current owner
// (E_ACCESSDENIED otherwise) for the names the job lists (ERROR_NOT_FOUND
// otherwise: a stale record is never released) — and it audits: a
// WriteOnlyHeadersReleased event is appended before the values are returned
// (no event, no values), and a refusal is a WriteOnlyHeadersReleaseDenied
// event (best effort).
func (v *Vault) Headers(ctx context.Context, req HeadersRequest) ([]string, error) {
	keys := v.keyring() // before the record is read: see Key
	lines, err := v.openHeaders(ctx, keys, req)
	if err != nil {
		if aerr := v.DenyHeaders(ctx, req, err); aerr != nil {
			v.log.Error().Err(aerr).Str("job", req.Job).Msg("audit of a refused header release failed")
		}
		return nil, err
	}
	_, err = v.audit(ctx, events.VaultHeadersID(req.Job), req.Agent, &events.WriteOnlyHeadersReleased{
		Job: req.Job, Owner: req.Owner, Agent: req.Agent, Lease: req.Lease, GrantID: req.GrantID, Names: req.Names,
	})
	if err != nil {
		clearLines(lines)
		return nil, auditFailed("the headers were not released", err)
	}
	v.log.Info().Str("agent", req.Agent).Str("job", req.Job).Strs("names", req.Names).Msg("write-only headers released")
	return lines, nil
}

func (v *Vault) openHeaders(ctx context.Context, keys *Keyring, req HeadersRequest) ([]string, error) {
	if err := checkPrincipal(req.Agent); err != nil {
		return nil, job.Errorf(job.E_ACCESSDENIED, "the release has no agent principal")
	}
	if err := checkHeaderJob(req.Job); err != nil {
		return nil, err
	}
	if len(req.Names) == 0 {
		return nil, job.Errorf(job.ERROR_NOT_FOUND, "the job has no write-only custom headers")
	}
	rec, rev, err := v.headerRecord(ctx, req.Job)
	switch {
	case err != nil:
		return nil, err
	case rev == 0:
		return nil, job.Errorf(job.ERROR_NOT_FOUND, "certvault holds no write-only header values for the job")
	case rec.Owner != req.Owner:
		return nil, job.Errorf(job.E_ACCESSDENIED, "the job's write-only header values were stored by an earlier owner of the job")
	case !slices.Equal(rec.Names, req.Names):
		return nil, job.Errorf(job.ERROR_NOT_FOUND, "the stored write-only header values are not those of the headers the job lists (stale values are never released)")
	}
	plain, err := open(keys, headerIdentity(rec.Job, rec.Owner), rec.Values)
	if err != nil {
		return nil, internal("decrypt the headers", err)
	}
	defer clear(plain)
	var lines []string
	if err := json.Unmarshal(plain, &lines); err != nil || !slices.Equal(job.HeaderNames(lines), rec.Names) {
		clearLines(lines)
		return nil, internal("decode the headers", errors.New("the decrypted headers do not match the record's names"))
	}
	return lines, nil
}

// DenyHeaders appends a WriteOnlyHeadersReleaseDenied event for req with
// the code of reason. The release endpoint calls it for the refusals it
// decides itself; Headers calls it for its own.
//
// A refusal decided before the request named a job (the caller's role or
// channel binding, the body) goes on ferry.evt.vault.headers- (the
// subject of job "", which no job has), as key release refusals that name
// no certificate go on the all-zero thumbprint.
func (v *Vault) DenyHeaders(ctx context.Context, req HeadersRequest, reason error) error {
	if checkHeaderJob(req.Job) != nil {
		req.Job = ""
	}
	code := job.CodeOf(reason)
	detail := code.Message
	var je *job.Error
	if errors.As(reason, &je) && je.Detail != "" {
		detail = je.Detail
	}
	_, err := v.audit(ctx, events.VaultHeadersID(req.Job), req.Agent, &events.WriteOnlyHeadersReleaseDenied{
		Job: req.Job, Owner: req.Owner, Agent: req.Agent, Lease: req.Lease, GrantID: req.GrantID,
		Code: code.Symbol, HResult: code.HResultString(), Reason: detail,
	})
	return err
}

// clearLines drops a slice's references to decrypted lines (Go strings
// cannot be zeroed; the byte buffers they came from are).
func clearLines(lines []string) {
	for i := range lines {
		lines[i] = ""
	}
}
