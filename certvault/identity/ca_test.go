package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/job"
)

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestInitCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := InitCA(dir, "ferry.internal")
	if err != nil {
		t.Fatal(err)
	}
	p := Paths(dir)
	for path, want := range map[string]fs.FileMode{dir: 0o700, p.CACert: 0o644, p.CAKey: 0o600} {
		if got := mode(t, path); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	if ca.TrustDomain() != "ferry.internal" || !ca.Cert.IsCA || ca.Cert.URIs[0].String() != "spiffe://ferry.internal" {
		t.Errorf("CA %v: td %q IsCA %v URIs %v", ca, ca.TrustDomain(), ca.Cert.IsCA, ca.Cert.URIs)
	}
	if _, ok := ca.Cert.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("CA key is %T, want ECDSA", ca.Cert.PublicKey)
	}
	keyBefore, _ := os.ReadFile(p.CAKey)
	certBefore, _ := os.ReadFile(p.CACert)

	// Refuses to overwrite: the whole CA, or either half of one.
	if _, err := InitCA(dir, "ferry.internal"); !errors.Is(err, ErrCAExists) || !errors.Is(err, fs.ErrExist) {
		t.Errorf("second InitCA: %v", err)
	}
	if k, _ := os.ReadFile(p.CAKey); !bytes.Equal(k, keyBefore) {
		t.Error("second InitCA changed ca-key.pem")
	}
	if c, _ := os.ReadFile(p.CACert); !bytes.Equal(c, certBefore) {
		t.Error("second InitCA changed ca.pem")
	}
	for _, keep := range []string{CACertFile, CAKeyFile} {
		half := t.TempDir()
		if err := os.WriteFile(filepath.Join(half, keep), []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := InitCA(half, "ferry.internal"); !errors.Is(err, ErrCAExists) {
			t.Errorf("InitCA beside an existing %s: %v", keep, err)
		}
		entries, _ := os.ReadDir(half)
		if len(entries) != 1 {
			t.Errorf("InitCA beside %s left %d files", keep, len(entries))
		}
	}

	// LoadCA gives back the same CA, and what it issues verifies against
	// the original.
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) || loaded.TrustDomain() != ca.TrustDomain() {
		t.Errorf("LoadCA = %v", loaded)
	}
	c := issue(t, loaded, IssueRequest{Role: RoleUser, Name: "alice"})
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate from the loaded CA: %v", err)
	}
}

