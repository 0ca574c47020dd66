package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// FuzzValidateName: an accepted name is one safe path segment and file
// name, and makes a SPIFFE ID that survives URL parsing and ParseSPIFFEID
// unchanged (what Issue writes is what RoleOf reads).
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"alice", "host-1", "a.b_c", ".", "..", ".x", "a/b", "a%2F", "é", strings.Repeat("x", 64), strings.Repeat("x", 65), "", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateName(name) != nil {
			return
		}
		if len(name) == 0 || len(name) > MaxNameLen || name == "." || name == ".." || strings.ContainsAny(name, `/\:%?#@ `) {
			t.Fatalf("accepted %q", name)
		}
		if filepath.Base(name) != name || filepath.Clean(name) != name || !filepath.IsLocal(name) {
			t.Fatalf("accepted %q, which is not a plain file name", name)
		}
		id := SPIFFEID{TrustDomain: "ferry.internal", Role: RoleAgent, Name: name}
		u, err := url.Parse(id.String())
		if err != nil || u.String() != id.String() {
			t.Fatalf("%s does not survive url.Parse: %v %v", id, u, err)
		}
		back, err := ParseSPIFFEID(u.String())
		if err != nil || back != id {
			t.Fatalf("ParseSPIFFEID(%s) = %+v, %v", id, back, err)
		}
	})
}

// FuzzParseSPIFFEID: parsing accepts canonical spellings only, and RoleOf
// agrees with it.
func FuzzParseSPIFFEID(f *testing.F) {
	for _, s := range []string{"spiffe://ferry.internal/user/alice", "spiffe://ferry.internal/agent/h", "spiffe://FERRY/user/a",
		"spiffe://ferry.internal/user/a/b", "spiffe://ferry.internal:1/user/a", "spiffe://ferry.internal/user/%61", "x509:CN=a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseSPIFFEID(s)
		m := RoleMap{TrustDomain: "ferry.internal"}
		if err != nil {
			if m.RoleOf(s) != RoleNone {
				t.Fatalf("RoleOf(%q) = %q for an unparsable ID", s, m.RoleOf(s))
			}
			return
		}
		if id.String() != s {
			t.Fatalf("ParseSPIFFEID(%q).String() = %q", s, id.String())
		}
		if err := id.Validate(); err != nil {
			t.Fatal(err)
		}
		want := RoleNone
		if id.TrustDomain == m.TrustDomain {
			want = id.Role
		}
		if got := m.RoleOf(s); got != want {
			t.Fatalf("RoleOf(%q) = %q, want %q", s, got, want)
		}
	})
}

var fuzzKey = sync.OnceValue(func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

// FuzzPrincipal goes through real DER: URI SANs and a CN are encoded into a
// certificate, parsed back, and Principal must name at most one identity,
// keep the URI and DN namespaces apart, and never panic.
func FuzzPrincipal(f *testing.F) {
	f.Add("spiffe://ferry.internal/user/alice", "", "alice")
	f.Add("spiffe://ferry.internal/user/alice", "spiffe://ferry.internal/admin/alice", "")
	f.Add("x509:CN=admin", "", "")
	f.Add("", "", "Alice, \"the\" admin")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, uri1, uri2, cn string) {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Unix(0, 0),
			NotAfter:     time.Unix(1, 0),
		}
		for _, s := range []string{uri1, uri2} {
			if s == "" {
				continue
			}
			u, err := url.Parse(s)
			if err != nil {
				return
			}
			tmpl.URIs = append(tmpl.URIs, u)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &fuzzKey().PublicKey, fuzzKey())
		if err != nil {
			return // not encodable (e.g. non-ASCII URI)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		p, err := Principal(leaf)
		switch {
		case len(leaf.URIs) > 1:
			if err == nil {
				t.Fatalf("%d URI SANs gave principal %q", len(leaf.URIs), p)
			}
		case len(leaf.URIs) == 1:
			if err == nil && (p != leaf.URIs[0].String() || strings.HasPrefix(strings.ToLower(p), DNPrefix)) {
				t.Fatalf("URI SAN %q gave principal %q", leaf.URIs[0], p)
			}
		default:
			if err == nil && (p != DNPrefix+leaf.Subject.String() || p == DNPrefix) {
				t.Fatalf("subject %q gave principal %q", leaf.Subject, p)
			}
			if err != nil && leaf.Subject.String() != "" {
				t.Fatalf("subject %q: %v", leaf.Subject, err)
			}
		}
	})
}
