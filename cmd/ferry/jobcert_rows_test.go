package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// actionJSON is what `-o json` prints for a job action.
type actionJSON struct {
	Code    string  `json:"code"`
	HResult string  `json:"hresult"`
	Job     job.Job `json:"job"`
}

func decodeAction(t *testing.T, r cliRun) actionJSON {
	t.Helper()
	var a actionJSON
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &a) != nil || a.Job.ID == "" {
		t.Fatalf("exit %d, stdout %q, stderr %q: want a JSON action result", r.code, r.stdout, r.stderr)
	}
	return a
}

// TestJobCertRowsCLI: every row of DESIGN.md §1's SetClientCertificateByID
// table through the real binary against `ferry dev` (as
// coordinator.TestSetClientCertificateResults does through the API), with
// the symbol and HRESULT the CLI prints in both output formats and its exit
// status, then the successful calls (by thumbprint in openssl and spaced
// spellings, by subject name, show, remove twice) and take-ownership by an
// administrator and by users who are not.
//
// A refusal prints exactly one line on stderr — "ferry: SYMBOL (HRESULT):
// detail" with -o text, the problem document with -o json — nothing on
// stdout, exits 1, and leaves the job as it was.
func TestJobCertRowsCLI(t *testing.T) {
	o := servicestest.NewOrigin(t)
	dataDir, root := t.TempDir(), t.TempDir()
	startStack(t, dataDir, root, o.CAFile)
	pki := filepath.Join(dataDir, "pki")
	admin := cliIdentity{name: "admin"}

	// Two more identities from the dev CA, both users: bob presents his by
	// environment, carol hers by flags.
	for _, name := range []string{"bob", "carol"} {
		r := runCLIAs(t, dataDir, admin, "ca", "issue", "--role", "user", "--name", name)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "spiffe://ferry.dev/user/"+name+"\n") {
			t.Fatalf("ca issue %s: %+v", name, r)
		}
	}
	bob := cliIdentity{name: "bob", env: []string{"FERRY_CERT=" + filepath.Join(pki, "bob.pem"), "FERRY_KEY=" + filepath.Join(pki, "bob-key.pem")}}
	carol := cliIdentity{name: "carol", flags: []string{"--cert", filepath.Join(pki, "carol.pem"), "--key", filepath.Join(pki, "carol-key.pem")}}
	principals := map[string]string{}
	for _, w := range []cliIdentity{admin, bob, carol} {
		r := runCLIAs(t, dataDir, w, "whoami", "-o", "json")
		var s struct{ Principal, Role string }
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &s) != nil {
			t.Fatalf("whoami as %s: %+v", w.name, r)
		}
		wantRole := map[string]string{"admin": "admin", "bob": "user", "carol": "user"}[w.name]
		if s.Role != wantRole || (w.name != "admin" && s.Principal != "spiffe://ferry.dev/user/"+w.name) {
			t.Fatalf("whoami as %s: principal %s role %s", w.name, s.Principal, s.Role)
		}
		principals[w.name] = s.Principal
	}

	// Certificates: two of the administrator's (in CURRENT_USER\MY), one
	// of bob's (in his own CURRENT_USER\MY).
	type certInfo struct{ SHA1, Subject, Store, Location string }
	importAs := func(w cliIdentity, cn string) certInfo {
		t.Helper()
		certPEM, keyPEM, _ := clientCertFiles(t, cn, "unused")
		f := filepath.Join(t.TempDir(), cn+".pem")
		if err := os.WriteFile(f, append(certPEM, keyPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runCLIAs(t, dataDir, w, "cert", "import", "--pem", f, "-o", "json")
		var c certInfo
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &c) != nil || len(c.SHA1) != 40 || c.Store != "MY" || c.Location != "CURRENT_USER" {
			t.Fatalf("import %s as %s: %+v", cn, w.name, r)
		}
		return c
	}
	certA := importAs(admin, "rows-a@example.test")
	certB := importAs(admin, "rows-b@example.test")
	certBob := importAs(bob, "bob@example.test")

	// Jobs: the administrator's (SUSPENDED, CANCELLED, ACKNOWLEDGED) and
	// bob's, which has bob's certificate.
	create := func(w cliIdentity, name string) string {
		t.Helper()
		r := runCLIAs(t, dataDir, w, "job", "create", "--name", name)
		id := strings.TrimSpace(r.stdout)
		if r.code != 0 || len(id) != 36 {
			t.Fatalf("create %s as %s: %+v", name, w.name, r)
		}
		return id
	}
	id := create(admin, "rows")
	cancelled := create(admin, "rows-cancelled")
	if r := runCLIAs(t, dataDir, admin, "job", "cancel", cancelled); r.code != 0 {
		t.Fatalf("cancel: %+v", r)
	}
	acked := create(admin, "rows-acked")
	if r := runCLIAs(t, dataDir, admin, "job", "complete", acked); r.code != 0 || !strings.Contains(r.stdout, "job is ACKNOWLEDGED") {
		t.Fatalf("complete of an empty job: %+v", r)
	}
	bobJob := create(bob, "rows-bob")
	if r := runCLIAs(t, dataDir, bob, "job", "cert", "set", bobJob, "--thumbprint", certBob.SHA1); r.code != 0 ||
		r.stdout != "cert set "+bobJob+": S_OK, job is SUSPENDED\n" {
		t.Fatalf("bob sets his certificate: %+v", r)
	}
	for j, st := range map[string]job.State{id: job.Suspended, cancelled: job.Cancelled, acked: job.Acknowledged, bobJob: job.Suspended} {
		if got := showJob(t, dataDir, j); got.State != st {
			t.Fatalf("job %s is %s, want %s", j, got.State, st)
		}
	}

	set := func(j string, more ...string) []string { return append([]string{"job", "cert", "set", j}, more...) }
	colons := func(sha1 string) string { // "AB:CD:…", as openssl prints it
		var parts []string
		for i := 0; i < len(sha1); i += 2 {
			parts = append(parts, strings.ToUpper(sha1[i:i+2]))
		}
		return strings.Join(parts, ":")
	}
	spaced := strings.Join(strings.Split(colons(certA.SHA1), ":"), " ") // "AB CD …"
	adminMY := principals["admin"] + `\MY`
	unknown := strings.Repeat("ab", 20) // 20 bytes that no imported certificate has

	type row struct {
		name string
		as   cliIdentity
		args []string
		// A refusal: the job it must leave unchanged, and the symbol and
		// HRESULT printed (exit 1) with -o text and -o json.
		job, code, hresult string
		// A success: run once as given; ok checks the output (exit 0).
		ok func(t *testing.T, r cliRun)
	}
	rows := []row{
		// caller may not use that store location / is not the job owner
		{name: "not the owner (bob, identity by environment)", as: bob, args: set(id, "--thumbprint", certA.SHA1), job: id, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "not the owner (carol, identity by flags)", as: carol, args: set(id, "--thumbprint", certA.SHA1), job: id, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "administrator is not the owner", as: admin, args: set(bobJob, "--thumbprint", certBob.SHA1), job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "CURRENT_SERVICE is for services (admin)", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--location", "CURRENT_SERVICE"), job: id, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "CURRENT_SERVICE by number (admin)", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--location", "2"), job: id, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "CURRENT_SERVICE is for services (user)", as: bob, args: set(bobJob, "--thumbprint", certBob.SHA1, "--location", "CURRENT_SERVICE"), job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "USERS is for admins", as: bob, args: set(bobJob, "--thumbprint", certA.SHA1, "--location", "USERS", "--store", adminMY), job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "SERVICES is for admins", as: bob, args: set(bobJob, "--thumbprint", certA.SHA1, "--location", "3", "--store", adminMY), job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		// location not in the enum
		{name: "location 9", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--location", "9"), job: id, code: "E_NOTIMPL", hresult: "0x80004001"},
		{name: "location 8", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--location", "8"), job: id, code: "E_NOTIMPL", hresult: "0x80004001"},
		{name: "location -1", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--location=-1"), job: id, code: "E_NOTIMPL", hresult: "0x80004001"},
		{name: "location NOWHERE", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--location", "NOWHERE"), job: id, code: "E_NOTIMPL", hresult: "0x80004001"},
		{name: "location empty", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--location="), job: id, code: "E_NOTIMPL", hresult: "0x80004001"},
		{name: "location before access", as: bob, args: set(id, "--thumbprint", certA.SHA1, "--location", "9"), job: id, code: "E_NOTIMPL", hresult: "0x80004001"},
		// no store with that name
		{name: "no such store", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--store", "NOSUCH"), job: id, code: "ERROR_FILE_NOT_FOUND", hresult: "0x80070002"},
		{name: "no such store, 255 characters", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--store", strings.Repeat("S", 255)), job: id, code: "ERROR_FILE_NOT_FOUND", hresult: "0x80070002"},
		// no certificate with that hash in the store
		{name: "unknown thumbprint", as: admin, args: set(id, "--thumbprint", unknown), job: id, code: "CRYPT_E_NOT_FOUND", hresult: "0x80092004"},
		{name: "another user's certificate", as: admin, args: set(id, "--thumbprint", certBob.SHA1), job: id, code: "CRYPT_E_NOT_FOUND", hresult: "0x80092004"},
		{name: "unknown subject", as: admin, args: set(id, "--subject", "Example, nobody@example.test"), job: id, code: "CRYPT_E_NOT_FOUND", hresult: "0x80092004"},
		// store name or hash missing
		{name: "store missing", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--store="), job: id, code: "RPC_X_NULL_REF_POINTER", hresult: "0x800706F4"},
		{name: "thumbprint missing", as: admin, args: set(id, "--thumbprint="), job: id, code: "RPC_X_NULL_REF_POINTER", hresult: "0x800706F4"},
		{name: "subject missing", as: admin, args: set(id, "--subject="), job: id, code: "RPC_X_NULL_REF_POINTER", hresult: "0x800706F4"},
		{name: "thumbprint only separators", as: admin, args: set(id, "--thumbprint", ": :"), job: id, code: "RPC_X_NULL_REF_POINTER", hresult: "0x800706F4"},
		// hash not exactly 20 bytes
		{name: "thumbprint 19 bytes", as: admin, args: set(id, "--thumbprint", certA.SHA1[:38]), job: id, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},
		{name: "thumbprint 21 bytes", as: admin, args: set(id, "--thumbprint", certA.SHA1+"00"), job: id, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},
		{name: "thumbprint 2 bytes", as: admin, args: set(id, "--thumbprint", "abcd"), job: id, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},
		{name: "thumbprint 32 bytes", as: admin, args: set(id, "--thumbprint", strings.Repeat("ab", 32)), job: id, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},
		// Text that is not hex is no hash at all: E_INVALIDARG, as
		// docs/certvault.md (thumbprints) says, not RPC_X_BAD_STUB_DATA.
		{name: "thumbprint not hex", as: admin, args: set(id, "--thumbprint", strings.Repeat("zz", 20)), job: id, code: "E_INVALIDARG", hresult: "0x80070057"},
		{name: "thumbprint odd digits", as: admin, args: set(id, "--thumbprint", certA.SHA1[:39]), job: id, code: "E_INVALIDARG", hresult: "0x80070057"},
		// store name longer than 256 (with the terminator: 255 characters)
		{name: "store name 257", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--store", strings.Repeat("S", 257)), job: id, code: "BG_E_STRING_TOO_LONG", hresult: "0x80200021"},
		{name: "store name 256", as: admin, args: set(id, "--thumbprint", certA.SHA1, "--store", strings.Repeat("S", 256)), job: id, code: "BG_E_STRING_TOO_LONG", hresult: "0x80200021"},
		{name: "bad thumbprint before long store", as: admin, args: set(id, "--thumbprint", "abcd", "--store", strings.Repeat("S", 300)), job: id, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},
		// job CANCELLED or ACKNOWLEDGED
		{name: "cancelled job", as: admin, args: set(cancelled, "--thumbprint", certA.SHA1), job: cancelled, code: "BG_E_INVALID_STATE", hresult: "0x80200002"},
		{name: "acknowledged job", as: admin, args: set(acked, "--thumbprint", certA.SHA1), job: acked, code: "BG_E_INVALID_STATE", hresult: "0x80200002"},
		{name: "cancelled job by subject", as: admin, args: set(cancelled, "--subject", "Example, rows-a@example.test"), job: cancelled, code: "BG_E_INVALID_STATE", hresult: "0x80200002"},
		// Nothing above set a certificate.
		{name: "show before any set", as: admin, args: []string{"job", "cert", "show", id}, job: id, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},

		// The successes, in order.
		{name: "set by thumbprint, openssl spelling", as: admin, args: set(id, "--thumbprint", colons(certA.SHA1)), ok: func(t *testing.T, r cliRun) {
			if r.code != 0 || r.stdout != "cert set "+id+": S_OK, job is SUSPENDED\n" || r.stderr != "" {
				t.Fatalf("%+v", r)
			}
		}},
		{name: "set by thumbprint with spaces, the same certificate", as: admin, args: set(id, "--thumbprint", spaced, "--location", "0", "--store", "my", "-o", "json"), ok: func(t *testing.T, r cliRun) {
			a := decodeAction(t, r)
			if c := a.Job.ClientCertificate; a.Code != "S_FALSE" || a.HResult != "0x00000001" || c == nil || c.SHA1 != certA.SHA1 || c.Store != "MY" || c.Location != "CURRENT_USER" {
				t.Fatalf("%s %s %+v", a.Code, a.HResult, a.Job.ClientCertificate)
			}
		}},
		{name: "set by subject name", as: admin, args: set(id, "--subject", "Example, rows-b@example.test", "-o", "json"), ok: func(t *testing.T, r cliRun) {
			a := decodeAction(t, r)
			if c := a.Job.ClientCertificate; a.Code != "S_OK" || a.HResult != "0x00000000" || c == nil || c.SHA1 != certB.SHA1 || c.Subject != certB.Subject {
				t.Fatalf("%s %s %+v", a.Code, a.HResult, a.Job.ClientCertificate)
			}
		}},
		{name: "show -o json", as: admin, args: []string{"job", "cert", "show", id, "-o", "json"}, ok: func(t *testing.T, r cliRun) {
			var got, want map[string]string
			want = map[string]string{"location": "CURRENT_USER", "store": "MY", "thumbprint": certB.SHA1, "subject": certB.Subject}
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || len(got) != len(want) {
				t.Fatalf("%+v", r)
			}
			for k, v := range want {
				if got[k] != v {
					t.Fatalf("show: %v, want %v", got, want)
				}
			}
		}},
		{name: "show", as: admin, args: []string{"job", "cert", "show", id}, ok: func(t *testing.T, r cliRun) {
			want := []string{"Job", id, "Location", "CURRENT_USER", "Store", "MY", "Thumbprint", certB.SHA1, "Subject"}
			want = append(want, strings.Fields(certB.Subject)...)
			if r.code != 0 || !slices.Equal(strings.Fields(r.stdout), want) {
				t.Fatalf("show printed %q, want the fields %q", r.stdout, want)
			}
		}},
		{name: "remove", as: admin, args: []string{"job", "cert", "remove", id}, ok: func(t *testing.T, r cliRun) {
			if r.code != 0 || r.stdout != "cert remove "+id+": S_OK, job is SUSPENDED\n" {
				t.Fatalf("%+v", r)
			}
		}},
		{name: "remove again", as: admin, args: []string{"job", "cert", "remove", id, "-o", "json"}, ok: func(t *testing.T, r cliRun) {
			if a := decodeAction(t, r); a.Code != "S_FALSE" || a.HResult != "0x00000001" || a.Job.ClientCertificate != nil {
				t.Fatalf("%s %s %+v", a.Code, a.HResult, a.Job.ClientCertificate)
			}
		}},
		{name: "show after remove", as: admin, args: []string{"job", "cert", "show", id}, job: id, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},

		// take-ownership: administrators only; the certificate goes.
		{name: "take-ownership by the owner, a user", as: bob, args: []string{"job", "take-ownership", bobJob}, job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "take-ownership by another user", as: carol, args: []string{"job", "take-ownership", bobJob}, job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "take-ownership of the administrator's job by a user", as: bob, args: []string{"job", "take-ownership", id}, job: id, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "take-ownership by an administrator", as: admin, args: []string{"job", "take-ownership", bobJob, "-o", "json"}, ok: func(t *testing.T, r cliRun) {
			a := decodeAction(t, r)
			if a.Code != "S_OK" || a.HResult != "0x00000000" || a.Job.Owner != principals["admin"] || a.Job.ClientCertificate != nil {
				t.Fatalf("%s %s owner %s certificate %+v", a.Code, a.HResult, a.Job.Owner, a.Job.ClientCertificate)
			}
		}},
		{name: "show after take-ownership", as: admin, args: []string{"job", "cert", "show", bobJob}, job: bobJob, code: "RPC_X_BAD_STUB_DATA", hresult: "0x800706F7"},
		{name: "take-ownership again", as: admin, args: []string{"job", "take-ownership", bobJob}, ok: func(t *testing.T, r cliRun) {
			if r.code != 0 || r.stdout != "take-ownership "+bobJob+": S_FALSE, job is SUSPENDED\n" {
				t.Fatalf("%+v", r)
			}
		}},
		{name: "the previous owner no longer sees the job", as: bob, args: []string{"job", "cert", "show", bobJob}, job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
		{name: "the previous owner cannot set its certificate", as: bob, args: set(bobJob, "--thumbprint", certBob.SHA1), job: bobJob, code: "E_ACCESSDENIED", hresult: "0x80070005"},
	}

	for _, tc := range rows {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ok != nil {
				tc.ok(t, runCLIAs(t, dataDir, tc.as, tc.args...))
				return
			}
			if c, ok := job.LookupCode(tc.code); !ok || c.HResultString() != tc.hresult {
				t.Fatalf("the vocabulary disagrees with the row: %v %v", c, ok)
			}
			before := showJob(t, dataDir, tc.job)
			line := regexp.MustCompile(`^ferry: ` + regexp.QuoteMeta(tc.code+" ("+tc.hresult+"): ") + `\S[^\n]*\n$`)
			r := runCLIAs(t, dataDir, tc.as, append(append([]string(nil), tc.args...), "-o", "text")...)
			if r.code != 1 || r.stdout != "" || !line.MatchString(r.stderr) {
				t.Fatalf("-o text as %s: exit %d, stdout %q, stderr %q; want exit 1, no stdout, stderr \"ferry: %s (%s): …\"",
					tc.as.name, r.code, r.stdout, r.stderr, tc.code, tc.hresult)
			}
			// -o json: the problem document, one JSON line on stderr.
			r = runCLIAs(t, dataDir, tc.as, append(append([]string(nil), tc.args...), "-o", "json")...)
			var p struct{ Code, HResult, Detail string }
			if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || json.Unmarshal([]byte(r.stderr), &p) != nil ||
				p.Code != tc.code || p.HResult != tc.hresult || p.Detail == "" {
				t.Fatalf("-o json as %s: exit %d, stdout %q, stderr %q; want exit 1 and a problem document with code %s, hresult %s",
					tc.as.name, r.code, r.stdout, r.stderr, tc.code, tc.hresult)
			}
			if after := showJob(t, dataDir, tc.job); after.Version != before.Version || after.Owner != before.Owner {
				t.Fatalf("a refusal changed job %s: version %d → %d, owner %s → %s", tc.job, before.Version, after.Version, before.Owner, after.Owner)
			}
		})
	}
}