func TestInitCARejectsTrustDomains(t *testing.T) {
	for _, td := range []string{"", "Ferry.internal", "spiffe://ferry.internal", "ferry.internal/x", ".ferry", "-ferry", "ferry internal", "ferry:8443", "ferrü", strings.Repeat("a", 256)} {
		dir := t.TempDir()
		if _, err := InitCA(dir, td); job.CodeOf(err) != job.E_INVALIDARG {
			t.Errorf("InitCA(%q) = %v, want E_INVALIDARG", td, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("InitCA(%q) wrote %d files", td, len(entries))
		}
	}
}

func TestLoadCAErrors(t *testing.T) {
	if _, err := LoadCA(t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadCA of an empty directory: %v", err)
	}
	a, b := t.TempDir(), t.TempDir()
	if _, err := InitCA(a, "a.test"); err != nil {
		t.Fatal(err)
	}
	if _, err := InitCA(b, "b.test"); err != nil {
		t.Fatal(err)
	}
	// a's certificate with b's key.
	key, _ := os.ReadFile(filepath.Join(b, CAKeyFile))
	if err := os.WriteFile(filepath.Join(a, CAKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(a); err == nil || !strings.Contains(err.Error(), "is not the key of") {
		t.Errorf("LoadCA with a foreign key: %v", err)
	}
	// A leaf is not a CA.
	ca := newTestCA(t, "c.test")
	certPEM, keyPEM, _ := ca.Issue(IssueRequest{Role: RoleUser, Name: "u"})
	c := t.TempDir()
	if err := os.WriteFile(filepath.Join(c, CACertFile), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c, CAKeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(c); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("LoadCA of a leaf: %v", err)
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t, testTD)
	roots := ca.Pool()
	for _, tc := range []struct {
		req      IssueRequest
		eku      []x509.ExtKeyUsage
		validity time.Duration
	}{
		{IssueRequest{Role: RoleUser, Name: "alice"}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, DefaultPersonValidity},
		{IssueRequest{Role: RoleAdmin, Name: "ops.root"}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, DefaultPersonValidity},
		{IssueRequest{Role: RoleAgent, Name: "host-1_a", Validity: time.Hour}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, time.Hour},
		{IssueRequest{Role: RoleAgent, Name: "h2"}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, DefaultWorkloadValidity},
		{IssueRequest{Role: RoleService, Name: "coordinator", DNSNames: []string{"localhost", "*.ferry.svc"}, IPs: loopbackIPs},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, DefaultWorkloadValidity},
	} {
		t.Run(string(tc.req.Role)+"/"+tc.req.Name, func(t *testing.T) {
			before := time.Now()
			certPEM, keyPEM, err := ca.Issue(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(keyPEM, []byte("-----BEGIN PRIVATE KEY-----")) {
				t.Errorf("key is not PKCS#8 PEM")
			}
			if n := bytes.Count(certPEM, []byte("BEGIN CERTIFICATE")); n != 1 {
				t.Errorf("certPEM has %d certificates, want the leaf only", n)
			}
			leaf := pair.Leaf
			wantURI := "spiffe://test.ferry/" + string(tc.req.Role) + "/" + tc.req.Name
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantURI {
				t.Errorf("URIs %v, want %s", leaf.URIs, wantURI)
			}
			if p, err := Principal(leaf); err != nil || p != wantURI {
				t.Errorf("Principal = %q, %v", p, err)
			}
			if (RoleMap{TrustDomain: testTD}).RoleOf(wantURI) != tc.req.Role {
				t.Errorf("RoleOf(%s) is not %s", wantURI, tc.req.Role)
			}
			if !slices.Equal(leaf.ExtKeyUsage, tc.eku) || leaf.KeyUsage != x509.KeyUsageDigitalSignature || leaf.IsCA {
				t.Errorf("EKU %v KeyUsage %v IsCA %v", leaf.ExtKeyUsage, leaf.KeyUsage, leaf.IsCA)
			}
			if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
				t.Errorf("key %T", leaf.PublicKey)
			}
			if leaf.Subject.CommonName != tc.req.Name || !slices.Equal(leaf.Subject.OrganizationalUnit, []string{string(tc.req.Role)}) {
				t.Errorf("subject %s", leaf.Subject)
			}
			if !slices.Equal(leaf.DNSNames, tc.req.DNSNames) || len(leaf.IPAddresses) != len(tc.req.IPs) {
				t.Errorf("DNS %v IPs %v", leaf.DNSNames, leaf.IPAddresses)
			}
			if got := leaf.NotAfter.Sub(before); got < tc.validity-time.Minute || got > tc.validity+time.Minute {
				t.Errorf("valid for %v, want %v", got, tc.validity)
			}
			if !leaf.NotBefore.Before(before) {
				t.Errorf("NotBefore %v is not backdated", leaf.NotBefore)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("clientAuth: %v", err)
			}
			if tc.req.Role == RoleService {
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "localhost"}); err != nil {
					t.Errorf("serverAuth for localhost: %v", err)
				}
			}
		})
	}

	// Two identities never share a serial or a key.
	a := issue(t, ca, IssueRequest{Role: RoleUser, Name: "x"})
	b := issue(t, ca, IssueRequest{Role: RoleUser, Name: "x"})
	if a.Leaf.SerialNumber.Cmp(b.Leaf.SerialNumber) == 0 || a.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(b.Leaf.PublicKey) {
		t.Error("two issuances share a serial or a key")
	}

	// Validity stops at the CA's expiry; an expired CA issues nothing.
	late := *ca
	late.Now = func() time.Time { return ca.Cert.NotAfter.Add(-time.Hour) }
	c := issue(t, &late, IssueRequest{Role: RoleAgent, Name: "late"})
	if !c.Leaf.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter %v beyond the CA's %v", c.Leaf.NotAfter, ca.Cert.NotAfter)
	}
	late.Now = func() time.Time { return ca.Cert.NotAfter.Add(time.Second) }
	if _, _, err := late.Issue(IssueRequest{Role: RoleAgent, Name: "late"}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("issue by an expired CA: %v", err)
	}
}

