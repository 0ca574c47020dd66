package certvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/rs/zerolog"
	"software.sslmate.com/src/go-pkcs12"
)

var bg = context.Background()

// wantKey checks that Key hands out exactly the imported key and chain.
func wantKey(t *testing.T, v *Vault, owner Caller, loc Location, store string, c *x509.Certificate, key crypto.Signer, chainLen int) {
	t.Helper()
	tc, err := v.Key(bg, KeyRequest{Owner: owner, Location: loc, Store: store, SHA1: sha1Of(c), Agent: agent.Principal, Job: "job-1"})
	if err != nil {
		t.Fatalf("Key: %v", err)
	}
	if !bytes.Equal(pkcs8(t, tc.PrivateKey.(crypto.Signer)), pkcs8(t, key)) {
		t.Error("Key returned another key")
	}
	if len(tc.Certificate) != chainLen || !bytes.Equal(tc.Certificate[0], c.Raw) || !tc.Leaf.Equal(c) {
		t.Errorf("Key returned a chain of %d, leaf %v", len(tc.Certificate), tc.Leaf.Subject)
	}
}

func TestImportRoundTrip(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)
	type input struct {
		name  string
		req   func(c *x509.Certificate, k crypto.Signer) ImportRequest
		key   crypto.Signer
		chain int
	}
	inputs := []input{
		{"PEM PKCS#8 EC", func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PEM: cat(certPEM(c, p.cert), keyPEM(t, k, "PRIVATE KEY"))}
		}, nil, 2},
		{"PEM PKCS#1 RSA", func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PEM: cat(certPEM(c), keyPEM(t, k, "RSA PRIVATE KEY"))}
		}, rsaKey(), 1},
		{"PEM SEC1 EC", func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PEM: cat(keyPEM(t, k, "EC PRIVATE KEY"), certPEM(c))}
		}, nil, 1},
		{"PEM Ed25519", func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PEM: cat(certPEM(c), keyPEM(t, k, "PRIVATE KEY"))}
		}, ed25519Key(t), 1},
	}
	for _, enc := range []struct {
		name string
		enc  *pkcs12.Encoder
	}{{"Modern2023", pkcs12.Modern2023}, {"Modern2026", pkcs12.Modern2026}, {"LegacyDES", pkcs12.LegacyDES}, {"LegacyRC2", pkcs12.LegacyRC2}} {
		inputs = append(inputs, input{"PFX " + enc.name, func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PFX: pfx(t, enc.enc, k, c, []*x509.Certificate{p.cert}, "s3cret"), Password: []byte("s3cret")}
		}, nil, 2})
	}
	for i, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			c, k := p.issue(t, leafOpts{subject: pkix.Name{CommonName: in.name}, key: in.key})
			store := "roundtrip" + string(rune('a'+i))
			info, err := e.v.Import(bg, alice, CurrentUser, store, in.req(c, k))
			if err != nil {
				t.Fatal(err)
			}
			want := certInfo(c, in.chain)
			want.Location, want.Store, want.ImportedBy, want.ImportedAt = CurrentUser, strings.ToUpper(store), alice.Principal, info.ImportedAt
			if info != want {
				t.Errorf("Import = %+v\nwant %+v", info, want)
			}
			if time.Since(info.ImportedAt) > time.Minute {
				t.Errorf("imported at %v", info.ImportedAt)
			}
			list, err := e.v.List(bg, alice, CurrentUser, store)
			if err != nil || len(list) != 1 || list[0] != want {
				t.Errorf("List = %+v, %v", list, err)
			}
			got, err := e.v.Lookup(bg, alice, CurrentUser, strings.ToLower(store), sha1Of(c))
			if err != nil || got != want {
				t.Errorf("Lookup = %+v, %v", got, err)
			}
			wantKey(t, e.v, alice, CurrentUser, store, c, k, in.chain)
		})
	}
}

