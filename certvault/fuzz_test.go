package certvault

import (
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/job"
	"software.sslmate.com/src/go-pkcs12"
)

// codeIn fails unless err is a *job.Error with one of the symbols.
func codeIn(t *testing.T, err error, syms ...string) {
	t.Helper()
	var je *job.Error
	if !errors.As(err, &je) {
		t.Fatalf("error without a code: %v", err)
	}
	for _, s := range syms {
		if je.Code.Symbol == s {
			return
		}
	}
	t.Fatalf("code %s, want one of %v (%v)", je.Code.Symbol, syms, err)
}

// FuzzParseThumbprint: never accepts anything but exactly 20 bytes of hex,
// and every refusal has one of the three codes.
func FuzzParseThumbprint(f *testing.F) {
	for _, s := range []string{"", "00", strings.Repeat("ab", 20), strings.Repeat("AB:", 19) + "AB", strings.Repeat("ab ", 20),
		"\u200e" + strings.Repeat("0f", 20), strings.Repeat("ab", 21), strings.Repeat("a", 41), "zz", ":::", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseThumbprint(s)
		if err != nil {
			codeIn(t, err, "RPC_X_NULL_REF_POINTER", "E_INVALIDARG", "RPC_X_BAD_STUB_DATA")
			return
		}
		digits := 0
		for _, r := range s {
			if r < utf8.RuneSelf && isHex(byte(r)) {
				digits++
			}
		}
		if digits != 40 {
			t.Fatalf("accepted %q with %d hex digits", s, digits)
		}
		again, err := ParseThumbprint(hex.EncodeToString(got[:]))
		if err != nil || again != got {
			t.Fatalf("canonical form of %q does not parse back: %v", s, err)
		}
	})
}

// FuzzValidateStoreName: the canonical form is valid, stable, the same for
// every casing, and never longer than the limit.
func FuzzValidateStoreName(f *testing.F) {
	for _, s := range []string{"MY", "my", "Custom Store", "\u212a", "ſ", "ß", "ǅ", "İ", "ı", "σς", "a/b", `a\b`, " x", "\x00",
		strings.Repeat("a", 255), strings.Repeat("😀", 128), "ǰ", "ᾳ", "ﬀ"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		canon, err := ValidateStoreName(name)
		if err != nil {
			codeIn(t, err, "RPC_X_NULL_REF_POINTER", "BG_E_STRING_TOO_LONG", "E_INVALIDARG")
			return
		}
		if strings.ContainsAny(name, "/\\") || utf16Len(name) > MaxNameUnits || !utf8.ValidString(name) {
			t.Fatalf("accepted %q", name)
		}
		again, err := ValidateStoreName(canon)
		if err != nil || again != canon {
			t.Fatalf("canonical %q of %q: %q, %v", canon, name, again, err)
		}
		if utf16Len(canon) > MaxNameUnits {
			t.Fatalf("canonical %q too long", canon)
		}
		if !strings.EqualFold(name, canon) {
			t.Fatalf("canonical %q does not fold to %q", canon, name)
		}
		for _, variant := range []string{strings.ToLower(name), strings.ToUpper(name)} {
			if c2, err := ValidateStoreName(variant); err == nil && strings.EqualFold(variant, name) != (c2 == canon) {
				t.Fatalf("%q is %q but %q is %q (fold-equal: %v)", name, canon, variant, c2, strings.EqualFold(variant, name))
			}
		}
	})
}

// FuzzParseLocation: only the eight names (with or without prefix, any
// case) and digits parse, and they round-trip through String.
func FuzzParseLocation(f *testing.F) {
	for _, s := range []string{"0", "7", "8", "CURRENT_USER", "bg_cert_store_location_users", "BG_CERT_STORE_LOCATION_", "", "ſervices", "01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		loc, err := ParseLocation(s)
		if err != nil {
			codeIn(t, err, "E_NOTIMPL")
			return
		}
		if !loc.Valid() {
			t.Fatalf("%q parsed to invalid %d", s, loc)
		}
		name := strings.TrimPrefix(strings.ToUpper(s), locationPrefix)
		if s != string(rune('0'+loc)) && name != loc.String() {
			t.Fatalf("%q parsed to %v", s, loc)
		}
		if back, err := ParseLocation(loc.String()); err != nil || back != loc {
			t.Fatalf("%v does not round-trip", loc)
		}
	})
}