func TestIssueRejects(t *testing.T) {
	ca := newTestCA(t, testTD)
	for _, tc := range []struct {
		name string
		req  IssueRequest
	}{
		{"empty name", IssueRequest{Role: RoleUser}},
		{"long name", IssueRequest{Role: RoleUser, Name: strings.Repeat("a", 65)}},
		{"leading dot", IssueRequest{Role: RoleUser, Name: ".alice"}},
		{"dot", IssueRequest{Role: RoleUser, Name: "."}},
		{"dotdot", IssueRequest{Role: RoleUser, Name: ".."}},
		{"slash", IssueRequest{Role: RoleUser, Name: "a/b"}},
		{"backslash", IssueRequest{Role: RoleUser, Name: `a\b`}},
		{"space", IssueRequest{Role: RoleUser, Name: "a b"}},
		{"colon", IssueRequest{Role: RoleUser, Name: "a:b"}},
		{"percent", IssueRequest{Role: RoleUser, Name: "a%2Fb"}},
		{"unicode", IssueRequest{Role: RoleUser, Name: "alïce"}},
		{"nul", IssueRequest{Role: RoleUser, Name: "a\x00"}},
		{"no role", IssueRequest{Name: "alice"}},
		{"unknown role", IssueRequest{Role: "coordinator", Name: "alice"}},
		{"DNS on a user", IssueRequest{Role: RoleUser, Name: "alice", DNSNames: []string{"localhost"}}},
		{"IP on an agent", IssueRequest{Role: RoleAgent, Name: "h", IPs: loopbackIPs[:1]}},
		{"bad DNS name", IssueRequest{Role: RoleService, Name: "s", DNSNames: []string{"a..b"}}},
		{"DNS with scheme", IssueRequest{Role: RoleService, Name: "s", DNSNames: []string{"https://x"}}},
		{"bad IP", IssueRequest{Role: RoleService, Name: "s", IPs: []net.IP{{1, 2, 3}}}},
		{"negative validity", IssueRequest{Role: RoleUser, Name: "alice", Validity: -time.Hour}},
	} {
		if _, _, err := ca.Issue(tc.req); job.CodeOf(err) != job.E_INVALIDARG {
			t.Errorf("%s: %v, want E_INVALIDARG", tc.name, err)
		}
	}
	// Every problem is reported at once.
	err := IssueRequest{Role: "robot", Name: ".x", Validity: -1}.Validate()
	if n := strings.Count(err.Error(), "\n") + 1; n != 3 {
		t.Errorf("Validate reported %d problems, want 3: %v", n, err)
	}
}

func TestCARedactsKey(t *testing.T) {
	ca := newTestCA(t, testTD)
	d := ca.key.(*ecdsa.PrivateKey).D
	for _, s := range []string{
		fmt.Sprintf("%v", ca), fmt.Sprintf("%+v", ca), fmt.Sprintf("%#v", ca), fmt.Sprintf("%s", *ca),
		fmt.Sprintf("%+v", *ca), fmt.Sprintf("%#v", *ca), fmt.Sprint([]*CA{ca}),
	} {
		if strings.Contains(s, d.String()) || strings.Contains(s, d.Text(16)) || !strings.Contains(s, "redacted") {
			t.Errorf("printed CA shows its key or is not marked redacted: %.200s", s)
		}
	}
}