// TestKVHoldsNoPlaintextKey scans every message of the bucket's stream —
// what is on disk — for the private keys in every encoding, and for the
// PKCS#12 password.
func TestKVHoldsNoPlaintextKey(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)
	const password = "pfx-password-4c1e"
	forms := map[string][]byte{"password": []byte(password)}
	var imported []*x509.Certificate
	for i, mk := range []func(c *x509.Certificate, k crypto.Signer) ImportRequest{
		func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PEM: cat(certPEM(c), keyPEM(t, k, "PRIVATE KEY"))}
		},
		func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PEM: cat(certPEM(c), keyPEM(t, k, "EC PRIVATE KEY"))}
		},
		func(c *x509.Certificate, k crypto.Signer) ImportRequest {
			return ImportRequest{PFX: pfx(t, pkcs12.LegacyRC2, k, c, nil, password), Password: []byte(password)}
		},
	} {
		c, k := p.issue(t, leafOpts{})
		for name, f := range secretForms(t, k) {
			forms[name+" of key "+string(rune('0'+i))] = f
		}
		if _, err := e.v.Import(bg, admin, LocalMachine, "MY", mk(c, k)); err != nil {
			t.Fatal(err)
		}
		imported = append(imported, c)
	}
	c, k := p.issue(t, leafOpts{key: rsaKey()})
	for name, f := range secretForms(t, k) {
		forms[name+" of the RSA key"] = f
	}
	if _, err := e.v.Import(bg, alice, CurrentUser, "MY", ImportRequest{PEM: cat(certPEM(c), keyPEM(t, k, "RSA PRIVATE KEY"))}); err != nil {
		t.Fatal(err)
	}
	raw := streamBytes(t, e.js, "KV_"+Bucket)
	if bytes.Count(raw, []byte(`"wrapped_dek"`)) != len(imported)+1 {
		t.Fatal("the scan does not see the records")
	}
	scanFor(t, "the KV stream", raw, forms)
	scanFor(t, "the event log", streamBytes(t, e.js, events.StreamName), forms)
	scanFor(t, "the log", e.log.Bytes(), forms)
}

