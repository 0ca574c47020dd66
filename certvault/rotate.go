package certvault

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
)

// keyring is the keyring in use.
func (v *Vault) keyring() *Keyring {
	v.keyMu.RLock()
	defer v.keyMu.RUnlock()
	return v.keys
}

// setKeyring makes k the keyring in use. It waits for the imports that are
// sealing with the old one to be stored (see Vault.keyMu).
func (v *Vault) setKeyring(k *Keyring) {
	v.keyMu.Lock()
	defer v.keyMu.Unlock()
	v.keys = k
}

// RotateKeyOptions are the options of RotateKey.
type RotateKeyOptions struct {
	// Finish makes no new key: records not on the active version (or on
	// a newer version found in the keyring file) are rewrapped to it. It
	// is the second step of a rotation across several certvault
	// processes, and what a keyring from the environment allows.
	Finish bool `json:"finish,omitempty"`
	// Retire drops from the keyring file, after the rewrap, every version
	// that no record uses any more (never the active one).
	Retire bool `json:"retire,omitempty"`
}

// What RotateKey did about the key (RotateKeyResult.NewKey).
const (
	// NewKeyGenerated: certvault made a new random key one version above
	// the highest and wrote it to the keyring file.
	NewKeyGenerated = "generated"
	// NewKeyFromFile: the keyring file holds a version above the one
	// certvault ran with (put there by the operator, or by another
	// certvault process's rotation); it became active.
	NewKeyFromFile = "keyring_file"
	// NewKeyNone: no new key. Records were still wrapped with older
	// versions (an interrupted rotation, a certvault process that ran
	// with an older keyring, or a new version added to FERRY_VAULT_KEK
	// and a restart), or Finish was asked: this run moved the records
	// left to the active version.
	NewKeyNone = "none"
)

// KEKUse is how many records one key-encryption key version wraps.
type KEKUse struct {
	Version int `json:"version"`
	Records int `json:"records"`
}

// RotateKeyResult reports a RotateKey run. It holds versions and counts,
// never keys.
type RotateKeyResult struct {
	// ActiveVersion is the version every record is now wrapped with.
	ActiveVersion int `json:"active_version"`
	// PreviousVersion was the active version before the run.
	PreviousVersion int `json:"previous_version"`
	// NewKey says where the active key came from (NewKeyGenerated,
	// NewKeyFromFile, NewKeyNone).
	NewKey string `json:"new_key"`
	// Keyring is the keyring's source: KeyringInFile,
	// KeyringInEnv or KeyringInMemory.
	Keyring string `json:"keyring"`
	// Rewrapped records moved to ActiveVersion by this run;
	// AlreadyCurrent were on it before.
	Rewrapped      int `json:"rewrapped"`
	AlreadyCurrent int `json:"already_current"`
	// VersionsInUse counts the records per version after the run (and
	// after retiring), ascending.
	VersionsInUse []KEKUse `json:"versions_in_use"`
	// Retired lists the versions dropped from the keyring file.
	Retired []int `json:"retired_versions"`
	// KeyringVersions are the versions in the keyring after the run.
	KeyringVersions []int `json:"keyring_versions"`
}