func TestWriteIdentity(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := filepath.Join(t.TempDir(), "creds")
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Role: RoleAgent, Name: "host-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteIdentity(dir, "agent-host-1", certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := Paths(dir).Identity("agent-host-1")
	if filepath.Base(certFile) != "agent-host-1.pem" || filepath.Base(keyFile) != "agent-host-1-key.pem" {
		t.Errorf("files %s %s", certFile, keyFile)
	}
	for path, want := range map[string]fs.FileMode{dir: 0o700, certFile: 0o644, keyFile: 0o600} {
		if got := mode(t, path); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	pair, err := LoadKeyPair(certFile, keyFile)
	if err != nil || pair.Leaf == nil || pair.Leaf.URIs[0].String() != "spiffe://test.ferry/agent/host-1" {
		t.Fatalf("LoadKeyPair: %v %v", pair.Leaf, err)
	}

	// Renewal replaces both files.
	cert2, key2, _ := ca.Issue(IssueRequest{Role: RoleAgent, Name: "host-1"})
	if err := WriteIdentity(dir, "agent-host-1", cert2, key2); err != nil {
		t.Fatal(err)
	}
	pair2, err := LoadKeyPair(certFile, keyFile)
	if err != nil || pair2.Leaf.SerialNumber.Cmp(pair.Leaf.SerialNumber) == 0 {
		t.Errorf("after renewal: %v (same serial: %v)", err, err == nil && pair2.Leaf.SerialNumber.Cmp(pair.Leaf.SerialNumber) == 0)
	}
	if got := mode(t, keyFile); got != 0o600 {
		t.Errorf("renewed key mode %v", got)
	}

	// Refusals write nothing.
	for _, name := range []string{"ca", "x-key", "../x", ".hidden", "", "a b"} {
		if err := WriteIdentity(dir, name, certPEM, keyPEM); job.CodeOf(err) != job.E_INVALIDARG {
			t.Errorf("WriteIdentity(%q) = %v", name, err)
		}
	}
	if err := WriteIdentity(dir, "mismatch", certPEM, key2); err == nil {
		t.Error("WriteIdentity accepted a key of another certificate")
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"agent-host-1-key.pem", "agent-host-1.pem"}) {
		t.Errorf("directory holds %v", names)
	}

	if _, err := LoadKeyPair(certFile, filepath.Join(dir, "missing-key.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadKeyPair with a missing key: %v", err)
	}
}

func TestPathsAndDefaultDir(t *testing.T) {
	p := Paths("/etc/ferry/pki")
	if p.CACert != "/etc/ferry/pki/ca.pem" || p.CAKey != "/etc/ferry/pki/ca-key.pem" {
		t.Errorf("Paths = %+v", p)
	}
	if c, k := p.Identity("coordinator"); c != "/etc/ferry/pki/coordinator.pem" || k != "/etc/ferry/pki/coordinator-key.pem" {
		t.Errorf("Identity = %s %s", c, k)
	}
	t.Setenv(CredentialsEnv, "")
	if got := DefaultDir("/var/lib/ferry"); got != "/var/lib/ferry/pki" {
		t.Errorf("DefaultDir = %s", got)
	}
	t.Setenv(CredentialsEnv, "/run/creds")
	if got := DefaultDir("/var/lib/ferry"); got != "/run/creds" {
		t.Errorf("DefaultDir with %s = %s", CredentialsEnv, got)
	}
}

func TestLoadRoots(t *testing.T) {
	dir := t.TempDir()
	ca, err := InitCA(dir, testTD)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := LoadRoots(Paths(dir).CACert)
	if err != nil || !roots.Equal(ca.Pool()) {
		t.Errorf("LoadRoots: %v", err)
	}
	if _, err := LoadRoots(Paths(dir).CAKey); err == nil {
		t.Error("LoadRoots accepted a key file")
	}
}