// TestAudit: every import, removal, release and refusal is an event with
// thumbprints only.
func TestAudit(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)
	const password = "audit-pfx-password"
	c, k := p.issue(t, leafOpts{})
	sum := sha1Of(c)
	req := ImportRequest{PFX: pfx(t, pkcs12.Modern2023, k, c, nil, password), Password: []byte(password)}
	ctx := withRequestID(bg, "req-42")
	info, err := e.v.Import(ctx, alice, CurrentUser, "MY", req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.v.Import(bg, alice, CurrentUser, "MY", req); err != nil { // replaces
		t.Fatal(err)
	}
	if _, err := e.v.Key(bg, KeyRequest{Owner: alice, Location: CurrentUser, Store: "MY", SHA1: sum, Agent: agent.Principal, Job: "j1", Lease: "l1", GrantID: "g1"}); err != nil {
		t.Fatal(err)
	}
	// Bob's job cannot use Alice's certificate: it is not in his store.
	if _, err := e.v.Key(bg, KeyRequest{Owner: bob, Location: CurrentUser, Store: "MY", SHA1: sum, Agent: agent.Principal, Job: "j2"}); err == nil {
		t.Fatal("bob's job got alice's key")
	}
	if err := e.v.Remove(bg, alice, CurrentUser, "my", sum); err != nil {
		t.Fatal(err)
	}

	evs := e.vaultEvents()
	types := []string{}
	for _, ev := range evs {
		types = append(types, ev.Type)
		if ev.AggregateID != info.SHA1 || ev.Subject() != "ferry.evt.vault."+info.SHA1 {
			t.Errorf("%s on %s", ev.Type, ev.Subject())
		}
	}
	want := []string{events.TypeCertificateImported, events.TypeCertificateImported, events.TypeKeyReleased, events.TypeKeyReleaseDenied, events.TypeCertificateRemoved}
	if strings.Join(types, " ") != strings.Join(want, " ") {
		t.Fatalf("events %v, want %v", types, want)
	}
	p0, _ := evs[0].Payload()
	imp := p0.(*events.CertificateImported)
	if imp.Scope != alice.Principal || imp.Location != "CURRENT_USER" || imp.Store != "MY" || imp.SHA1 != info.SHA1 ||
		imp.SHA256 != info.SHA256 || imp.Format != "pfx" || imp.KEKVersion != 1 || imp.Replaced || evs[0].Actor != alice.Principal ||
		evs[0].CorrelationID != "req-42" {
		t.Errorf("CertificateImported %+v (actor %s, correlation %s)", imp, evs[0].Actor, evs[0].CorrelationID)
	}
	if p1, _ := evs[1].Payload(); !p1.(*events.CertificateImported).Replaced {
		t.Error("the second import is not marked as a replacement")
	}
	p2, _ := evs[2].Payload()
	if rel := p2.(*events.KeyReleased); rel.Agent != agent.Principal || rel.Owner != alice.Principal || rel.Job != "j1" ||
		rel.Lease != "l1" || rel.GrantID != "g1" || rel.SHA1 != info.SHA1 || evs[2].Actor != agent.Principal {
		t.Errorf("KeyReleased %+v", rel)
	}
	p3, _ := evs[3].Payload()
	if d := p3.(*events.KeyReleaseDenied); d.Code != "CRYPT_E_NOT_FOUND" || d.HResult != hrCryptNotFnd || d.Owner != bob.Principal ||
		d.Scope != bob.Principal || d.Job != "j2" || d.Reason == "" {
		t.Errorf("KeyReleaseDenied %+v", d)
	}
	p4, _ := evs[4].Payload()
	if r := p4.(*events.CertificateRemoved); r.SHA1 != info.SHA1 || r.Store != "MY" || r.Scope != alice.Principal {
		t.Errorf("CertificateRemoved %+v", r)
	}

	forms := secretForms(t, k)
	forms["password"] = []byte(password)
	scanFor(t, "the event log", streamBytes(t, e.js, events.StreamName), forms)
	scanFor(t, "the log", e.log.Bytes(), forms)
}

// TestAuditFailureBlocks: no audit, no change and no key.
func TestAuditFailureBlocks(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)
	req, c, _ := pemImport(t, p, leafOpts{})
	sum := sha1Of(c)

	e.store.fail.Store(true)
	_, err := e.v.Import(bg, alice, CurrentUser, "Brand New Store", req)
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	_, err = e.v.Import(bg, alice, CurrentUser, "MY", req)
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	if raw := streamBytes(t, e.js, "KV_"+Bucket); len(raw) != 0 {
		t.Fatalf("the bucket holds %d bytes after refused imports", len(raw))
	}
	e.store.fail.Store(false)
	_, err = e.v.List(bg, alice, CurrentUser, "Brand New Store")
	wantCode(t, err, "ERROR_FILE_NOT_FOUND", hrFileNotFound)
	if list, err := e.v.List(bg, alice, CurrentUser, "MY"); err != nil || len(list) != 0 {
		t.Fatalf("MY after a refused import: %v, %v", list, err)
	}

	if _, err := e.v.Import(bg, alice, CurrentUser, "MY", req); err != nil {
		t.Fatal(err)
	}
	e.store.fail.Store(true)
	err = e.v.Remove(bg, alice, CurrentUser, "MY", sum)
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	tc, err := e.v.Key(bg, KeyRequest{Owner: alice, Location: CurrentUser, Store: "MY", SHA1: sum, Agent: agent.Principal})
	wantCode(t, err, "ERROR_SERVICE_UNAVAILABLE", hrUnavailable)
	if tc != nil {
		t.Fatal("a key was released without an audit event")
	}
	e.store.fail.Store(false)
	if _, err := e.v.Lookup(bg, alice, CurrentUser, "MY", sum); err != nil {
		t.Fatalf("the certificate is gone after a refused removal: %v", err)
	}
	for _, ev := range e.vaultEvents() {
		if ev.Type != events.TypeCertificateImported {
			t.Errorf("unexpected %s after refused operations", ev.Type)
		}
	}
}