// RotateKey rotates the key-encryption key and rewraps every record to it.
// It is for admins (E_ACCESSDENIED otherwise) and runs one at a time.
//
// When the keyring came from a file (LoadKeyringFile), RotateKey first
// reads the file again (under a lock shared by every certvault process
// using it) and checks that it opens every record and agrees with the
// keyring in use; then the active key is:
//
//   - a version in the file above the one in use, if there is one
//     (NewKeyFromFile): the operator's own key;
//   - else, if some records are still wrapped with older versions, or
//     opts.Finish is set, the active one (NewKeyNone): an earlier rotation
//     is finished, nothing new is made — so re-running after an
//     interruption skips the records already rewrapped and makes no
//     further key;
//   - else a new random key, one version above the highest
//     (NewKeyGenerated), written to the file atomically (temporary file,
//     fsync, rename, mode 0600) before it is used.
//
// The key becomes active (new imports use it); then a VaultKeysRewrapped
// event, with the caller as actor, records the versions and the number of
// records to rewrap — before they are rewrapped, like every vault change,
// so that the log may over-report an interrupted run but never
// under-report; no event, no rewrap — and every record not on the active
// version is rewrapped (as by Rotate).
// With opts.Retire, the versions no record uses any more are then dropped
// from the file; a version still in use is never dropped, and nothing is
// retired if a record could not be rewrapped.
//
// A keyring from EnvKEK or from code cannot be written: RotateKey then only
// finishes rotations (NewKeyNone) and answers E_NOTIMPL (HTTP 409) with what
// to do when a new key or retiring is asked of it.
func (v *Vault) RotateKey(ctx context.Context, caller Caller, opts RotateKeyOptions) (RotateKeyResult, error) {
	if err := caller.check(); err != nil {
		return RotateKeyResult{}, err
	}
	if caller.Role != RoleAdmin {
		return RotateKeyResult{}, job.Errorf(job.E_ACCESSDENIED, "%s may not rotate the key-encryption key: it is for admins", caller.Role)
	}
	v.rotMu.Lock()
	defer v.rotMu.Unlock()
	prev := v.keyring()
	res := RotateKeyResult{PreviousVersion: prev.Active(), Keyring: v.keySource, Retired: []int{}}
	if opts.Retire && v.keyFile == "" {
		return res, v.notPersistable("retire key-encryption keys")
	}
	cand := prev
	if v.keyFile != "" {
		unlock, err := lockKeyringFile(v.keyFile)
		if errors.Is(err, errKeyringBusy) {
			return res, &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Detail: "another rotation of the keyring is running; try again when it is done", Err: err}
		} else if err != nil {
			return res, internal("lock the keyring file", err)
		}
		defer unlock()
		if cand, err = v.reloadKeyring(ctx, prev); err != nil {
			return res, err
		}
	}
	use, err := v.KEKVersionsInUse(ctx)
	if err != nil {
		return res, unavailable("list the records", err)
	}
	behind := 0
	for ver, n := range use {
		if ver != cand.Active() {
			behind += n
		}
	}
	next := cand
	switch {
	case cand.Active() > prev.Active():
		res.NewKey = NewKeyFromFile
	case behind > 0 || opts.Finish:
		res.NewKey = NewKeyNone
	case v.keyFile == "":
		return res, v.notPersistable(fmt.Sprintf("make a new key-encryption key (every record is already wrapped with version %d, the highest it has)", cand.Active()))
	default:
		if next, err = cand.withNewVersion(); err != nil {
			return res, internal("make a new key-encryption key", err)
		}
		if err := writeKeyringFile(v.keyFile, next); err != nil {
			return res, internal("write the keyring file (nothing changed)", err)
		}
		res.NewKey = NewKeyGenerated
	}
	v.setKeyring(next)
	res.ActiveVersion = next.Active()
	v.log.Info().Int("previous", prev.Active()).Int("active", next.Active()).Str("new_key", res.NewKey).
		Object("keyring", next).Msg("key-encryption key active")

	// Audit before rewrapping (the log may over-report, never
	// under-report), with what is left to do now that imports seal with
	// the new key.
	if use, err = v.KEKVersionsInUse(ctx); err != nil {
		return res, unavailable(fmt.Sprintf("list the records (version %d is active for new records; no record was rewrapped; run rotate-key again)", next.Active()), err)
	}
	from, todo := []int{}, 0
	for _, ver := range slices.Sorted(maps.Keys(use)) {
		if ver != next.Active() {
			from, todo = append(from, ver), todo+use[ver]
		}
	}
	if todo > 0 || res.NewKey != NewKeyNone {
		if _, err := v.audit(ctx, events.VaultKeyringID, caller.Principal, &events.VaultKeysRewrapped{
			ActiveVersion: next.Active(), FromVersions: from, Rewrapped: todo,
		}); err != nil {
			return res, auditFailed(fmt.Sprintf("no record was rewrapped (version %d is active for new records); run rotate-key again", next.Active()), err)
		}
	}
	rot, err := v.rotate(ctx, false)
	res.ActiveVersion, res.Rewrapped, res.AlreadyCurrent = rot.Active, rot.Rewrapped, rot.Current
	if err != nil {
		detail := fmt.Sprintf("the rotation to key-encryption key version %d did not finish (%d records rewrapped); the certvault log names the records; run rotate-key again", rot.Active, rot.Rewrapped)
		if opts.Retire {
			detail += "; nothing was retired"
		}
		return res, &job.Error{Code: job.E_FAIL, Detail: detail, Err: err}
	}
	if use, err = v.KEKVersionsInUse(ctx); err != nil {
		return res, unavailable("count the records after the rotation (it finished)", err)
	}
	if opts.Retire {
		if res.Retired, err = v.retireUnused(use); err != nil {
			return res, internal("write the keyring file to retire unused versions (the rotation finished; nothing was retired)", err)
		}
	}
	for _, ver := range slices.Sorted(maps.Keys(use)) {
		res.VersionsInUse = append(res.VersionsInUse, KEKUse{Version: ver, Records: use[ver]})
	}
	if res.VersionsInUse == nil {
		res.VersionsInUse = []KEKUse{}
	}
	res.KeyringVersions = v.keyring().Versions()
	return res, nil
}

