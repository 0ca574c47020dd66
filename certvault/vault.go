package certvault

import (
	"cmp"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Bucket is the JetStream key-value bucket of the certificate stores.
const Bucket = "ferry_certs"

// Vault is the certificate vault: stores addressed by (location, name) with
// certificates and their private keys, encrypted at rest, in the KV bucket
// ferry_certs, and an audit event for every change and key release in the
// event log. It is safe for concurrent use and owns no goroutines.
type Vault struct {
	kv     jetstream.KeyValue
	store  events.Store
	log    zerolog.Logger
	now    func() time.Time
	pfxSem chan struct{}

	// keys is the keyring in use: read it with keyring(); RotateKey
	// swaps it (setKeyring). keyMu guards it, and Import holds it shared
	// from sealing a record to writing it, so that a swap waits for the
	// imports sealed with the old active version to be stored: a scan
	// after the swap sees every record wrapped with an older version.
	// (Pointers, so that copies of a Vault share them.)
	keys  *Keyring
	keyMu *sync.RWMutex
	// rotMu runs one RotateKey at a time in this process (the keyring
	// file's lock does it across processes).
	rotMu *sync.Mutex
	// keyFile is the keyring file rotations are written to ("" when the
	// keyring came from the environment or from code); keySource names
	// the source (KeyringInFile, KeyringInEnv, KeyringInMemory).
	keyFile   string
	keySource string
}

// Option adjusts New.
type Option func(*options)

type options struct {
	now      func() time.Time
	replicas int
}

// WithClock sets the clock used for import times, audit events and the
// validity check of LookupBySubject (default time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithReplicas sets the replicas of the bucket (default 1; 3 on a cluster).
func WithReplicas(n int) Option { return func(o *options) { o.replicas = n } }

// New opens the vault: it creates or updates the bucket ferry_certs (file
// storage, one revision per key, so a rewrapped or removed key leaves no
// older copy behind) and checks that keyring opens every record there:
// every key-encryption key version in use must be in the keyring and be the
// right key. It fails otherwise, naming the versions, rather than failing
// later on one certificate.
func New(ctx context.Context, js jetstream.JetStream, store events.Store, keyring *Keyring, log zerolog.Logger, opts ...Option) (*Vault, error) {
	o := options{now: time.Now, replicas: 1}
	for _, opt := range opts {
		opt(&o)
	}
	var problems []error
	if js == nil {
		problems = append(problems, errors.New("no JetStream"))
	}
	if store == nil {
		problems = append(problems, errors.New("no event store (audit is required)"))
	}
	if keyring == nil || len(keyring.keys) == 0 {
		problems = append(problems, errors.New("no keyring"))
	}
	if o.replicas < 1 || o.replicas > 5 {
		problems = append(problems, fmt.Errorf("replicas %d not in 1..5", o.replicas))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, fmt.Errorf("certvault: %w", err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:       Bucket,
		Description:  "ferry certvault: certificate stores, private keys encrypted (AES-256-GCM envelope)",
		History:      1,
		Storage:      jetstream.FileStorage,
		Replicas:     o.replicas,
		MaxValueSize: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("certvault: ensure bucket %s: %w", Bucket, err)
	}
	v := &Vault{
		kv: kv, store: store, keys: keyring, log: log, now: o.now,
		pfxSem: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)),
		keyMu:  new(sync.RWMutex), rotMu: new(sync.Mutex),
		keyFile: keyring.file, keySource: keyring.source(),
	}
	if err := v.checkKeyring(ctx, keyring); err != nil {
		return nil, err
	}
	return v, nil
}

// record is one certificate in one store, as stored under certKey. Info's
// Location and Store are the canonical ones (not a USERS/SERVICES view).
type record struct {
	V        int       `json:"v"`
	Scope    string    `json:"scope,omitempty"`
	Location Location  `json:"location"`
	Store    string    `json:"store"`
	Info     CertInfo  `json:"info"`
	Format   string    `json:"format"`
	Chain    [][]byte  `json:"chain"` // DER, leaf first
	Key      sealedKey `json:"key"`
	// ImportEvent is the ID of the CertificateImported event of this
	// version of the record.
	ImportEvent string `json:"import_event"`
}