func TestStoresAndRemoval(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)

	// The system stores exist, empty; others do not until an import.
	for _, s := range []string{"MY", "ca", "Root", "spc"} {
		if list, err := e.v.List(bg, alice, CurrentUser, s); err != nil || len(list) != 0 {
			t.Errorf("List %s = %v, %v", s, list, err)
		}
	}
	_, err := e.v.List(bg, alice, CurrentUser, "Custom")
	wantCode(t, err, "ERROR_FILE_NOT_FOUND", hrFileNotFound)
	_, err = e.v.Lookup(bg, alice, CurrentUser, "Custom", [20]byte{1})
	wantCode(t, err, "ERROR_FILE_NOT_FOUND", hrFileNotFound)
	err = e.v.Remove(bg, alice, CurrentUser, "Custom", [20]byte{1})
	wantCode(t, err, "ERROR_FILE_NOT_FOUND", hrFileNotFound)
	_, err = e.v.Lookup(bg, alice, CurrentUser, "MY", [20]byte{1})
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)

	req1, c1, _ := pemImport(t, p, leafOpts{subject: pkix.Name{CommonName: "one"}})
	req2, c2, _ := pemImport(t, p, leafOpts{subject: pkix.Name{CommonName: "two"}})
	for _, r := range []ImportRequest{req1, req2} {
		if _, err := e.v.Import(bg, alice, CurrentUser, "custom", r); err != nil {
			t.Fatal(err)
		}
	}
	list, err := e.v.List(bg, alice, CurrentUser, "CUSTOM")
	if err != nil || len(list) != 2 || list[0].Subject != "CN=one" || list[1].Subject != "CN=two" || list[0].Store != "CUSTOM" {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if err := e.v.Remove(bg, alice, CurrentUser, "Custom", sha1Of(c1)); err != nil {
		t.Fatal(err)
	}
	err = e.v.Remove(bg, alice, CurrentUser, "Custom", sha1Of(c1))
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
	_, err = e.v.Key(bg, KeyRequest{Owner: alice, Location: CurrentUser, Store: "Custom", SHA1: sha1Of(c1), Agent: agent.Principal})
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
	if err := e.v.Remove(bg, alice, CurrentUser, "Custom", sha1Of(c2)); err != nil {
		t.Fatal(err)
	}
	// An emptied store stays.
	if list, err := e.v.List(bg, alice, CurrentUser, "custom"); err != nil || len(list) != 0 {
		t.Fatalf("emptied store: %v, %v", list, err)
	}
	// Re-import after removal works.
	if _, err := e.v.Import(bg, alice, CurrentUser, "custom", req1); err != nil {
		t.Fatal(err)
	}
}

