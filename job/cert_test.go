package job

import (
	"testing"

	"github.com/ferry-dev/ferry/events"
)

const sha1A = "0123456789abcdef0123456789abcdef01234567"
const sha1B = "89abcdef0123456789abcdef0123456789abcdef"

func setCert(sha1, by, principal string) SetClientCertificate {
	return SetClientCertificate{Location: 0, LocationName: "CURRENT_USER", Store: "MY", SHA1: sha1,
		Subject: "CN=alice", By: by, CallerPrincipal: principal}
}

func withCert(t *testing.T, s State) Job {
	t.Helper()
	j := inState(t, s)
	if err := Apply(&j, &events.ClientCertificateSet{Location: "CURRENT_USER", Store: "MY", SHA1: sha1A, Subject: "CN=alice", By: CertByID}, t0); err != nil {
		t.Fatal(err)
	}
	return j
}

// TestClientCertificateDecide: SetClientCertificate, RemoveClientCertificate
// and TakeOwnership, rule by rule.
func TestClientCertificateDecide(t *testing.T) {
	cases := []struct {
		name  string
		job   func(*testing.T) Job
		cmd   Command
		want  string // event types, comma-separated
		code  Code   // refusal (zero: accepted)
		check func(*testing.T, Job)
	}{
		{name: "owner sets by id", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: setCert(sha1A, CertByID, "alice"), want: events.TypeClientCertificateSet,
			check: func(t *testing.T, j Job) {
				if c := j.ClientCertificate; c == nil || *c != (CertRef{"CURRENT_USER", "MY", sha1A, "CN=alice"}) {
					t.Fatalf("certificate %+v", c)
				}
			}},
		{name: "owner sets by name while transferring", job: func(t *testing.T) Job { return inState(t, Transferring) },
			cmd: setCert(sha1A, CertByName, "alice"), want: events.TypeClientCertificateSet},
		{name: "owner replaces", job: func(t *testing.T) Job { return withCert(t, Queued) },
			cmd: setCert(sha1B, CertByID, "alice"), want: events.TypeClientCertificateSet,
			check: func(t *testing.T, j Job) {
				if j.ClientCertificate.SHA1 != sha1B {
					t.Fatalf("certificate %+v", j.ClientCertificate)
				}
			}},
		{name: "same certificate again is a no-op", job: func(t *testing.T) Job { return withCert(t, Suspended) },
			cmd: setCert(sha1A, CertByID, "alice")},
		{name: "set by another user", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: setCert(sha1A, CertByID, "bob"), code: E_ACCESSDENIED},
		{name: "set by nobody", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: setCert(sha1A, CertByID, ""), code: E_ACCESSDENIED},
		{name: "set when cancelled", job: func(t *testing.T) Job { return inState(t, Cancelled) },
			cmd: setCert(sha1A, CertByID, "alice"), code: BG_E_INVALID_STATE},
		{name: "set when acknowledged", job: func(t *testing.T) Job { return inState(t, Acknowledged) },
			cmd: setCert(sha1A, CertByID, "alice"), code: BG_E_INVALID_STATE},
		{name: "access is checked before state", job: func(t *testing.T) Job { return inState(t, Cancelled) },
			cmd: setCert(sha1A, CertByID, "bob"), code: E_ACCESSDENIED},
		{name: "set in ERROR", job: func(t *testing.T) Job { return inState(t, Errored) },
			cmd: setCert(sha1A, CertByID, "alice"), want: events.TypeClientCertificateSet},
		{name: "location outside the enum", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: SetClientCertificate{Location: 8, LocationName: "X", Store: "MY", SHA1: sha1A, By: CertByID, CallerPrincipal: "alice"}, code: E_NOTIMPL},
		{name: "no store", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: SetClientCertificate{LocationName: "CURRENT_USER", SHA1: sha1A, By: CertByID, CallerPrincipal: "alice"}, code: RPC_X_NULL_REF_POINTER},
		{name: "no thumbprint", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: setCert("", CertByID, "alice"), code: RPC_X_NULL_REF_POINTER},
		{name: "thumbprint not 20 bytes", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: setCert(sha1A[:38], CertByID, "alice"), code: RPC_X_BAD_STUB_DATA},
		{name: "thumbprint upper case", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: setCert("0123456789ABCDEF0123456789ABCDEF01234567", CertByID, "alice"), code: RPC_X_BAD_STUB_DATA},
		{name: "unknown naming", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: setCert(sha1A, "guess", "alice"), code: E_INVALIDARG},

		{name: "owner removes", job: func(t *testing.T) Job { return withCert(t, Suspended) },
			cmd: RemoveClientCertificate{CallerPrincipal: "alice"}, want: events.TypeClientCertificateRemoved,
			check: func(t *testing.T, j Job) {
				if j.ClientCertificate != nil {
					t.Fatalf("certificate still set: %+v", j.ClientCertificate)
				}
			}},
		{name: "remove with none set", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: RemoveClientCertificate{CallerPrincipal: "alice"}},
		{name: "remove by another user", job: func(t *testing.T) Job { return withCert(t, Suspended) },
			cmd: RemoveClientCertificate{CallerPrincipal: "root"}, code: E_ACCESSDENIED},
		{name: "remove when cancelled", job: func(t *testing.T) Job { return withCert(t, Cancelled) },
			cmd: RemoveClientCertificate{CallerPrincipal: "alice"}, code: BG_E_INVALID_STATE},
		{name: "remove when acknowledged", job: func(t *testing.T) Job { return inState(t, Acknowledged) },
			cmd: RemoveClientCertificate{CallerPrincipal: "alice"}, code: BG_E_INVALID_STATE},

		{name: "take ownership without a certificate", job: func(t *testing.T) Job { return inState(t, Queued) },
			cmd: TakeOwnership{NewOwner: "root"}, want: events.TypeJobOwnerChanged,
			check: func(t *testing.T, j Job) {
				if j.Owner != "root" {
					t.Fatalf("owner %q", j.Owner)
				}
			}},
		{name: "take ownership removes the certificate", job: func(t *testing.T) Job { return withCert(t, Transferring) },
			cmd: TakeOwnership{NewOwner: "root"}, want: events.TypeJobOwnerChanged + "," + events.TypeClientCertificateRemoved,
			check: func(t *testing.T, j Job) {
				if j.Owner != "root" || j.ClientCertificate != nil {
					t.Fatalf("owner %q, certificate %+v", j.Owner, j.ClientCertificate)
				}
			}},
		{name: "take ownership by the owner", job: func(t *testing.T) Job { return withCert(t, Suspended) },
			cmd: TakeOwnership{NewOwner: "alice"}},
		{name: "take ownership of a cancelled job", job: func(t *testing.T) Job { return inState(t, Cancelled) },
			cmd: TakeOwnership{NewOwner: "root"}, code: BG_E_INVALID_STATE},
		{name: "take ownership for nobody", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: TakeOwnership{}, code: RPC_X_NULL_REF_POINTER},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := tc.job(t)
			ps, err := Decide(&j, tc.cmd, t0)
			if tc.code != (Code{}) {
				if CodeOf(err) != tc.code || len(ps) != 0 {
					t.Fatalf("got %v %v, want %s", types(ps), err, tc.code.Symbol)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := types(ps); got != tc.want {
				t.Fatalf("events %q, want %q", got, tc.want)
			}
			for _, p := range ps {
				if err := Apply(&j, p, t0); err != nil {
					t.Fatal(err)
				}
			}
			if tc.check != nil {
				tc.check(t, j)
			}
		})
	}
}

// TestRemovalReasons: the removal event says why.
func TestRemovalReasons(t *testing.T) {
	j := withCert(t, Suspended)
	ps, _ := Decide(&j, RemoveClientCertificate{CallerPrincipal: "alice"}, t0)
	if r := ps[0].(*events.ClientCertificateRemoved).Reason; r != "removed" {
		t.Fatalf("reason %q", r)
	}
	ps, _ = Decide(&j, TakeOwnership{NewOwner: "root"}, t0)
	if e := ps[0].(*events.JobOwnerChanged); e.From != "alice" || e.To != "root" {
		t.Fatalf("owner change %+v", e)
	}
	if r := ps[1].(*events.ClientCertificateRemoved).Reason; r != "ownership-changed" {
		t.Fatalf("reason %q", r)
	}
	// Clone does not share the certificate.
	c := j.Clone()
	c.ClientCertificate.SHA1 = sha1B
	if j.ClientCertificate.SHA1 != sha1A {
		t.Fatal("Clone shares the client certificate")
	}
}
