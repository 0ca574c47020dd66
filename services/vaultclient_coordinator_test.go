package services

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/httpapi"
)

// subjectCert is a self-signed client certificate with its key, as PEM.
func subjectCert(t *testing.T, subject pkix.Name) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := x509.MarshalPKCS8PrivateKey(key)
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})...)
}

// TestVaultClient: the coordinator's certvault client against certvault's
// real HTTPS server, with the coordinator's identity and no admin role
// there. Lookups by subject name apply the owner's rights (refusals with
// the codes of thumbprint lookups) and keep certvault's codes, ambiguity
// included; write-only header values are stored and deleted; a certvault
// that does not accept the coordinator, does not know the API, redirects
// or cannot be reached gives clear errors; the value is in no error, log
// line or event.
func TestVaultClient(t *testing.T) {
	ctx := context.Background()
	sv := startSeparateVault(t, nil)
	alice := certvault.Caller{Principal: sv.principal(identity.RoleUser, "alice"), Role: "user"}
	bob := certvault.Caller{Principal: sv.principal(identity.RoleUser, "bob"), Role: "user"}
	admin := certvault.Caller{Principal: sv.principal(identity.RoleAdmin, "root"), Role: "admin"}
	mine, err := sv.vault.Import(ctx, alice, certvault.CurrentUser, "MY", certvault.ImportRequest{PEM: subjectCert(t, pkix.Name{Organization: []string{"Example"}, CommonName: "alice"})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sv.vault.Import(ctx, alice, certvault.CurrentUser, "MY", certvault.ImportRequest{PEM: subjectCert(t, pkix.Name{Organization: []string{"Other"}, CommonName: "alice"})}); err != nil {
		t.Fatal(err)
	}
	shared, err := sv.vault.Import(ctx, admin, certvault.LocalMachine, "MY", certvault.ImportRequest{PEM: subjectCert(t, pkix.Name{CommonName: "machine"})})
	if err != nil {
		t.Fatal(err)
	}
	coord := sv.client(t, identity.RoleService, "coordinator")
	var errs []error // every error, for the scan

	// By subject name, as the owner named the store.
	info, err := coord.LookupBySubject(ctx, alice, certvault.CurrentUser, "my", "Example, alice")
	if err != nil || info.SHA1 != mine.SHA1 || info.Location != certvault.CurrentUser || info.Store != "MY" {
		t.Fatalf("alice's certificate by subject: %+v %v", info, err)
	}
	if info, err := coord.LookupBySubject(ctx, admin, certvault.Users, alice.Principal+`\MY`, "Example, alice"); err != nil || info.SHA1 != mine.SHA1 || info.Store != alice.Principal+`\MY` {
		t.Fatalf("an admin owner naming USERS: %+v %v", info, err)
	}
	for _, c := range []struct {
		name    string
		owner   certvault.Caller
		loc     certvault.Location
		store   string
		subject string
		code    job.Code
		detail  string
	}{
		{"ambiguous name", alice, certvault.CurrentUser, "MY", "alice", job.E_INVALIDARG, "ambiguous"},
		{"another user's CURRENT_USER is theirs", bob, certvault.CurrentUser, "MY", "Example, alice", job.CRYPT_E_NOT_FOUND, ""},
		{"a user may not address USERS", alice, certvault.Users, bob.Principal + `\MY`, "alice", job.E_ACCESSDENIED, "for admins"},
		{"a user has no CURRENT_SERVICE", alice, certvault.CurrentService, "MY", "alice", job.E_ACCESSDENIED, "CURRENT_SERVICE"},
		{"location outside the enum", alice, certvault.Location(9), "MY", "alice", job.E_NOTIMPL, ""},
		{"name checked first", alice, certvault.CurrentUser, "", "alice", job.RPC_X_NULL_REF_POINTER, ""},
		{"no such store", alice, certvault.CurrentUser, "NOPE", "alice", job.ERROR_FILE_NOT_FOUND, ""},
		{"no subject", alice, certvault.CurrentUser, "MY", "", job.RPC_X_NULL_REF_POINTER, ""},
		{"part of a value", alice, certvault.CurrentUser, "MY", "ali", job.CRYPT_E_NOT_FOUND, ""},
	} {
		_, err := coord.LookupBySubject(ctx, c.owner, c.loc, c.store, c.subject)
		if job.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.detail) {
			t.Errorf("%s: %v, want %s", c.name, err, c.code.Symbol)
		}
	}
	// By thumbprint it is VaultLookup: shared stores need no admin role.
	sum, _ := hex.DecodeString(shared.SHA1)
	if info, err := coord.Lookup(ctx, alice, certvault.LocalMachine, "MY", [20]byte(sum)); err != nil || info.SHA1 != shared.SHA1 {
		t.Fatalf("thumbprint in LOCAL_MACHINE: %+v %v", info, err)
	}

	// Write-only header values.
	secret := "wo-" + hex.EncodeToString(randomKEK(t)[:12])
	names, err := coord.StoreHeaders(ctx, alice, "job-1", []string{"x-api-key: " + secret, "X-Tenant: blue"})
	if err != nil || !slices.Equal(names, []string{"X-Api-Key", "X-Tenant"}) {
		t.Fatalf("store: %v %v", names, err)
	}
	lines, err := sv.vault.Headers(ctx, certvault.HeadersRequest{Job: "job-1", Owner: alice.Principal, Names: names,
		Agent: sv.principal(identity.RoleAgent, "a1"), Lease: "1", GrantID: "g"})
	if err != nil || !slices.Equal(lines, []string{"X-Api-Key: " + secret, "X-Tenant: blue"}) {
		t.Fatalf("the values certvault holds: %v", err)
	}
	for _, c := range []struct {
		name  string
		lines []string
		code  job.Code
	}{
		{"not a header line", []string{"X-Api-Key " + secret}, job.E_INVALIDARG},
		{"a line break", []string{"X-Api-Key: " + secret + "\nX-More: 1"}, job.E_INVALIDARG},
		{"too long", []string{"X-Api-Key: " + secret + strings.Repeat("a", 17000)}, job.BG_E_STRING_TOO_LONG},
		{"not UTF-8", []string{"X-Api-Key: " + secret + "\xff"}, job.E_INVALIDARG},
		{"none", nil, job.RPC_X_NULL_REF_POINTER},
	} {
		_, err := coord.StoreHeaders(ctx, alice, "job-1", c.lines)
		if job.CodeOf(err) != c.code {
			t.Errorf("%s: %v, want %s", c.name, err, c.code.Symbol)
		}
		errs = append(errs, err)
	}
	for i, want := range []bool{true, false} {
		deleted, err := coord.DeleteHeaders(ctx, alice, "job-1", events.HeadersDeletedByOwner)
		if err != nil || deleted != want {
			t.Fatalf("delete %d: %v %v", i, deleted, err)
		}
	}
	if _, err := coord.DeleteHeaders(ctx, alice, "job-1", "whim"); job.CodeOf(err) != job.E_INVALIDARG {
		t.Fatalf("delete with an unknown reason: %v", err)
	}

	// A certvault that does not take the caller for the coordinator: the
	// operator's problem, said so, not an access denial of the owner's.
	namesake := sv.client(t, identity.RoleService, "coordinator2")
	_, err1 := namesake.LookupBySubject(ctx, alice, certvault.CurrentUser, "MY", "Example, alice")
	_, err2 := namesake.StoreHeaders(ctx, alice, "job-2", []string{"X-Api-Key: " + secret})
	_, err3 := namesake.DeleteHeaders(ctx, alice, "job-1", events.HeadersDeletedByOwner)
	for i, err := range []error{err1, err2, err3} {
		if job.CodeOf(err) != job.ERROR_SERVICE_UNAVAILABLE || !strings.Contains(err.Error(), "service/coordinator") {
			t.Errorf("namesake call %d: %v", i, err)
		}
		errs = append(errs, err)
	}
	// An identity from another CA is not even authenticated: the same.
	other, _ := identity.NewCA(sv.ca.TrustDomain())
	stranger := NewVaultClient(sv.url, identity.ClientTLSConfig(issue(t, other, identity.RoleService, "coordinator"), sv.ca.Pool()))
	if _, err := stranger.StoreHeaders(ctx, alice, "job-2", []string{"X-Api-Key: " + secret}); job.CodeOf(err) != job.ERROR_SERVICE_UNAVAILABLE {
		t.Errorf("a coordinator of another CA: %v", err)
	} else {
		errs = append(errs, err)
	}
	if holdsHeaders(t, sv, "job-2") {
		t.Fatal("a refused store stored values")
	}

	// Unreachable, not https, an older certvault, a redirect.
	tlsCfg := identity.ClientTLSConfig(issue(t, sv.ca, identity.RoleService, "coordinator"), sv.ca.Pool())
	gone := NewVaultClient("https://127.0.0.1:1", tlsCfg)
	if _, err := gone.StoreHeaders(ctx, alice, "job-3", []string{"X-Api-Key: " + secret}); job.CodeOf(err) != job.ERROR_SERVICE_UNAVAILABLE {
		t.Errorf("unreachable: %v", err)
	} else {
		errs = append(errs, err)
	}
	plain := NewVaultClient("http://127.0.0.1:1", tlsCfg)
	if _, err := plain.StoreHeaders(ctx, alice, "job-3", []string{"X-Api-Key: " + secret}); job.CodeOf(err) != job.ERROR_SERVICE_UNAVAILABLE || !strings.Contains(err.Error(), "https") {
		t.Errorf("http URL: %v", err)
	}
	var elsewhere atomic.Int32
	sink := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	sink.TLS = identity.ServerTLSConfig(issue(t, sv.ca, identity.RoleService, "elsewhere", net.IPv4(127, 0, 0, 1)), sv.ca.Pool())
	sink.StartTLS()
	defer sink.Close()
	fake := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/coordinator/jobs/") {
			http.Redirect(w, r, sink.URL+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		// What a certvault without the coordinator API answers.
		httpapi.WriteError(w, r, job.Errorf(job.ERROR_NOT_FOUND, "no such resource"))
	}))
	fake.TLS = identity.ServerTLSConfig(issue(t, sv.ca, identity.RoleService, "certvault", net.IPv4(127, 0, 0, 1)), sv.ca.Pool())
	fake.StartTLS()
	defer fake.Close()
	old := NewVaultClient(fake.URL, tlsCfg)
	if _, err := old.LookupBySubject(ctx, alice, certvault.CurrentUser, "MY", "alice"); job.CodeOf(err) != job.E_NOTIMPL || !strings.Contains(err.Error(), "upgrade certvault") {
		t.Errorf("an older certvault: %v", err)
	}
	if _, err := old.StoreHeaders(ctx, alice, "job-3", []string{"X-Api-Key: " + secret}); job.CodeOf(err) != job.ERROR_SERVICE_UNAVAILABLE {
		t.Errorf("a redirect: %v", err)
	} else {
		errs = append(errs, err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the client followed a redirect: %d requests elsewhere", n)
	}

	// The value is in no error, log line or event.
	for _, err := range errs {
		if err == nil {
			t.Error("a nil error")
			continue
		}
		for e := err; e != nil; e = errors.Unwrap(e) {
			if strings.Contains(e.Error(), secret) {
				t.Errorf("error %v holds the value", err)
			}
		}
	}
	if log := sv.log.String(); strings.Contains(log, secret) || !strings.Contains(log, "write-only headers stored") {
		t.Errorf("certvault's log holds the value, or nothing:\n%s", log)
	}
	if evs := eventstest.StreamText(t, sv.js); strings.Contains(evs, secret) || !strings.Contains(evs, events.TypeWriteOnlyHeadersStored) {
		t.Errorf("the event stream holds the value, or nothing")
	}
}

// holdsHeaders reports whether certvault holds write-only header values
// for a job (asked through Headers, which refuses with ERROR_NOT_FOUND when
// it holds none, and with E_ACCESSDENIED when they were stored by another
// owner than the one asked for).
func holdsHeaders(t *testing.T, sv *separateVault, jobID string) bool {
	t.Helper()
	_, err := sv.vault.Headers(context.Background(), certvault.HeadersRequest{Job: jobID, Owner: "nobody", Names: []string{"X-Api-Key"},
		Agent: sv.principal(identity.RoleAgent, "a1"), Lease: "1", GrantID: "probe"})
	switch job.CodeOf(err) {
	case job.ERROR_NOT_FOUND:
		return false
	case job.E_ACCESSDENIED:
		return true
	}
	t.Fatalf("probe: %v", err)
	return false
}

func randomKEK(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