// TestLocationAccess runs the access rules against the real vault: whose
// certificate each caller sees where.
func TestLocationAccess(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)
	aliceReq, aliceCert, aliceKey := pemImport(t, p, leafOpts{subject: pkix.Name{CommonName: "alice"}})
	machineReq, machineCert, _ := pemImport(t, p, leafOpts{subject: pkix.Name{CommonName: "machine"}})
	svcReq, svcCert, _ := pemImport(t, p, leafOpts{subject: pkix.Name{CommonName: "svc"}})

	if _, err := e.v.Import(bg, alice, CurrentUser, "MY", aliceReq); err != nil {
		t.Fatal(err)
	}
	// Bob does not see Alice's store: his own MY is empty and does not
	// have her certificate.
	if list, err := e.v.List(bg, bob, CurrentUser, "MY"); err != nil || len(list) != 0 {
		t.Errorf("bob's MY: %v, %v", list, err)
	}
	_, err := e.v.Lookup(bg, bob, CurrentUser, "MY", sha1Of(aliceCert))
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
	err = e.v.Remove(bg, bob, CurrentUser, "MY", sha1Of(aliceCert))
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
	// …nor through USERS, which is for admins.
	_, err = e.v.List(bg, bob, Users, alice.Principal+`\MY`)
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	// An admin reaches Alice's store through USERS, and sees it named so.
	list, err := e.v.List(bg, admin, Users, alice.Principal+`\my`)
	if err != nil || len(list) != 1 || list[0].SHA1 != sha1Hex(aliceCert) ||
		list[0].Location != Users || list[0].Store != alice.Principal+`\MY` {
		t.Fatalf("admin USERS list: %+v, %v", list, err)
	}
	// The admin's own CURRENT_USER is the admin's, not Alice's.
	if list, err := e.v.List(bg, admin, CurrentUser, "MY"); err != nil || len(list) != 0 {
		t.Errorf("admin's own MY: %v, %v", list, err)
	}
	// A key for Alice's job comes from her store, for Bob's job not.
	wantKey(t, e.v, alice, CurrentUser, "MY", aliceCert, aliceKey, 1)

	// LOCAL_MACHINE: users read, admins write.
	_, err = e.v.Import(bg, alice, LocalMachine, "MY", machineReq)
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	if _, err := e.v.Import(bg, admin, LocalMachine, "MY", machineReq); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Caller{alice, bob, agent, service, admin} {
		if _, err := e.v.Lookup(bg, c, LocalMachine, "MY", sha1Of(machineCert)); err != nil {
			t.Errorf("%s reading LOCAL_MACHINE: %v", c.Role, err)
		}
	}
	err = e.v.Remove(bg, bob, LocalMachine, "MY", sha1Of(machineCert))
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)

	// CURRENT_SERVICE is the calling service's; SERVICES reaches it for admins.
	_, err = e.v.Import(bg, alice, CurrentService, "MY", svcReq)
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	if _, err := e.v.Import(bg, service, CurrentService, "MY", svcReq); err != nil {
		t.Fatal(err)
	}
	if list, err := e.v.List(bg, admin, Services, service.Principal+`\MY`); err != nil || len(list) != 1 || list[0].SHA1 != sha1Hex(svcCert) {
		t.Errorf("admin SERVICES list: %+v, %v", list, err)
	}
	// …and is not the service's CURRENT_USER.
	if list, err := e.v.List(bg, service, CurrentUser, "MY"); err != nil || len(list) != 0 {
		t.Errorf("service's CURRENT_USER: %v, %v", list, err)
	}
	// An admin removes from Alice's store through USERS.
	if err := e.v.Remove(bg, admin, Users, alice.Principal+`\MY`, sha1Of(aliceCert)); err != nil {
		t.Fatal(err)
	}
	_, err = e.v.Lookup(bg, alice, CurrentUser, "MY", sha1Of(aliceCert))
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)

	// Policy stores: admins write; CURRENT_USER_GROUP_POLICY is for users.
	gpReq, gpCert, _ := pemImport(t, p, leafOpts{})
	_, err = e.v.Import(bg, alice, CurrentUserGroupPolicy, "MY", gpReq)
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	if _, err := e.v.Import(bg, admin, CurrentUserGroupPolicy, "MY", gpReq); err != nil {
		t.Fatal(err)
	}
	if _, err := e.v.Lookup(bg, bob, CurrentUserGroupPolicy, "MY", sha1Of(gpCert)); err != nil {
		t.Errorf("user reading CURRENT_USER_GROUP_POLICY: %v", err)
	}
	_, err = e.v.Lookup(bg, agent, CurrentUserGroupPolicy, "MY", sha1Of(gpCert))
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	// Each shared location is its own namespace.
	_, err = e.v.Lookup(bg, bob, LocalMachineGroupPolicy, "MY", sha1Of(gpCert))
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)

	// A job whose owner may not read the location gets no key, and the
	// refusal is audited.
	_, err = e.v.Key(bg, KeyRequest{Owner: agent, Location: CurrentUserGroupPolicy, Store: "MY", SHA1: sha1Of(gpCert), Agent: agent.Principal})
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	evs := e.vaultEvents()
	last := evs[len(evs)-1]
	if d, _ := last.Payload(); last.Type != events.TypeKeyReleaseDenied || d.(*events.KeyReleaseDenied).Code != "E_ACCESSDENIED" {
		t.Errorf("last event %s %+v", last.Type, d)
	}
	// A release without an agent is refused.
	_, err = e.v.Key(bg, KeyRequest{Owner: admin, Location: CurrentUserGroupPolicy, Store: "MY", SHA1: sha1Of(gpCert)})
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
}

