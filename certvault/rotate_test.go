package certvault

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/google/go-cmp/cmp"
)

// writeKeys writes keys as a keyring file (mode 0600) at path.
func writeKeys(t *testing.T, path string, keys map[int][]byte) {
	t.Helper()
	var b strings.Builder
	for v, k := range keys {
		fmt.Fprintf(&b, "%d:%s\n", v, base64.StdEncoding.EncodeToString(k))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fileKeys reads the keys of a keyring file.
func fileKeys(t *testing.T, path string) map[int][]byte {
	t.Helper()
	k, err := LoadKeyringFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int][]byte{}
	for v, key := range k.keys {
		out[v] = []byte(key)
	}
	return out
}

func loadFile(t *testing.T, path string) *Keyring {
	t.Helper()
	k, err := LoadKeyringFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newFileEnv is newEnv with its vault reopened on a keyring file holding
// version 1.
func newFileEnv(t *testing.T) (*env, string) {
	t.Helper()
	e := newEnv(t)
	path := filepath.Join(t.TempDir(), "vault.kek")
	writeKeys(t, path, map[int][]byte{1: e.kek})
	e.v = e.open(loadFile(t, path))
	return e, path
}

type certKey struct {
	owner Caller
	loc   Location
	store string
	c     *x509.Certificate
	k     crypto.Signer
}

// importSome imports n certificates into alice's MY, the shared
// LOCAL_MACHINE\MY and alice's application store Apps, in turn.
func importSome(t *testing.T, v *Vault, p *testPKI, n int) []certKey {
	t.Helper()
	places := []certKey{{owner: alice, loc: CurrentUser, store: "MY"}, {owner: admin, loc: LocalMachine, store: "MY"}, {owner: alice, loc: CurrentUser, store: "APPS"}}
	var out []certKey
	for i := range n {
		ck := places[i%len(places)]
		req, c, k := pemImport(t, p, leafOpts{})
		if _, err := v.Import(bg, ck.owner, ck.loc, ck.store, req); err != nil {
			t.Fatal(err)
		}
		ck.c, ck.k = c, k
		out = append(out, ck)
	}
	return out
}

func wantKeys(t *testing.T, v *Vault, certs []certKey) {
	t.Helper()
	for _, ck := range certs {
		wantKey(t, v, ck.owner, ck.loc, ck.store, ck.c, ck.k, 1)
	}
}

func wantUse(t *testing.T, v *Vault, want map[int]int) {
	t.Helper()
	use, err := v.KEKVersionsInUse(bg)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, use); diff != "" {
		t.Fatalf("KEKVersionsInUse (-want +got):\n%s", diff)
	}
}

// rewrapEvents returns the VaultKeysRewrapped events with their actors.
func rewrapEvents(t *testing.T, e *env) ([]*events.VaultKeysRewrapped, []events.Event) {
	t.Helper()
	var out []*events.VaultKeysRewrapped
	var evs []events.Event
	for _, ev := range e.vaultEvents() {
		if ev.Type != events.TypeVaultKeysRewrapped {
			continue
		}
		p, err := ev.Payload()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p.(*events.VaultKeysRewrapped))
		evs = append(evs, ev)
	}
	return out, evs
}

// kekForms are the ways a key-encryption key could show up in text.
func kekForms(keys map[int][]byte) map[string][]byte {
	forms := map[string][]byte{}
	for v, k := range keys {
		name := fmt.Sprintf("KEK %d", v)
		forms[name] = k
		forms[name+" hex"] = []byte(hex.EncodeToString(k))
		forms[name+" HEX"] = []byte(strings.ToUpper(hex.EncodeToString(k)))
		for off := range 3 {
			for enc, e := range map[string]*base64.Encoding{"std": base64.StdEncoding, "url": base64.URLEncoding} {
				s := e.EncodeToString(k[off:])
				forms[fmt.Sprintf("%s base64 %s@%d", name, enc, off)] = []byte(s[:len(s)-4])
			}
		}
	}
	return forms
}

