package identity

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/job"
)

func TestPrincipal(t *testing.T) {
	ca := newTestCA(t, testTD)
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name    string
		edit    func(*x509.Certificate)
		want    string
		wantErr string
	}{
		{"one URI SAN", func(c *x509.Certificate) { c.URIs = []*url.URL{u("spiffe://test.ferry/user/alice")} }, "spiffe://test.ferry/user/alice", ""},
		{"URI SAN wins over subject", func(c *x509.Certificate) {
			c.Subject = pkix.Name{CommonName: "admin"}
			c.URIs = []*url.URL{u("spiffe://test.ferry/agent/h1")}
		}, "spiffe://test.ferry/agent/h1", ""},
		{"non-SPIFFE URI SAN", func(c *x509.Certificate) { c.URIs = []*url.URL{u("urn:example:alice")} }, "urn:example:alice", ""},
		{"subject DN", func(c *x509.Certificate) {
			c.Subject = pkix.Name{CommonName: "Alice Smith", Organization: []string{"Example, Inc."}, Country: []string{"NL"}}
		}, `x509:CN=Alice Smith,O=Example\, Inc.,C=NL`, ""},
		{"two URI SANs", func(c *x509.Certificate) {
			c.URIs = []*url.URL{u("spiffe://test.ferry/user/a"), u("spiffe://test.ferry/user/b")}
		}, "", "2 URI SANs"},
		{"x509: URI SAN", func(c *x509.Certificate) { c.URIs = []*url.URL{u("x509:CN=Alice,O=Example")} }, "", "reserved"},
		{"X509: URI SAN", func(c *x509.Certificate) { c.URIs = []*url.URL{u("X509:CN=Alice")} }, "", "reserved"},
		{"empty subject, no URI", func(c *x509.Certificate) { c.Subject = pkix.Name{} }, "", "names no principal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf := craft(t, ca, tc.edit).Leaf
			got, err := Principal(leaf)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Principal = %q, %v; want error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Principal = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := Principal(nil); err == nil {
		t.Error("Principal(nil) succeeded")
	}
}

func TestRoleOf(t *testing.T) {
	m := RoleMap{TrustDomain: "ferry.internal", Overrides: map[string]Role{
		"x509:CN=Alice,O=Example":              RoleAdmin,
		"spiffe://ferry.internal/user/mallory": RoleNone,
		"spiffe://ferry.internal/user/boss":    RoleAdmin,
		"spiffe://partner.example/agent/p1":    RoleAgent,
	}}
	for _, tc := range []struct {
		principal string
		want      Role
	}{
		{"spiffe://ferry.internal/user/alice", RoleUser},
		{"spiffe://ferry.internal/admin/root", RoleAdmin},
		{"spiffe://ferry.internal/agent/host-1", RoleAgent},
		{"spiffe://ferry.internal/service/coordinator", RoleService},
		// overrides win, including taking a role away
		{"x509:CN=Alice,O=Example", RoleAdmin},
		{"spiffe://ferry.internal/user/mallory", RoleNone},
		{"spiffe://ferry.internal/user/boss", RoleAdmin},
		{"spiffe://partner.example/agent/p1", RoleAgent},
		// everything else has no role
		{"x509:CN=Bob,O=Example", RoleNone},
		{"spiffe://other.internal/admin/root", RoleNone},
		{"spiffe://ferry.internal.evil/admin/root", RoleNone},
		{"spiffe://ferry.internal/robot/r2", RoleNone},
		{"spiffe://ferry.internal/admin", RoleNone},
		{"spiffe://ferry.internal/admin/", RoleNone},
		{"spiffe://ferry.internal/admin/team/root", RoleNone},
		{"spiffe://ferry.internal/Admin/root", RoleNone},
		{"spiffe://FERRY.internal/admin/root", RoleNone},
		{"spiffe://ferry.internal:443/admin/root", RoleNone},
		{"spiffe://x@ferry.internal/admin/root", RoleNone},
		{"spiffe://ferry.internal/admin/root?x=1", RoleNone},
		{"spiffe://ferry.internal/admin/root#x", RoleNone},
		{"spiffe://ferry.internal/admin/r%6Fot", RoleNone},
		{"spiffe://ferry.internal//admin/root", RoleNone},
		{"spiffe://ferry.internal/admin/..", RoleNone},
		{"SPIFFE://ferry.internal/admin/root", RoleNone},
		{"https://ferry.internal/admin/root", RoleNone},
		{"", RoleNone},
	} {
		if got := m.RoleOf(tc.principal); got != tc.want {
			t.Errorf("RoleOf(%q) = %q, want %q", tc.principal, got, tc.want)
		}
	}

	if id, ok := m.AgentID("spiffe://ferry.internal/agent/host-1"); !ok || id != "host-1" {
		t.Errorf("AgentID = %q, %v", id, ok)
	}
	for _, p := range []string{"spiffe://ferry.internal/user/host-1", "spiffe://other.internal/agent/host-1", "spiffe://partner.example/agent/p1"} {
		if id, ok := m.AgentID(p); ok {
			t.Errorf("AgentID(%q) = %q", p, id)
		}
	}
	if name, ok := m.ServiceName("spiffe://ferry.internal/service/coordinator"); !ok || name != "coordinator" {
		t.Errorf("ServiceName = %q, %v", name, ok)
	}
	if _, ok := m.ServiceName("spiffe://ferry.internal/agent/coordinator"); ok {
		t.Error("ServiceName of an agent")
	}

	// The zero RoleMap maps nothing.
	if r := (RoleMap{}).RoleOf("spiffe://ferry.internal/admin/root"); r != RoleNone {
		t.Errorf("zero RoleMap gives %q", r)
	}
}

func TestRoleMapValidate(t *testing.T) {
	if err := (RoleMap{}).Validate(); err != nil {
		t.Errorf("zero RoleMap: %v", err)
	}
	ok := RoleMap{TrustDomain: "ferry.internal", Overrides: map[string]Role{"x509:CN=A": RoleAdmin, "spiffe://ferry.internal/user/m": RoleNone}}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid RoleMap: %v", err)
	}
	bad := RoleMap{TrustDomain: "Ferry", Overrides: map[string]Role{"": RoleUser, "x509:CN=A": "coordinator"}}
	err := bad.Validate()
	if job.CodeOf(err) != job.E_INVALIDARG || strings.Count(err.Error(), "\n") != 2 {
		t.Errorf("invalid RoleMap: want 3 problems, got %v", err)
	}
}

func TestParseSPIFFEID(t *testing.T) {
	id, err := ParseSPIFFEID("spiffe://ferry.internal/service/cert-vault_1.a")
	if err != nil || id != (SPIFFEID{"ferry.internal", RoleService, "cert-vault_1.a"}) {
		t.Errorf("ParseSPIFFEID = %+v, %v", id, err)
	}
	for _, s := range []string{"spiffe://ferry.internal", "spiffe://ferry.internal/", "spiffe:///user/a", "spiffe://ferry.internal/user/.a", "spiffe://ferry.internal/none/a", "spiffe://ferry.internal//a"} {
		if _, err := ParseSPIFFEID(s); job.CodeOf(err) != job.E_INVALIDARG {
			t.Errorf("ParseSPIFFEID(%q) = %v", s, err)
		}
	}
	if RoleNone.String() != "none" || RoleAgent.String() != "agent" {
		t.Error("Role.String")
	}
}