func TestLookupBySubject(t *testing.T) {
	now := time.Now()
	e := newEnv(t)
	p := newPKI(t)
	imp := func(o leafOpts) *x509.Certificate {
		req, c, _ := pemImport(t, p, o)
		if _, err := e.v.Import(bg, alice, CurrentUser, "MY", req); err != nil {
			t.Fatal(err)
		}
		return c
	}
	opsOld := imp(leafOpts{subject: subjectOf("Example", []string{"Ops"}, "alice"), notAfter: now.Add(time.Hour)})
	opsNew := imp(leafOpts{subject: subjectOf("Example", []string{"Ops"}, "alice"), notAfter: now.Add(48 * time.Hour)})
	imp(leafOpts{subject: subjectOf("Example", []string{"Ops"}, "alice"), notBefore: now.Add(time.Hour), notAfter: now.Add(96 * time.Hour)}) // not yet valid
	dev := imp(leafOpts{subject: subjectOf("Example", []string{"Dev"}, "alice")})
	imp(leafOpts{subject: subjectOf("Example", []string{"Old"}, "bob"), notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-24 * time.Hour)})
	carol := imp(leafOpts{subject: subjectOf("Example, Inc.", nil, "carol")})
	_ = opsOld

	for name, want := range map[string]*x509.Certificate{
		"Ops, alice":           opsNew, // the renewal with the latest NotAfter
		"example, ops, ALICE":  opsNew,
		"Dev, alice":           dev,
		"Dev":                  dev,
		"Example, Inc., carol": carol,
		"carol":                carol,
	} {
		info, err := e.v.LookupBySubject(bg, alice, CurrentUser, "MY", name)
		if err != nil {
			t.Errorf("%q: %v", name, err)
			continue
		}
		if info.SHA1 != sha1Hex(want) {
			t.Errorf("%q found %s (%s, not after %v)", name, info.Subject, info.SHA1, info.NotAfter)
		}
	}
	_, err := e.v.LookupBySubject(bg, alice, CurrentUser, "MY", "alice")
	wantCode(t, err, "E_INVALIDARG", hrInvalidArg)
	if !strings.Contains(err.Error(), "ambiguous") || !strings.Contains(err.Error(), "OU=Dev") || !strings.Contains(err.Error(), "OU=Ops") {
		t.Errorf("ambiguity error %q", err)
	}
	_, err = e.v.LookupBySubject(bg, alice, CurrentUser, "MY", "Example")
	wantCode(t, err, "E_INVALIDARG", hrInvalidArg)
	for name, detail := range map[string]string{"ali": "matches", "Inc.": "matches", "bob": "none is valid now", "Old, bob": "none is valid now"} {
		_, err := e.v.LookupBySubject(bg, alice, CurrentUser, "MY", name)
		wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
		if !strings.Contains(err.Error(), detail) {
			t.Errorf("%q: %q does not say %q", name, err, detail)
		}
	}
	_, err = e.v.LookupBySubject(bg, alice, CurrentUser, "MY", "")
	wantCode(t, err, "RPC_X_NULL_REF_POINTER", hrNullRef)
	_, err = e.v.LookupBySubject(bg, alice, CurrentUser, "MY", strings.Repeat("x", 256))
	wantCode(t, err, "BG_E_STRING_TOO_LONG", hrTooLong)
	_, err = e.v.LookupBySubject(bg, alice, CurrentUser, "Nope", "alice")
	wantCode(t, err, "ERROR_FILE_NOT_FOUND", hrFileNotFound)
	_, err = e.v.LookupBySubject(bg, bob, CurrentUser, "MY", "Dev")
	wantCode(t, err, "CRYPT_E_NOT_FOUND", hrCryptNotFnd)
}