func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

// TestRotateKeyRewrapsEveryRecord: rotate-key makes version 2, writes it to
// the file, rewraps every record, audits; a second run with retire makes
// version 3 and leaves only it in the file; a vault restarted on the file
// opens everything. No key-encryption key shows up in the streams or the
// log.
func TestRotateKeyRewrapsEveryRecord(t *testing.T) {
	e, path := newFileEnv(t)
	certs := importSome(t, e.v, newPKI(t), 3)
	wantUse(t, e.v, map[int]int{1: 3})

	res, err := e.v.RotateKey(bg, admin, RotateKeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := RotateKeyResult{ActiveVersion: 2, PreviousVersion: 1, NewKey: NewKeyGenerated, Keyring: KeyringInFile,
		Rewrapped: 3, VersionsInUse: []KEKUse{{2, 3}}, Retired: []int{}, KeyringVersions: []int{1, 2}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Fatalf("RotateKey (-want +got):\n%s", diff)
	}
	keys := fileKeys(t, path)
	if len(keys) != 2 || string(keys[1]) != string(e.kek) || len(keys[2]) != KEKSize {
		t.Fatalf("keyring file holds versions %v", slices.Sorted(maps.Keys(keys)))
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file mode %v, %v", st.Mode(), err)
	}
	noTempFiles(t, filepath.Dir(path))
	wantUse(t, e.v, map[int]int{2: 3})
	wantKeys(t, e.v, certs)
	// New records use version 2.
	more := importSome(t, e.v, newPKI(t), 1)
	wantUse(t, e.v, map[int]int{2: 4})

	// Finish and retire: no new key, version 1 leaves the file.
	res, err = e.v.RotateKey(bg, admin, RotateKeyOptions{Finish: true, Retire: true})
	if err != nil {
		t.Fatal(err)
	}
	want = RotateKeyResult{ActiveVersion: 2, PreviousVersion: 2, NewKey: NewKeyNone, Keyring: KeyringInFile,
		AlreadyCurrent: 4, VersionsInUse: []KEKUse{{2, 4}}, Retired: []int{1}, KeyringVersions: []int{2}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Fatalf("RotateKey finish+retire (-want +got):\n%s", diff)
	}
	if vs := loadFile(t, path).Versions(); !slices.Equal(vs, []int{2}) {
		t.Fatalf("keyring file after retire: %v", vs)
	}

	res, err = e.v.RotateKey(bg, admin, RotateKeyOptions{Retire: true})
	if err != nil {
		t.Fatal(err)
	}
	want = RotateKeyResult{ActiveVersion: 3, PreviousVersion: 2, NewKey: NewKeyGenerated, Keyring: KeyringInFile,
		Rewrapped: 4, VersionsInUse: []KEKUse{{3, 4}}, Retired: []int{2}, KeyringVersions: []int{3}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Fatalf("RotateKey with retire (-want +got):\n%s", diff)
	}
	all := fileKeys(t, path)
	if len(all) != 1 || len(all[3]) != KEKSize {
		t.Fatalf("keyring file after retire holds %d versions", len(all))
	}
	// A restarted vault on the file opens every record.
	restarted := e.open(loadFile(t, path))
	wantKeys(t, restarted, append(certs, more...))

	// Audited: one event per run, the admin as actor, versions and counts.
	got, evs := rewrapEvents(t, e)
	wantEv := []*events.VaultKeysRewrapped{{ActiveVersion: 2, FromVersions: []int{1}, Rewrapped: 3}, {ActiveVersion: 3, FromVersions: []int{2}, Rewrapped: 4}}
	if diff := cmp.Diff(wantEv, got); diff != "" {
		t.Fatalf("rotation events (-want +got):\n%s", diff)
	}
	for _, ev := range evs {
		if ev.Actor != admin.Principal || ev.AggregateID != events.VaultKeyringID {
			t.Errorf("rotation event actor %q on %s", ev.Actor, ev.Subject())
		}
	}
	keys[3] = all[3]
	forms := kekForms(keys)
	scanFor(t, "the streams", append(streamBytes(t, e.js, events.StreamName), streamBytes(t, e.js, "KV_"+Bucket)...), forms)
	scanFor(t, "the vault's log", e.log.Bytes(), forms)
}

// TestRotateKeyAdoptsOperatorKey: a version the operator added to the
// keyring file becomes active without a restart; with retire the old one
// leaves the file.
func TestRotateKeyAdoptsOperatorKey(t *testing.T) {
	e, path := newFileEnv(t)
	certs := importSome(t, e.v, newPKI(t), 2)
	mine := testKEK(t)
	writeKeys(t, path, map[int][]byte{1: e.kek, 5: mine})
	res, err := e.v.RotateKey(bg, admin, RotateKeyOptions{Retire: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.NewKey != NewKeyFromFile || res.ActiveVersion != 5 || res.PreviousVersion != 1 || res.Rewrapped != 2 ||
		!slices.Equal(res.Retired, []int{1}) || !slices.Equal(res.KeyringVersions, []int{5}) {
		t.Fatalf("RotateKey = %+v", res)
	}
	if keys := fileKeys(t, path); len(keys) != 1 || string(keys[5]) != string(mine) {
		t.Fatal("the keyring file does not hold exactly the operator's key")
	}
	wantKeys(t, e.open(testKeyring(t, map[int][]byte{5: mine})), certs)
}

// TestRotateKeyResumesAfterInterruption: a rotation that died after writing
// version 2 and rewrapping one record of three is finished by running it
// again: no new key, the rewrapped record is skipped, every key still opens
// — before (records on both versions) and after.
func TestRotateKeyResumesAfterInterruption(t *testing.T) {
	e, path := newFileEnv(t)
	certs := importSome(t, e.v, newPKI(t), 3)

	// The interrupted run: the file got version 2 …
	kek2 := testKEK(t)
	if err := writeKeyringFile(path, testKeyring(t, map[int][]byte{1: e.kek, 2: kek2})); err != nil {
		t.Fatal(err)
	}
	// … the process died; certvault restarts on the file (New accepts it:
	// every version in use is there) …
	v := e.open(loadFile(t, path))
	// … after one record had been rewrapped.
	sum := sha1Of(certs[0].c)
	entry, err := v.kv.Get(bg, storeRef{certs[0].owner.Principal, CurrentUser, "MY"}.certKey(sum))
	if err != nil {
		t.Fatal(err)
	}
	if _, done, err := v.rewrapOne(bg, v.keyring(), entry); err != nil || !done {
		t.Fatalf("rewrap one record: %v %v", done, err)
	}
	wantUse(t, v, map[int]int{1: 2, 2: 1})
	// Records on the old version and on the new one both open.
	wantKeys(t, v, certs)

	// A run whose context is already gone changes nothing.
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if _, err := v.RotateKey(ctx, admin, RotateKeyOptions{Retire: true}); err == nil {
		t.Fatal("RotateKey with a cancelled context succeeded")
	}
	wantUse(t, v, map[int]int{1: 2, 2: 1})
	if keys := fileKeys(t, path); len(keys) != 2 {
		t.Fatalf("the keyring file changed: %d versions", len(keys))
	}

	res, err := v.RotateKey(bg, admin, RotateKeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := RotateKeyResult{ActiveVersion: 2, PreviousVersion: 2, NewKey: NewKeyNone, Keyring: KeyringInFile,
		Rewrapped: 2, AlreadyCurrent: 1, VersionsInUse: []KEKUse{{2, 3}}, Retired: []int{}, KeyringVersions: []int{1, 2}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Fatalf("resumed RotateKey (-want +got):\n%s", diff)
	}
	if keys := fileKeys(t, path); len(keys) != 2 || string(keys[2]) != string(kek2) {
		t.Fatal("finishing the rotation changed the keyring file")
	}
	wantKeys(t, v, certs)
	// The other process, still on version 1 only, would now be refused at
	// start rather than fail on one certificate later.
	if _, err := New(bg, e.js, e.store, testKeyring(t, map[int][]byte{1: e.kek}), e.v.log); err == nil {
		t.Fatal("a vault without version 2 opened")
	}
}

// TestRotateKeyRetireKeepsVersionsInUse: retiring never drops a version a
// record uses — whether the record is simply there, or could not be
// rewrapped.
func TestRotateKeyRetireKeepsVersionsInUse(t *testing.T) {
	t.Run("in use", func(t *testing.T) {
		e, path := newFileEnv(t)
		p := newPKI(t)
		old := importSome(t, e.v, p, 1) // version 1
		writeKeys(t, path, map[int][]byte{1: e.kek, 2: testKEK(t), 3: testKEK(t)})
		v := e.open(loadFile(t, path))
		cur := importSome(t, v, p, 1) // version 3; nothing uses 2
		use, err := v.KEKVersionsInUse(bg)
		if err != nil {
			t.Fatal(err)
		}
		dropped, err := v.retireUnused(use)
		if err != nil || !slices.Equal(dropped, []int{2}) {
			t.Fatalf("retireUnused = %v, %v", dropped, err)
		}
		if vs := loadFile(t, path).Versions(); !slices.Equal(vs, []int{1, 3}) {
			t.Fatalf("keyring file after retire: %v", vs)
		}
		wantKeys(t, e.open(loadFile(t, path)), append(old, cur...))
	})
	t.Run("not rewrapped", func(t *testing.T) {
		e, path := newFileEnv(t)
		certs := importSome(t, e.v, newPKI(t), 3)
		// Damage the last record's wrapped data key: it cannot be
		// rewrapped. (It is written last, so the keyring check opens
		// version 1 with a sound record first.)
		bad := certs[2]
		key := storeRef{bad.owner.Principal, CurrentUser, "APPS"}.certKey(sha1Of(bad.c))
		entry, err := e.v.kv.Get(bg, key)
		if err != nil {
			t.Fatal(err)
		}
		var rec record
		if err := json.Unmarshal(entry.Value(), &rec); err != nil {
			t.Fatal(err)
		}
		rec.Key.WrappedDEK[len(rec.Key.WrappedDEK)-1] ^= 1
		val, _ := json.Marshal(rec)
		if _, err := e.v.kv.Put(bg, key, val); err != nil {
			t.Fatal(err)
		}
		_, err = e.v.RotateKey(bg, admin, RotateKeyOptions{Retire: true})
		wantCode(t, err, "E_FAIL", "0x80004005")
		if !strings.Contains(err.Error(), "run rotate-key again; nothing was retired") {
			t.Errorf("error %v", err)
		}
		if vs := loadFile(t, path).Versions(); !slices.Equal(vs, []int{1, 2}) {
			t.Fatalf("keyring file after a failed rotation with retire: %v", vs)
		}
		wantUse(t, e.v, map[int]int{1: 1, 2: 2})
		wantKeys(t, e.v, certs[:2])
	})
}

// TestRotateKeyRefusals: admins only; keyrings that cannot be written;
// keyring files that disagree with the keys in use; a rotation already
// holding the file's lock.
func TestRotateKeyRefusals(t *testing.T) {
	e, path := newFileEnv(t)
	certs := importSome(t, e.v, newPKI(t), 1)
	for _, c := range []Caller{alice, agent, service, {Principal: admin.Principal, Role: "root"}, {Role: RoleAdmin}} {
		_, err := e.v.RotateKey(bg, c, RotateKeyOptions{})
		wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	}

	// From code: nothing to write a new key to.
	mem := e.open(testKeyring(t, map[int][]byte{1: e.kek}))
	for _, opts := range []RotateKeyOptions{{}, {Retire: true}} {
		_, err := mem.RotateKey(bg, admin, opts)
		wantCode(t, err, "E_NOTIMPL", hrNotImpl)
		if p := ProblemFor(err); p.Status != http.StatusConflict || !strings.Contains(p.Detail, "not loaded from a file") {
			t.Errorf("problem %+v", p)
		}
	}
	// From the environment: explained, and a version added there is
	// rewrapped to.
	t.Setenv(EnvKEK, base64.StdEncoding.EncodeToString(e.kek))
	ek, err := LoadKeyring("")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.open(ek).RotateKey(bg, admin, RotateKeyOptions{})
	wantCode(t, err, "E_NOTIMPL", hrNotImpl)
	if res, err := e.open(ek).RotateKey(bg, admin, RotateKeyOptions{Finish: true}); err != nil || res.NewKey != NewKeyNone || res.AlreadyCurrent != 1 {
		t.Fatalf("RotateKey finish from the environment = %+v, %v", res, err)
	}
	if p := ProblemFor(err); !strings.Contains(p.Detail, "add a new version to FERRY_VAULT_KEK") || strings.Contains(p.Detail, base64.StdEncoding.EncodeToString(e.kek)) {
		t.Errorf("problem %+v", p)
	}
	kek2 := testKEK(t)
	t.Setenv(EnvKEK, "1:"+base64.StdEncoding.EncodeToString(e.kek)+",2:"+base64.StdEncoding.EncodeToString(kek2))
	if ek, err = LoadKeyring(""); err != nil {
		t.Fatal(err)
	}
	ev := e.open(ek)
	res, err := ev.RotateKey(bg, admin, RotateKeyOptions{})
	if err != nil || res.NewKey != NewKeyNone || res.Keyring != KeyringInEnv || res.ActiveVersion != 2 || res.Rewrapped != 1 {
		t.Fatalf("RotateKey from the environment = %+v, %v", res, err)
	}
	wantKeys(t, ev, certs)
	// Back to version 1 on the file for the rest: rewrap there again.
	writeKeys(t, path, map[int][]byte{1: e.kek, 2: kek2})
	fv := e.open(loadFile(t, path))

	// The file holds another key under a version in use.
	writeKeys(t, path, map[int][]byte{1: e.kek, 2: testKEK(t)})
	_, err = fv.RotateKey(bg, admin, RotateKeyOptions{})
	wantCode(t, err, "E_FAIL", "0x80004005")
	if !strings.Contains(ProblemFor(err).Detail, "other keys under versions [2]") {
		t.Errorf("detail %q", ProblemFor(err).Detail)
	}
	// … lacks the active version.
	writeKeys(t, path, map[int][]byte{1: e.kek})
	_, err = fv.RotateKey(bg, admin, RotateKeyOptions{})
	wantCode(t, err, "E_FAIL", "0x80004005")
	if !strings.Contains(ProblemFor(err).Detail, "lacks version 2") {
		t.Errorf("detail %q", ProblemFor(err).Detail)
	}
	// … is readable by others.
	writeKeys(t, path, map[int][]byte{1: e.kek, 2: kek2})
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = fv.RotateKey(bg, admin, RotateKeyOptions{})
	wantCode(t, err, "E_FAIL", "0x80004005")
	if !strings.Contains(ProblemFor(err).Detail, "chmod 600") {
		t.Errorf("detail %q", ProblemFor(err).Detail)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	// Another rotation holds the lock.
	unlock, err := lockKeyringFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fv.RotateKey(bg, admin, RotateKeyOptions{})
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	unlock()
	// None of that changed anything.
	wantUse(t, fv, map[int]int{2: 1})
	if res, err := fv.RotateKey(bg, admin, RotateKeyOptions{}); err != nil || res.ActiveVersion != 3 {
		t.Fatalf("RotateKey after the refusals = %+v, %v", res, err)
	}
}

// TestRotateKeyHTTP: POST /v1/admin/rotate-key.
func TestRotateKeyHTTP(t *testing.T) {
	e, path := newFileEnv(t)
	srv := httptest.NewServer(e.v.Handler(testAuth))
	t.Cleanup(srv.Close)
	h := &httpEnv{env: e, srv: srv}
	importSome(t, e.v, newPKI(t), 2)

	m := wantProblem(t, h.do(t, alice, http.MethodPost, RotateKeyPath, "", nil), 403, "E_ACCESSDENIED", hrAccessDenied)
	if !strings.Contains(m["detail"].(string), "admins") {
		t.Errorf("detail %v", m["detail"])
	}
	wantProblem(t, h.do(t, agent, http.MethodPost, RotateKeyPath, "application/json", []byte(`{"retire": true}`)), 403, "E_ACCESSDENIED", hrAccessDenied)
	wantProblem(t, h.do(t, Caller{}, http.MethodPost, RotateKeyPath, "", nil), 401, "E_UNAUTHENTICATED", "0x80090350")
	r := h.do(t, admin, http.MethodGet, RotateKeyPath, "", nil)
	wantProblem(t, r, 405, "E_NOTIMPL", hrNotImpl)
	if r.header.Get("Allow") != "POST" {
		t.Errorf("Allow %q", r.header.Get("Allow"))
	}
	for _, body := range []string{`{"retire": "yes"}`, `{"finish": 1}`, `{"retire": true, "force": 1}`, `{"retire": true} {}`, `[`} {
		wantProblem(t, h.do(t, admin, http.MethodPost, RotateKeyPath, "application/json", []byte(body)), 400, "E_INVALIDARG", hrInvalidArg)
	}
	wantProblem(t, h.do(t, admin, http.MethodPost, RotateKeyPath, "text/plain", []byte(`{}`)), 415, "E_INVALIDARG", hrInvalidArg)
	wantProblem(t, h.do(t, admin, http.MethodPost, RotateKeyPath, "application/json", []byte(`{"retire": true, "pad": "`+strings.Repeat("x", 5000)+`"}`)), 413, "E_INVALIDARG", hrInvalidArg)
	wantUse(t, e.v, map[int]int{1: 2})

	req, _ := http.NewRequest(http.MethodPost, srv.URL+RotateKeyPath, nil)
	req.Header.Set("X-Test-Principal", admin.Principal)
	req.Header.Set("X-Test-Role", admin.Role)
	req.Header.Set("X-Request-Id", "rotate-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("rotate: %d %v", resp.StatusCode, err)
	}
	want := map[string]any{"active_version": 2.0, "previous_version": 1.0, "new_key": "generated", "keyring": "file",
		"rewrapped": 2.0, "already_current": 0.0, "versions_in_use": []any{map[string]any{"version": 2.0, "records": 2.0}},
		"retired_versions": []any{}, "keyring_versions": []any{1.0, 2.0}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("answer (-want +got):\n%s", diff)
	}
	_, evs := rewrapEvents(t, e)
	if len(evs) != 1 || evs[0].CorrelationID != "rotate-1" || evs[0].Actor != admin.Principal {
		t.Fatalf("rotation events %+v", evs)
	}

	r = h.do(t, admin, http.MethodPost, RotateKeyPath, "application/json", []byte(`{"retire": true}`))
	if r.status != 200 {
		t.Fatalf("rotate with retire: %d %s", r.status, r.body)
	}
	m = r.json(t)
	if m["active_version"] != 3.0 || fmt.Sprint(m["retired_versions"]) != "[1 2]" || fmt.Sprint(m["keyring_versions"]) != "[3]" {
		t.Fatalf("rotate with retire: %s", r.body)
	}
	if vs := loadFile(t, path).Versions(); !slices.Equal(vs, []int{3}) {
		t.Fatalf("keyring file: %v", vs)
	}

	// A vault that cannot write its keyring answers 409 with what to do.
	mem := httptest.NewServer(e.open(testKeyring(t, map[int][]byte{1: e.kek, 2: testKEK(t), 3: fileKeys(t, path)[3]})).Handler(testAuth))
	t.Cleanup(mem.Close)
	wantProblem(t, (&httpEnv{env: e, srv: mem}).do(t, admin, http.MethodPost, RotateKeyPath, "", nil), 409, "E_NOTIMPL", hrNotImpl)
}

// TestRotateKeyConcurrentImports: imports running during a rotation with
// retire all end up on the new version, and the file alone opens them.
func TestRotateKeyConcurrentImports(t *testing.T) {
	e, path := newFileEnv(t)
	p := newPKI(t)
	certs := importSome(t, e.v, p, 3)
	type pending struct {
		req ImportRequest
		ck  certKey
	}
	var todo []pending
	for range 12 {
		req, c, k := pemImport(t, p, leafOpts{})
		todo = append(todo, pending{req, certKey{owner: bob, loc: CurrentUser, store: "MY", c: c, k: k}})
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(todo)+1)
	for _, pd := range todo {
		wg.Go(func() {
			_, err := e.v.Import(bg, pd.ck.owner, pd.ck.loc, pd.ck.store, pd.req)
			errs <- err
		})
	}
	wg.Go(func() {
		_, err := e.v.RotateKey(bg, admin, RotateKeyOptions{Retire: true})
		errs <- err
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, pd := range todo {
		certs = append(certs, pd.ck)
	}
	wantUse(t, e.v, map[int]int{2: len(certs)})
	if vs := loadFile(t, path).Versions(); !slices.Equal(vs, []int{2}) {
		t.Fatalf("keyring file: %v", vs)
	}
	wantKeys(t, e.open(loadFile(t, path)), certs)
}

// TestWriteKeyringFile: the file is replaced whole, mode 0600, through a
// symbolic link, with no temporary file left.
func TestWriteKeyringFile(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.kek")
	writeKeys(t, real, map[int][]byte{1: testKEK(t)})
	link := filepath.Join(dir, "vault.kek")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	k := testKeyring(t, map[int][]byte{4: testKEK(t), 9: testKEK(t)})
	if err := writeKeyringFile(link, k); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v %v", st.Mode(), err)
	}
	st, err := os.Stat(real)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", st.Mode(), err)
	}
	got := loadFile(t, link)
	if !slices.Equal(got.Versions(), []int{4, 9}) || len(k.agrees(got)) != 0 {
		t.Fatalf("read back %v", got)
	}
	noTempFiles(t, dir)
	if err := writeKeyringFile(filepath.Join(dir, "missing", "vault.kek"), k); err == nil {
		t.Fatal("wrote into a missing directory")
	}
	noTempFiles(t, dir)
}

// TestRotateKeyAuditUnwritable: no audit event, no rewrap; the run after
// the log is back finishes the rotation.
func TestRotateKeyAuditUnwritable(t *testing.T) {
	e, path := newFileEnv(t)
	certs := importSome(t, e.v, newPKI(t), 2)
	e.store.fail.Store(true)
	_, err := e.v.RotateKey(bg, admin, RotateKeyOptions{Retire: true})
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	wantUse(t, e.v, map[int]int{1: 2})
	if vs := loadFile(t, path).Versions(); !slices.Equal(vs, []int{1, 2}) {
		t.Fatalf("keyring file: %v", vs)
	}
	e.store.fail.Store(false)
	wantKeys(t, e.v, certs)
	res, err := e.v.RotateKey(bg, admin, RotateKeyOptions{})
	if err != nil || res.NewKey != NewKeyNone || res.ActiveVersion != 2 || res.Rewrapped != 2 {
		t.Fatalf("RotateKey after the log is back = %+v, %v", res, err)
	}
	got, _ := rewrapEvents(t, e)
	if diff := cmp.Diff([]*events.VaultKeysRewrapped{{ActiveVersion: 2, FromVersions: []int{1}, Rewrapped: 2}}, got); diff != "" {
		t.Fatalf("rotation events (-want +got):\n%s", diff)
	}
}