// reloadKeyring reads the keyring file again and checks it against the
// keyring in use: it must hold the active version, every version both hold
// must be the same key, and it must open every record.
func (v *Vault) reloadKeyring(ctx context.Context, cur *Keyring) (*Keyring, error) {
	k, err := LoadKeyringFile(v.keyFile)
	if err != nil {
		// LoadKeyringFile's errors name the file and the problem, never
		// key bytes.
		return nil, &job.Error{Code: job.E_FAIL, Detail: "certvault cannot read its keyring file: " + err.Error(), Err: err}
	}
	if differ := cur.agrees(k); len(differ) > 0 {
		return nil, job.Errorf(job.E_FAIL, "the keyring file %s holds other keys under versions %v than certvault runs with; restore them (records are wrapped with the keys in use)", v.keyFile, differ)
	}
	if !k.Has(cur.Active()) {
		return nil, job.Errorf(job.E_FAIL, "the keyring file %s lacks version %d, the active key-encryption key certvault runs with; restore it", v.keyFile, cur.Active())
	}
	if err := v.checkKeyring(ctx, k); err != nil {
		var m keyringMismatch
		if !errors.As(err, &m) {
			return nil, unavailable("read the records", err)
		}
		return nil, &job.Error{Code: job.E_FAIL, Detail: "the keyring file " + v.keyFile + " does not open every record: " + m.Error(), Err: err}
	}
	return k, nil
}

// retireUnused drops from the keyring file and the keyring in use every
// version other than the active one that use (the records per version,
// counted after the rewrap) does not list. It writes the file first: a
// crash leaves a keyring that still opens every record.
func (v *Vault) retireUnused(use map[int]int) ([]int, error) {
	cur := v.keyring()
	drop := []int{}
	for _, ver := range cur.Versions() {
		if ver != cur.Active() && use[ver] == 0 {
			drop = append(drop, ver)
		}
	}
	var kept []int
	for ver := range use {
		if ver != cur.Active() {
			kept = append(kept, ver)
		}
	}
	slices.Sort(kept)
	if len(kept) > 0 {
		v.log.Warn().Ints("versions", kept).Msg("key-encryption key versions still in use are kept")
	}
	if len(drop) == 0 {
		return drop, nil
	}
	next, err := cur.withoutVersions(drop)
	if err != nil {
		return nil, err
	}
	if err := writeKeyringFile(v.keyFile, next); err != nil {
		return nil, err
	}
	v.setKeyring(next)
	v.log.Info().Ints("retired", drop).Object("keyring", next).Msg("key-encryption key versions retired")
	return drop, nil
}

// notPersistable refuses what needs writing the keyring when it came from
// the environment or from code, saying how to do it by hand.
func (v *Vault) notPersistable(what string) error {
	c := httpapi.WithStatus(job.E_NOTIMPL, 409)
	if v.keySource == KeyringInEnv {
		return &job.Error{Code: c, Detail: fmt.Sprintf("certvault cannot %s: its keyring comes from %s, which it cannot change. "+
			"To rotate: add a new version to %s (\"1:<old base64>,2:<new base64>\"; make a key with `head -c 32 /dev/urandom | base64`), "+
			"restart every certvault process with it, and run rotate-key again: it rewraps every record to the new version. "+
			"When versions_in_use no longer lists the old version, remove it from %s and restart", what, EnvKEK, EnvKEK, EnvKEK)}
	}
	return &job.Error{Code: c, Detail: fmt.Sprintf("certvault cannot %s: its keyring was not loaded from a file, so there is nowhere to keep a new one; "+
		"start certvault with a keyring file (or add a version to %s and restart) and run rotate-key again", what, EnvKEK)}
}