func TestRotate(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)
	type imported struct {
		c *x509.Certificate
		k crypto.Signer
	}
	var certs []imported
	for range 3 {
		req, c, k := pemImport(t, p, leafOpts{})
		if _, err := e.v.Import(bg, alice, CurrentUser, "MY", req); err != nil {
			t.Fatal(err)
		}
		certs = append(certs, imported{c, k})
	}
	kek2 := testKEK(t)
	v12 := e.open(testKeyring(t, map[int][]byte{1: e.kek, 2: kek2}))
	res, err := v12.Rotate(bg)
	if err != nil || res != (RotateResult{Active: 2, Rewrapped: 3}) {
		t.Fatalf("Rotate = %+v, %v", res, err)
	}
	// Idempotent.
	if res, err := v12.Rotate(bg); err != nil || res != (RotateResult{Active: 2, Current: 3}) {
		t.Fatalf("second Rotate = %+v, %v", res, err)
	}
	if use, err := v12.KEKVersionsInUse(bg); err != nil || len(use) != 1 || use[2] != 3 {
		t.Fatalf("KEKVersionsInUse = %v, %v", use, err)
	}
	// A vault process still on the old keyring imports meanwhile: a new
	// run picks up just that record.
	req, c, k := pemImport(t, p, leafOpts{})
	if _, err := e.v.Import(bg, alice, CurrentUser, "MY", req); err != nil {
		t.Fatal(err)
	}
	certs = append(certs, imported{c, k})
	if use, _ := v12.KEKVersionsInUse(bg); use[1] != 1 || use[2] != 3 {
		t.Fatalf("KEKVersionsInUse after a late import = %v", use)
	}
	if res, err := v12.Rotate(bg); err != nil || res != (RotateResult{Active: 2, Rewrapped: 1, Current: 3}) {
		t.Fatalf("third Rotate = %+v, %v", res, err)
	}
	// The old KEK can go: a vault with version 2 only opens everything.
	v2 := e.open(testKeyring(t, map[int][]byte{2: kek2}))
	for _, ic := range certs {
		wantKey(t, v2, alice, CurrentUser, "MY", ic.c, ic.k, 1)
	}
	// …and one with version 1 only is refused at once.
	_, err = New(bg, e.js, e.store, testKeyring(t, map[int][]byte{1: e.kek}), zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "version 2, which is not in the keyring") {
		t.Fatalf("New with the dropped KEK only: %v", err)
	}
	// The rotation runs are audited without key material.
	var rewraps []*events.VaultKeysRewrapped
	for _, ev := range e.vaultEvents() {
		if ev.Type == events.TypeVaultKeysRewrapped {
			p, _ := ev.Payload()
			rewraps = append(rewraps, p.(*events.VaultKeysRewrapped))
			if ev.AggregateID != events.VaultKeyringID {
				t.Errorf("rotation event on %s", ev.Subject())
			}
		}
	}
	if len(rewraps) != 2 || rewraps[0].Rewrapped != 3 || rewraps[1].Rewrapped != 1 || rewraps[0].ActiveVersion != 2 || len(rewraps[0].FromVersions) != 1 {
		t.Errorf("rotation events %+v", rewraps)
	}
	raw := append(streamBytes(t, e.js, events.StreamName), streamBytes(t, e.js, "KV_"+Bucket)...)
	scanFor(t, "the streams", raw, map[string][]byte{"KEK 1": e.kek, "KEK 2": kek2})
}