// storeMarker records that an application-defined store exists.
type storeMarker struct {
	V         int       `json:"v"`
	Scope     string    `json:"scope,omitempty"`
	Location  Location  `json:"location"`
	Store     string    `json:"store"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

// KV layout. Keys are "c.<scope>.<location>.<store>.<sha1>" for
// certificates and "s.<scope>.<location>.<store>" for application-defined
// stores, where <scope> is "-" for the shared locations and "p" + the
// base64url of the owner principal otherwise, <location> is the digit, and
// <store> the base64url of the canonical name: any principal and store name
// becomes a valid key token, and one store's certificates share a prefix.
func scopeToken(scope string) string {
	if scope == "" {
		return "-"
	}
	return "p" + base64.RawURLEncoding.EncodeToString([]byte(scope))
}

func (r storeRef) prefix() string {
	return scopeToken(r.Scope) + "." + strconv.Itoa(int(r.Location)) + "." + base64.RawURLEncoding.EncodeToString([]byte(r.Store))
}

func (r storeRef) certKey(sha1 [20]byte) string {
	return "c." + r.prefix() + "." + hex.EncodeToString(sha1[:])
}
func (r storeRef) storeKey() string   { return "s." + r.prefix() }
func (r storeRef) certFilter() string { return "c." + r.prefix() + ".*" }

// Import stores a certificate with its private key in a store the caller may
// change, creating an application-defined store on its first import.
// Importing a certificate that is already in the store replaces it.
//
// Order of writes (fail closed): the request is parsed and the key sealed
// in memory; then the CertificateImported event is appended; only then are
// the store marker and the record written. If the audit append fails,
// nothing is written. If a KV write fails after the audit, Import returns an
// error and the log holds an event for an import that did not take effect —
// the log may over-report, never under-report. The record names its event
// (import_event) so the two can be matched.
func (v *Vault) Import(ctx context.Context, caller Caller, loc Location, store string, req ImportRequest) (CertInfo, error) {
	ref, view, err := resolve(caller, loc, store, opWrite)
	if err != nil {
		return CertInfo{}, err
	}
	b, err := v.parse(ctx, req)
	if err != nil {
		return CertInfo{}, err
	}
	defer clear(b.pkcs8)
	sum := sha1.Sum(b.leaf.Raw)
	// Shared hold of the keyring until the record is stored (see keyMu).
	v.keyMu.RLock()
	defer v.keyMu.RUnlock()
	sealed, err := seal(v.keys, ref.identity(sum), b.pkcs8)
	if err != nil {
		return CertInfo{}, internal("seal the private key", err)
	}
	info := b.info()
	info.Location, info.Store = ref.Location, ref.Store
	info.ImportedBy, info.ImportedAt = caller.Principal, v.now().UTC()

	key := ref.certKey(sum)
	var rev uint64
	switch e, err := v.kv.Get(ctx, key); {
	case err == nil:
		rev = e.Revision()
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return CertInfo{}, unavailable("read the store", err)
	}
	hasStore, err := v.storeExists(ctx, ref)
	if err != nil {
		return CertInfo{}, err
	}

	evID, err := v.audit(ctx, hex.EncodeToString(sum[:]), caller.Principal, &events.CertificateImported{
		Scope: ref.Scope, Location: ref.Location.String(), Store: ref.Store,
		SHA1: info.SHA1, SHA256: info.SHA256, Subject: info.Subject, Issuer: info.Issuer,
		Serial: info.Serial, NotAfter: info.NotAfter, ChainLen: info.ChainLen,
		Format: b.format, KEKVersion: sealed.KEK, Replaced: rev != 0,
	})
	if err != nil {
		return CertInfo{}, auditFailed("nothing was imported", err)
	}

	if !hasStore {
		m, _ := json.Marshal(storeMarker{V: 1, Scope: ref.Scope, Location: ref.Location, Store: ref.Store,
			CreatedBy: caller.Principal, CreatedAt: info.ImportedAt})
		if _, err := v.kv.Create(ctx, ref.storeKey(), m); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return CertInfo{}, afterAudit("create the store", evID, err)
		}
	}
	val, err := json.Marshal(record{V: 1, Scope: ref.Scope, Location: ref.Location, Store: ref.Store,
		Info: info, Format: b.format, Chain: b.chainDER(), Key: sealed, ImportEvent: evID})
	if err != nil {
		return CertInfo{}, internal("encode the record", err)
	}
	if rev == 0 {
		_, err = v.kv.Create(ctx, key, val)
	} else {
		_, err = v.kv.Update(ctx, key, val, rev)
	}
	if err != nil {
		return CertInfo{}, afterAudit("store the certificate", evID, err)
	}
	v.log.Info().Str("principal", caller.Principal).Stringer("location", ref.Location).Str("store", ref.Store).
		Str("scope", ref.Scope).Str("sha1", info.SHA1).Str("format", b.format).Bool("replaced", rev != 0).
		Msg("certificate imported")
	info.Location, info.Store = view.Location, view.Store
	return info, nil
}

// parse parses an import, bounding concurrent PKCS#12 decodes (their key
// derivations are CPU-bound).
func (v *Vault) parse(ctx context.Context, req ImportRequest) (*bundle, error) {
	if len(req.PFX) > 0 {
		select {
		case v.pfxSem <- struct{}{}:
			defer func() { <-v.pfxSem }()
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	return parseImport(req)
}

// Remove deletes a certificate and its encrypted key from a store the caller
// may change: ERROR_FILE_NOT_FOUND if the store does not exist,
// CRYPT_E_NOT_FOUND if the certificate is not in it. The CertificateRemoved
// event is appended first; the record is purged (no revision is kept) only
// after it.
func (v *Vault) Remove(ctx context.Context, caller Caller, loc Location, store string, sum [20]byte) error {
	ref, _, err := resolve(caller, loc, store, opWrite)
	if err != nil {
		return err
	}
	rec, rev, err := v.get(ctx, ref, sum)
	if err != nil {
		return err
	}
	evID, err := v.audit(ctx, hex.EncodeToString(sum[:]), caller.Principal, &events.CertificateRemoved{
		Scope: ref.Scope, Location: ref.Location.String(), Store: ref.Store,
		SHA1: rec.Info.SHA1, SHA256: rec.Info.SHA256,
	})
	if err != nil {
		return auditFailed("nothing was removed", err)
	}
	if err := v.kv.Purge(ctx, ref.certKey(sum), jetstream.LastRevision(rev)); err != nil {
		return afterAudit("remove the certificate", evID, err)
	}
	v.log.Info().Str("principal", caller.Principal).Stringer("location", ref.Location).Str("store", ref.Store).
		Str("scope", ref.Scope).Str("sha1", rec.Info.SHA1).Msg("certificate removed")
	return nil
}

// List returns the certificates of a store the caller may read, metadata
// only, ordered by subject and then thumbprint. ERROR_FILE_NOT_FOUND if the
// store does not exist; an existing empty store gives an empty list.
func (v *Vault) List(ctx context.Context, caller Caller, loc Location, store string) ([]CertInfo, error) {
	ref, view, err := resolve(caller, loc, store, opRead)
	if err != nil {
		return nil, err
	}
	recs, err := v.records(ctx, ref)
	if err != nil {
		return nil, err
	}
	out := make([]CertInfo, 0, len(recs))
	for _, r := range recs {
		info := r.Info
		info.Location, info.Store = view.Location, view.Store
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b CertInfo) int {
		return cmp.Or(cmp.Compare(a.Subject, b.Subject), cmp.Compare(a.SHA1, b.SHA1))
	})
	return out, nil
}

// Lookup returns one certificate of a store the caller may read by its SHA-1
// thumbprint (SetClientCertificateByID): ERROR_FILE_NOT_FOUND if the store
// does not exist, CRYPT_E_NOT_FOUND if the certificate is not in it.
func (v *Vault) Lookup(ctx context.Context, caller Caller, loc Location, store string, sum [20]byte) (CertInfo, error) {
	ref, view, err := resolve(caller, loc, store, opRead)
	if err != nil {
		return CertInfo{}, err
	}
	rec, _, err := v.get(ctx, ref, sum)
	if err != nil {
		return CertInfo{}, err
	}
	info := rec.Info
	info.Location, info.Store = view.Location, view.Store
	return info, nil
}

// LookupBySubject finds the certificate a BITS subject name designates in a
// store the caller may read (SetClientCertificateByName), by the exact rule
// of MatchSubject: among the store's certificates that are valid now and
// whose subject matches, if all share one subject (renewals of one
// identity) the one with the latest NotAfter wins; if they have different
// subjects the name is ambiguous: E_INVALIDARG, naming the candidates, so
// the caller gives a longer name or the thumbprint. No match:
// CRYPT_E_NOT_FOUND (saying so when only expired or not yet valid ones
// match).
func (v *Vault) LookupBySubject(ctx context.Context, caller Caller, loc Location, store, subject string) (CertInfo, error) {
	ref, view, err := resolve(caller, loc, store, opRead)
	if err != nil {
		return CertInfo{}, err
	}
	query, err := ParseSubjectName(subject)
	if err != nil {
		return CertInfo{}, err
	}
	recs, err := v.records(ctx, ref)
	if err != nil {
		return CertInfo{}, err
	}
	now := v.now()
	var (
		valid    []*record
		subjects [][]byte
		outside  int
	)
	for i := range recs {
		r := &recs[i]
		leaf, err := x509.ParseCertificate(r.Chain[0])
		if err != nil {
			return CertInfo{}, internal("parse a stored certificate", err)
		}
		if !query.Matches(leaf) {
			continue
		}
		if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			outside++
			continue
		}
		valid = append(valid, r)
		if !slices.ContainsFunc(subjects, func(s []byte) bool { return string(s) == string(leaf.RawSubject) }) {
			subjects = append(subjects, leaf.RawSubject)
		}
	}
	switch {
	case len(valid) == 0 && outside > 0:
		return CertInfo{}, job.Errorf(job.CRYPT_E_NOT_FOUND, "%d certificates in %s\\%s match %q but none is valid now", outside, view.Location, view.Store, subject)
	case len(valid) == 0:
		return CertInfo{}, job.Errorf(job.CRYPT_E_NOT_FOUND, "no certificate in %s\\%s matches the subject name %q", view.Location, view.Store, subject)
	case len(subjects) > 1:
		return CertInfo{}, ambiguous(subject, valid)
	}
	best := slices.MaxFunc(valid, func(a, b *record) int {
		return cmp.Or(a.Info.NotAfter.Compare(b.Info.NotAfter), a.Info.NotBefore.Compare(b.Info.NotBefore), cmp.Compare(a.Info.SHA1, b.Info.SHA1))
	})
	info := best.Info
	info.Location, info.Store = view.Location, view.Store
	return info, nil
}

func ambiguous(subject string, recs []*record) error {
	const show = 5
	var list string
	for i, r := range recs {
		if i == show {
			list += fmt.Sprintf("; and %d more", len(recs)-show)
			break
		}
		if i > 0 {
			list += "; "
		}
		list += fmt.Sprintf("%s (sha1 %s)", r.Info.Subject, r.Info.SHA1)
	}
	return job.Errorf(job.E_INVALIDARG, "the subject name %q is ambiguous: it matches certificates with different subjects: %s; give more of the name or the thumbprint", subject, list)
}

// KeyRequest asks for a certificate's private key on behalf of a job. The
// certificate is looked up as Owner, the job's owner, would see it (with
// Owner's right to read the location); Agent, Job, Lease and GrantID go in
// the audit event.
type KeyRequest struct {
	Owner    Caller
	Location Location
	Store    string
	SHA1     [20]byte

	Agent   string
	Job     string
	Lease   string
	GrantID string
}

// Key decrypts a certificate's private key and returns it with its chain.
// It is the only way key bytes leave the vault, and it is for the release
// endpoint alone, after it has verified the agent, its lease, the grant and
// the channel binding: Key checks none of those. It does check the owner's
// right to the store, and it audits: a KeyReleased event is appended before
// the key is returned (no event, no key), and a refusal is a
// KeyReleaseDenied event (best effort: the refusal stands even if the
// event cannot be written).
func (v *Vault) Key(ctx context.Context, req KeyRequest) (*tls.Certificate, error) {
	// The keyring is taken before the record is read: a rotation adds
	// the new version before it rewraps and drops old versions only after,
	// so this keyring opens whatever version the record has.
	keys := v.keyring()
	ref, _, err := resolve(req.Owner, req.Location, req.Store, opRead)
	if err == nil && checkPrincipal(req.Agent) != nil {
		err = job.Errorf(job.E_ACCESSDENIED, "the release has no agent principal")
	}
	var cert *tls.Certificate
	var rec record
	if err == nil {
		rec, _, err = v.get(ctx, ref, req.SHA1)
	}
	if err == nil {
		cert, err = decrypt(keys, ref, req.SHA1, &rec)
	}
	if err != nil {
		if aerr := v.DenyRelease(ctx, req, err); aerr != nil {
			v.log.Error().Err(aerr).Str("sha1", hex.EncodeToString(req.SHA1[:])).Msg("audit of a refused key release failed")
		}
		return nil, err
	}
	_, err = v.audit(ctx, hex.EncodeToString(req.SHA1[:]), req.Agent, &events.KeyReleased{
		Scope: ref.Scope, Location: ref.Location.String(), Store: ref.Store,
		SHA1: rec.Info.SHA1, SHA256: rec.Info.SHA256,
		Owner: req.Owner.Principal, Agent: req.Agent, Job: req.Job, Lease: req.Lease, GrantID: req.GrantID,
	})
	if err != nil {
		return nil, auditFailed("the key was not released", err)
	}
	v.log.Info().Str("agent", req.Agent).Str("job", req.Job).Str("sha1", rec.Info.SHA1).Msg("key released")
	return cert, nil
}

func decrypt(keys *Keyring, ref storeRef, sum [20]byte, rec *record) (*tls.Certificate, error) {
	der, err := open(keys, ref.identity(sum), rec.Key)
	if err != nil {
		return nil, internal("decrypt the private key", err)
	}
	defer clear(der)
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, internal("parse the decrypted key", err)
	}
	leaf, err := x509.ParseCertificate(rec.Chain[0])
	if err != nil {
		return nil, internal("parse the stored certificate", err)
	}
	return &tls.Certificate{Certificate: rec.Chain, PrivateKey: key, Leaf: leaf}, nil
}

// DenyRelease appends a KeyReleaseDenied event for req with the code of
// reason. The release endpoint calls it for the refusals it decides itself
// (no lease, bad grant, channel-binding mismatch); Key calls it for its own.
func (v *Vault) DenyRelease(ctx context.Context, req KeyRequest, reason error) error {
	code := job.CodeOf(reason)
	detail := code.Message
	var je *job.Error
	if errors.As(reason, &je) && je.Detail != "" {
		detail = je.Detail
	}
	p := &events.KeyReleaseDenied{
		Location: req.Location.String(), Store: req.Store, SHA1: hex.EncodeToString(req.SHA1[:]),
		Owner: req.Owner.Principal, Agent: req.Agent, Job: req.Job, Lease: req.Lease, GrantID: req.GrantID,
		Code: code.Symbol, HResult: code.HResultString(), Reason: detail,
	}
	// Name the store canonically when the request names one at all.
	if ref, _, err := resolve(req.Owner, req.Location, req.Store, opRead); err == nil {
		p.Scope, p.Location, p.Store = ref.Scope, ref.Location.String(), ref.Store
	}
	_, err := v.audit(ctx, hex.EncodeToString(req.SHA1[:]), req.Agent, p)
	return err
}

// RotateResult reports a rotation.
type RotateResult struct {
	Active    int // the KEK version every record is now wrapped with
	Rewrapped int // records rewrapped by this run
	Current   int // records that were already wrapped with Active
}

// Rotate rewraps the data key of every record that is not wrapped with the
// keyring's active KEK (the private keys' ciphertexts are not touched). It
// is idempotent and resumable: records already on the active version are
// skipped, and each record is rewritten on its own with compare-and-set, so
// an interrupted run is finished by running it again, concurrently with
// imports and removals. When it returns without error, the versions it
// moved away from are unused (KEKVersionsInUse) and may be dropped from the
// keyring once every vault process runs with the new one. A
// VaultKeysRewrapped event records each run that rewrapped anything.
func (v *Vault) Rotate(ctx context.Context) (RotateResult, error) {
	return v.rotate(ctx, true)
}

// rotate is Rotate; with audit, a run that rewrapped records is audited
// after it (RotateKey audits before, itself).
func (v *Vault) rotate(ctx context.Context, audit bool) (RotateResult, error) {
	keys := v.keyring()
	res := RotateResult{Active: keys.Active()}
	var entries []jetstream.KeyValueEntry
	if err := v.scanSealed(ctx, func(e jetstream.KeyValueEntry) error {
		entries = append(entries, e)
		return nil
	}); err != nil {
		return res, unavailable("list the records", err)
	}
	from := map[int]bool{}
	var problems []error
	for _, e := range entries {
		old, done, err := v.rewrapOne(ctx, keys, e)
		switch {
		case err != nil:
			problems = append(problems, fmt.Errorf("%s: %w", e.Key(), err))
		case done:
			res.Rewrapped++
			from[old] = true
		case old == res.Active:
			res.Current++
		}
		if ctx.Err() != nil {
			problems = append(problems, context.Cause(ctx))
			break
		}
	}
	if res.Rewrapped > 0 && audit {
		vs := make([]int, 0, len(from))
		for ver := range from {
			vs = append(vs, ver)
		}
		slices.Sort(vs)
		if _, err := v.audit(ctx, events.VaultKeyringID, "certvault", &events.VaultKeysRewrapped{
			ActiveVersion: res.Active, FromVersions: vs, Rewrapped: res.Rewrapped,
		}); err != nil {
			problems = append(problems, fmt.Errorf("audit the rotation: %w", err))
		}
	}
	v.log.Info().Int("active", res.Active).Int("rewrapped", res.Rewrapped).Int("current", res.Current).
		Int("failed", len(problems)).Msg("key-encryption key rotation")
	if err := errors.Join(problems...); err != nil {
		return res, fmt.Errorf("certvault: rotate: %d records not rewrapped (run again): %w", len(problems), err)
	}
	return res, nil
}

// rewrapOne moves one record to the active KEK, retrying on concurrent
// changes. It returns the version the record had and whether it rewrapped.
func (v *Vault) rewrapOne(ctx context.Context, keys *Keyring, e jetstream.KeyValueEntry) (int, bool, error) {
	for attempt := 0; ; attempt++ {
		rec, err := decodeSealed(e)
		if err != nil {
			return 0, false, err
		}
		old := rec.sealed.KEK
		if old == keys.Active() {
			return old, false, nil
		}
		sealed, err := rewrap(keys, rec.identity, rec.sealed)
		if err != nil {
			return old, false, err
		}
		val, err := rec.with(sealed)
		if err != nil {
			return old, false, err
		}
		_, err = v.kv.Update(ctx, e.Key(), val, e.Revision())
		if err == nil {
			return old, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) || attempt == 3 {
			return old, false, err
		}
		// Changed meanwhile (re-imported, removed): look again.
		if e, err = v.kv.Get(ctx, e.Key()); errors.Is(err, jetstream.ErrKeyNotFound) {
			return old, false, nil
		} else if err != nil {
			return old, false, err
		}
	}
}

// sealedRecord is a stored record of either kind that holds an envelope —
// a certificate (its private key) or a job's write-only headers — as
// rotation sees it: the envelope, the identity it is bound to, and the
// record encoded again with another envelope.
type sealedRecord struct {
	identity []byte
	sealed   sealedKey
	with     func(sealedKey) ([]byte, error)
}

// sealedFilters select every record that holds an envelope.
var sealedFilters = []string{"c.>", "h.>"}

// scanSealed calls fn for every record that holds an envelope.
func (v *Vault) scanSealed(ctx context.Context, fn func(jetstream.KeyValueEntry) error) error {
	for _, f := range sealedFilters {
		if err := v.scan(ctx, f, fn); err != nil {
			return err
		}
	}
	return nil
}

// decodeSealed decodes an entry that scanSealed found.
func decodeSealed(e jetstream.KeyValueEntry) (sealedRecord, error) {
	if strings.HasPrefix(e.Key(), "h.") {
		var rec headerRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return sealedRecord{}, fmt.Errorf("decode %s: %w", e.Key(), err)
		}
		return sealedRecord{identity: headerIdentity(rec.Job, rec.Owner), sealed: rec.Values,
			with: func(s sealedKey) ([]byte, error) { rec.Values = s; return json.Marshal(rec) }}, nil
	}
	var rec record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return sealedRecord{}, fmt.Errorf("decode %s: %w", e.Key(), err)
	}
	sum, err := hex.DecodeString(rec.Info.SHA1)
	if err != nil || len(sum) != 20 {
		return sealedRecord{}, fmt.Errorf("decode %s: bad thumbprint", e.Key())
	}
	ref := storeRef{rec.Scope, rec.Location, rec.Store}
	return sealedRecord{identity: ref.identity([20]byte(sum)), sealed: rec.Key,
		with: func(s sealedKey) ([]byte, error) { rec.Key = s; return json.Marshal(rec) }}, nil
}

// KEKVersionsInUse counts the records (certificates and write-only
// headers) wrapped with each key-encryption key version. A version absent
// from the result may be dropped from the keyring.
func (v *Vault) KEKVersionsInUse(ctx context.Context) (map[int]int, error) {
	use := map[int]int{}
	err := v.scanSealed(ctx, func(e jetstream.KeyValueEntry) error {
		rec, err := decodeSealed(e)
		if err != nil {
			return fmt.Errorf("certvault: %w", err)
		}
		use[rec.sealed.KEK]++
		return nil
	})
	if err != nil {
		return nil, err
	}
	return use, nil
}

// checkKeyring opens one data key per KEK version in use with keys.
func (v *Vault) checkKeyring(ctx context.Context, keys *Keyring) error {
	tried := map[int]bool{}
	var problems []error
	err := v.scanSealed(ctx, func(e jetstream.KeyValueEntry) error {
		rec, err := decodeSealed(e)
		if err != nil {
			return err
		}
		ver := rec.sealed.KEK
		if tried[ver] {
			return nil
		}
		tried[ver] = true
		if !keys.Has(ver) {
			problems = append(problems, fmt.Errorf("records are wrapped with key-encryption key version %d, which is not in the keyring %v", ver, keys))
			return nil
		}
		dek, err := unwrapDEK(keys, rec.identity, rec.sealed)
		clear(dek)
		if err != nil {
			problems = append(problems, fmt.Errorf("key-encryption key version %d in the keyring does not open the records wrapped with version %d: it is not the key they were written with", ver, ver))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("certvault: check keyring: %w", err)
	}
	if err := errors.Join(problems...); err != nil {
		return fmt.Errorf("certvault: keyring: %w", keyringMismatch{err})
	}
	return nil
}

// keyringMismatch is checkKeyring's verdict that a keyring does not open
// the records (rather than that they could not be read).
type keyringMismatch struct{ error }

func (m keyringMismatch) Unwrap() error { return m.error }

// get reads one record: ERROR_FILE_NOT_FOUND if the store does not exist,
// CRYPT_E_NOT_FOUND if it has no such certificate.
func (v *Vault) get(ctx context.Context, ref storeRef, sum [20]byte) (record, uint64, error) {
	e, err := v.kv.Get(ctx, ref.certKey(sum))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		ok, serr := v.storeExists(ctx, ref)
		if serr != nil {
			return record{}, 0, serr
		}
		if !ok {
			return record{}, 0, noStore(ref)
		}
		return record{}, 0, job.Errorf(job.CRYPT_E_NOT_FOUND, "no certificate with thumbprint %x in the store %s", sum, ref.Store)
	}
	if err != nil {
		return record{}, 0, unavailable("read the store", err)
	}
	var rec record
	if err := json.Unmarshal(e.Value(), &rec); err != nil || len(rec.Chain) == 0 {
		return record{}, 0, internal("decode a record", fmt.Errorf("%s: %v", e.Key(), err))
	}
	return rec, e.Revision(), nil
}

// records reads every certificate of a store: ERROR_FILE_NOT_FOUND if the
// store does not exist.
func (v *Vault) records(ctx context.Context, ref storeRef) ([]record, error) {
	ok, err := v.storeExists(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, noStore(ref)
	}
	var out []record
	err = v.scan(ctx, ref.certFilter(), func(e jetstream.KeyValueEntry) error {
		var rec record
		if err := json.Unmarshal(e.Value(), &rec); err != nil || len(rec.Chain) == 0 {
			return internal("decode a record", fmt.Errorf("%s: %v", e.Key(), err))
		}
		out = append(out, rec)
		return nil
	})
	if err != nil {
		var je *job.Error
		if errors.As(err, &je) {
			return nil, err
		}
		return nil, unavailable("list the store", err)
	}
	return out, nil
}

// storeExists: the four system stores always exist; an application-defined
// one exists from its first import on (and stays when emptied).
func (v *Vault) storeExists(ctx context.Context, ref storeRef) (bool, error) {
	if wellKnown(ref.Store) {
		return true, nil
	}
	_, err := v.kv.Get(ctx, ref.storeKey())
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	}
	return false, unavailable("read the store", err)
}

// scan calls fn for the current value of every key matching filter.
func (v *Vault) scan(ctx context.Context, filter string, fn func(jetstream.KeyValueEntry) error) error {
	w, err := v.kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errors.New("certvault: watch ended early")
			case e == nil: // every current value was delivered
				return nil
			}
			if err := fn(e); err != nil {
				return err
			}
		}
	}
}

// audit appends one vault event on ferry.evt.vault.<id> and returns its ID.
// The subject's last sequence is read before each attempt: vault events
// make no decision on earlier ones, so a conflict only means another writer
// got there first, and the same event (same ID) is appended again.
func (v *Vault) audit(ctx context.Context, id, actor string, p events.Payload) (string, error) {
	ev, err := events.New(events.KindVault, id, events.Meta{Time: v.now(), Actor: actor, CorrelationID: requestID(ctx)}, p)
	if err != nil {
		return "", err
	}
	evs := []events.Event{ev}
	if err := events.AssignIDs(evs); err != nil {
		return "", err
	}
	subject := events.Subject(events.KindVault, id)
	for attempt := 0; ; attempt++ {
		last, err := v.store.LastSeq(ctx, subject)
		if err != nil {
			return "", err
		}
		_, err = v.store.Append(ctx, subject, last, evs)
		if err == nil {
			return evs[0].ID.String(), nil
		}
		if !events.IsConflict(err) || attempt == 10 {
			return "", err
		}
	}
}

type requestIDKey struct{}

// withRequestID puts the request's ID in ctx; audit events carry it as
// their correlation ID.
func withRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// Errors of the vault's own making. The detail is for the user; the cause
// is logged by the transport, never shown.

func noStore(ref storeRef) error {
	return job.Errorf(job.ERROR_FILE_NOT_FOUND, "the store %s does not exist in %s (stores other than MY, CA, ROOT and SPC are created by their first import)", ref.Store, ref.Location)
}

func internal(what string, err error) error {
	return &job.Error{Code: job.E_FAIL, Detail: "certvault could not " + what, Err: err}
}

func unavailable(what string, err error) error {
	return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Detail: "certvault could not " + what + "; try again", Err: err}
}

func auditFailed(outcome string, err error) error {
	return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Detail: "the audit log cannot be written, so " + outcome + "; try again", Err: err}
}

func afterAudit(what, evID string, err error) error {
	return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE,
		Detail: fmt.Sprintf("certvault could not %s after auditing it (event %s); nothing changed; try again", what, evID), Err: err}
}