// checkBundle is what every accepted import must satisfy: the key is the
// leaf's, the leaf can authenticate a client, the chain starts with it.
func checkBundle(t *testing.T, b *bundle) {
	t.Helper()
	key, err := x509.ParsePKCS8PrivateKey(b.pkcs8)
	if err != nil {
		t.Fatalf("accepted key does not parse: %v", err)
	}
	pub, ok := key.(interface{ Public() crypto.PublicKey })
	if !ok || !b.leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub.Public()) {
		t.Fatal("the accepted key is not the leaf's")
	}
	if len(b.chain) == 0 || b.chain[0] != b.leaf || len(b.chain) > maxChain {
		t.Fatalf("chain of %d", len(b.chain))
	}
	if err := checkClientAuth(b.leaf); err != nil {
		t.Fatalf("accepted leaf: %v", err)
	}
}

func FuzzImportPEM(f *testing.F) {
	p := newPKI(f)
	c, k := p.issue(f, leafOpts{})
	f.Add(cat(certPEM(c, p.cert), keyPEM(f, k, "PRIVATE KEY")))
	f.Add(cat(keyPEM(f, k, "EC PRIVATE KEY"), certPEM(c)))
	// An RSA key in the seeds makes every mutation of it a slow
	// validation under the fuzzer's instrumentation; RSA parsing is the
	// standard library's, covered by TestParsePEM.
	ed, edk := p.issue(f, leafOpts{key: ed25519Key(f)})
	f.Add(cat(certPEM(ed), keyPEM(f, edk, "PRIVATE KEY")))
	f.Add(certPEM(c))
	f.Add([]byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parseImport(ImportRequest{PEM: data})
		if err != nil {
			codeIn(t, err, "E_INVALIDARG", "RPC_X_NULL_REF_POINTER")
			return
		}
		checkBundle(t, b)
	})
}

func FuzzImportPFX(f *testing.F) {
	// Millions of KDF iterations are legal but slow, and slower still
	// under the fuzzer's instrumentation; the limit check itself is tested
	// in TestPFXIterationLimit.
	old := pfxIterationLimit
	pfxIterationLimit = 4096
	f.Cleanup(func() { pfxIterationLimit = old })
	p := newPKI(f)
	c, k := p.issue(f, leafOpts{})
	for _, enc := range []*pkcs12.Encoder{pkcs12.Modern2023, pkcs12.Modern2026, pkcs12.LegacyDES, pkcs12.LegacyRC2, pkcs12.Passwordless} {
		pw := "pw"
		if enc == pkcs12.Passwordless {
			pw = ""
		}
		f.Add(pfx(f, enc.WithIterations(1), k, c, []*x509.Certificate{p.cert}, pw), pw)
	}
	ts, err := pkcs12.Modern2023.WithIterations(1).EncodeTrustStore([]*x509.Certificate{c}, "pw")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ts, "pw")
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x03}, "")
	f.Fuzz(func(t *testing.T, data []byte, password string) {
		// Too many iterations are refused up front; what passes the check
		// is decoded, which must not hang or panic.
		b, err := parseImport(ImportRequest{PFX: data, Password: []byte(password)})
		if err != nil {
			codeIn(t, err, "E_INVALIDARG", "RPC_X_NULL_REF_POINTER")
			if password != "" && len(password) > 3 && strings.Contains(err.Error(), password) && !strings.Contains(pfxMessages, password) {
				t.Fatalf("error %q echoes the password", err)
			}
			return
		}
		checkBundle(t, b)
	})
}

// pfxMessages is the fixed text of PKCS#12 refusals, for telling an echoed
// password from a password that happens to be a word of the message.
const pfxMessages = "the PKCS#12 password is incorrect (or the file is damaged) not a readable PKCS#12 (.pfx) file"

// FuzzDecodeImportRequest: strict decoding never panics; every refusal is
// coded; an accepted request has exactly one certificate form.
func FuzzDecodeImportRequest(f *testing.F) {
	for _, s := range []string{`{"pem":"x"}`, `{"pfx":"AQID","password":"p"}`, `{"pfx":"AQID"}`, `{}`, `{"pem":"x","pfx":"AA=="}`,
		`{"pem":null}`, `{"pem":"x"} x`, `[]`, `null`, `{"PEM":"x"}`, `{"pfx":"**"}`, `{"password":"p"}`, `{"pem":"\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeImportRequest(body)
		if err != nil {
			codeIn(t, err, "E_INVALIDARG", "RPC_X_NULL_REF_POINTER")
			return
		}
		if (len(req.PEM) > 0) == (len(req.PFX) > 0) {
			t.Fatalf("accepted %q as %v", body, req)
		}
		if len(req.PEM) > 0 && req.Password != nil {
			t.Fatalf("accepted a password with PEM: %q", body)
		}
	})
}