// TestWrongKEK: a keyring whose version 1 is another key neither opens the
// vault nor decrypts a record.
func TestWrongKEK(t *testing.T) {
	e := newEnv(t)
	req, c, _ := pemImport(t, newPKI(t), leafOpts{})
	if _, err := e.v.Import(bg, alice, CurrentUser, "MY", req); err != nil {
		t.Fatal(err)
	}
	_, err := New(bg, e.js, e.store, testKeyring(t, map[int][]byte{1: testKEK(t)}), zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "does not open the records wrapped with version 1") {
		t.Fatalf("New with a wrong KEK: %v", err)
	}
	// Past that check (a vault opened with the right keyring whose key is
	// then wrong), decryption fails closed: E_FAIL, no key, an audited
	// refusal.
	wrong := *e.v
	wrong.keys = testKeyring(t, map[int][]byte{1: testKEK(t)})
	tc, err := wrong.Key(bg, KeyRequest{Owner: alice, Location: CurrentUser, Store: "MY", SHA1: sha1Of(c), Agent: agent.Principal})
	wantCode(t, err, "E_FAIL", "0x80004005")
	if tc != nil {
		t.Fatal("a key came out")
	}
	evs := e.vaultEvents()
	if d, _ := evs[len(evs)-1].Payload(); d.(*events.KeyReleaseDenied).Code != "E_FAIL" {
		t.Errorf("refusal not audited: %+v", d)
	}
}

func TestNewChecksArguments(t *testing.T) {
	_, err := New(bg, nil, nil, nil, zerolog.Nop(), WithReplicas(9))
	for _, want := range []string{"no JetStream", "no event store", "no keyring", "replicas 9"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(nil…): %v, want it to say %q", err, want)
		}
	}
}

func TestClock(t *testing.T) {
	_, _, js := eventstest.StartServer(t)
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	st := events.NewMemoryStore()
	v, err := New(bg, js, st, testKeyring(t, map[int][]byte{1: testKEK(t)}), zerolog.Nop(), WithClock(func() time.Time { return at }))
	if err != nil {
		t.Fatal(err)
	}
	req, _, _ := pemImport(t, newPKI(t), leafOpts{})
	info, err := v.Import(bg, alice, CurrentUser, "MY", req)
	if err != nil || !info.ImportedAt.Equal(at) {
		t.Fatalf("Import = %+v, %v", info, err)
	}
	evs, err := st.Load(bg, events.Subject(events.KindVault, info.SHA1), 0)
	if err != nil || len(evs) != 1 || !evs[0].Time.Equal(at) {
		t.Fatalf("events %v, %v", evs, err)
	}
}

func sha1Hex(c *x509.Certificate) string { s := sha1Of(c); return hex.EncodeToString(s[:]) }

// TestLongestNames: the longest principal and store name still make valid
// KV keys and filters.
func TestLongestNames(t *testing.T) {
	e := newEnv(t)
	p := newPKI(t)
	owner := Caller{Principal: "spiffe://ferry.test/user/" + strings.Repeat("é", (MaxPrincipalLen-25)/2), Role: RoleUser}
	store := strings.Repeat("ß", MaxNameUnits) // 255 two-byte characters
	req, c, k := pemImport(t, p, leafOpts{})
	if _, err := e.v.Import(bg, owner, CurrentUser, store, req); err != nil {
		t.Fatal(err)
	}
	if list, err := e.v.List(bg, owner, CurrentUser, store); err != nil || len(list) != 1 {
		t.Fatalf("List: %v, %v", list, err)
	}
	wantKey(t, e.v, owner, CurrentUser, store, c, k, 1)
	store3 := strings.Repeat("€", MaxNameUnits) // 255 three-byte characters
	if _, err := e.v.Import(bg, alice, CurrentUser, store3, req); err != nil {
		t.Fatal(err)
	}
	if err := e.v.Remove(bg, alice, CurrentUser, store3, sha1Of(c)); err != nil {
		t.Fatal(err)
	}
}
