package certvault

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

// wantBundle checks a parsed import: the leaf, the chain order and the key.
func wantBundle(t *testing.T, b *bundle, err error, leaf *x509.Certificate, key crypto.Signer, chain ...*x509.Certificate) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if !b.leaf.Equal(leaf) {
		t.Fatalf("leaf %s, want %s", b.leaf.Subject, leaf.Subject)
	}
	if len(b.chain) != 1+len(chain) {
		t.Fatalf("chain of %d, want %d", len(b.chain), 1+len(chain))
	}
	for i, c := range chain {
		if !b.chain[i+1].Equal(c) {
			t.Errorf("chain[%d] = %s, want %s", i+1, b.chain[i+1].Subject, c.Subject)
		}
	}
	if !bytes.Equal(b.pkcs8, pkcs8(t, key)) {
		t.Error("the key is not the PKCS#8 of the given key")
	}
}

func TestParsePEM(t *testing.T) {
	p := newPKI(t)
	ec, ecKey := p.issue(t, leafOpts{subject: pkix.Name{CommonName: "ec"}})
	rsaCert, rk := p.issue(t, leafOpts{subject: pkix.Name{CommonName: "rsa"}, key: rsaKey(), keyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment})
	edCert, edKey := p.issue(t, leafOpts{subject: pkix.Name{CommonName: "ed"}, key: ed25519Key(t)})
	anyEKU, anyKey := p.issue(t, leafOpts{eku: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	noEKU, noEKUKey := p.issue(t, leafOpts{noEKU: true})

	cases := []struct {
		name  string
		pem   []byte
		leaf  *x509.Certificate
		key   crypto.Signer
		chain []*x509.Certificate
	}{
		{"PKCS#8 EC", cat(certPEM(ec), keyPEM(t, ecKey, "PRIVATE KEY")), ec, ecKey, nil},
		{"SEC1 EC", cat(certPEM(ec), keyPEM(t, ecKey, "EC PRIVATE KEY")), ec, ecKey, nil},
		{"PKCS#1 RSA", cat(certPEM(rsaCert), keyPEM(t, rk, "RSA PRIVATE KEY")), rsaCert, rk, nil},
		{"PKCS#8 RSA", cat(certPEM(rsaCert), keyPEM(t, rk, "PRIVATE KEY")), rsaCert, rk, nil},
		{"PKCS#8 Ed25519", cat(certPEM(edCert), keyPEM(t, edKey, "PRIVATE KEY")), edCert, edKey, nil},
		{"key first", cat(keyPEM(t, ecKey, "PRIVATE KEY"), certPEM(ec)), ec, ecKey, nil},
		// A bundle with the CA first: the leaf is the certificate of the key.
		{"CA first", cat(certPEM(p.cert, ec), keyPEM(t, ecKey, "PRIVATE KEY")), ec, ecKey, []*x509.Certificate{p.cert}},
		{"chain", cat(certPEM(ec, p.cert), keyPEM(t, ecKey, "PRIVATE KEY")), ec, ecKey, []*x509.Certificate{p.cert}},
		{"openssl text and EC PARAMETERS", cat([]byte("Bag Attributes\n    localKeyID: 01\nsubject=/CN=ec\n"), certPEM(ec),
			pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}),
			keyPEM(t, ecKey, "EC PRIVATE KEY"), []byte("trailing text\n")), ec, ecKey, nil},
		{"anyExtendedKeyUsage", cat(certPEM(anyEKU), keyPEM(t, anyKey, "PRIVATE KEY")), anyEKU, anyKey, nil},
		{"no EKU", cat(certPEM(noEKU), keyPEM(t, noEKUKey, "PRIVATE KEY")), noEKU, noEKUKey, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := parseImport(ImportRequest{PEM: c.pem})
			wantBundle(t, b, err, c.leaf, c.key, c.chain...)
			if b.format != "pem" {
				t.Errorf("format %q", b.format)
			}
		})
	}
}

func TestParsePFX(t *testing.T) {
	p := newPKI(t)
	ec, ecKey := p.issue(t, leafOpts{})
	rsaCert, rk := p.issue(t, leafOpts{key: rsaKey()})
	for name, enc := range map[string]*pkcs12.Encoder{
		"Modern2023": pkcs12.Modern2023, "Modern2026": pkcs12.Modern2026,
		"LegacyDES": pkcs12.LegacyDES, "LegacyRC2": pkcs12.LegacyRC2,
	} {
		t.Run(name, func(t *testing.T) {
			b, err := parseImport(ImportRequest{PFX: pfx(t, enc, ecKey, ec, []*x509.Certificate{p.cert}, "pässwörd"), Password: []byte("pässwörd")})
			wantBundle(t, b, err, ec, ecKey, p.cert)
			if b.format != "pfx" {
				t.Errorf("format %q", b.format)
			}
			b, err = parseImport(ImportRequest{PFX: pfx(t, enc, rk, rsaCert, nil, "x"), Password: []byte("x")})
			wantBundle(t, b, err, rsaCert, rk)
		})
	}
	t.Run("empty password", func(t *testing.T) {
		b, err := parseImport(ImportRequest{PFX: pfx(t, pkcs12.Modern2023, ecKey, ec, nil, "")})
		wantBundle(t, b, err, ec, ecKey)
	})
	t.Run("passwordless", func(t *testing.T) {
		b, err := parseImport(ImportRequest{PFX: pfx(t, pkcs12.Passwordless, ecKey, ec, nil, "")})
		wantBundle(t, b, err, ec, ecKey)
	})
	t.Run("leaf not first", func(t *testing.T) {
		// DecodeChain calls the first certificate the leaf; the key says
		// otherwise.
		b, err := parseImport(ImportRequest{PFX: pfx(t, pkcs12.Modern2023, ecKey, p.cert, []*x509.Certificate{ec}, "pw"), Password: []byte("pw")})
		wantBundle(t, b, err, ec, ecKey, p.cert)
	})
}

func TestParseImportRefusals(t *testing.T) {
	p := newPKI(t)
	ec, ecKey := p.issue(t, leafOpts{})
	_, otherKey := p.issue(t, leafOpts{})
	server, serverKey := p.issue(t, leafOpts{eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	signOnly, signOnlyKey := p.issue(t, leafOpts{keyUsage: x509.KeyUsageKeyEncipherment, key: rsaKey()})
	goodPFX := pfx(t, pkcs12.Modern2023, ecKey, ec, nil, "right")
	trustStore, err := pkcs12.Modern2023.EncodeTrustStore([]*x509.Certificate{ec}, "pw")
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 encrypted PEM is what users have; the test makes one.
	encBlock, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey()), []byte("pw"), x509.PEMCipherAES256) //nolint:staticcheck
	if err != nil {
		t.Fatal(err)
	}
	slowPFX := withIterations(t, pkcs12.Modern2023, ecKey, ec, 0x7FFFFF)

	cases := []struct {
		name      string
		req       ImportRequest
		sym, hr   string
		detailHas string
	}{
		{"nothing", ImportRequest{}, "RPC_X_NULL_REF_POINTER", hrNullRef, "certificate is required"},
		{"both", ImportRequest{PEM: certPEM(ec), PFX: goodPFX}, "E_INVALIDARG", hrInvalidArg, "not both"},
		{"password with PEM", ImportRequest{PEM: certPEM(ec), Password: []byte("pw")}, "E_INVALIDARG", hrInvalidArg, "pfx only"},
		{"not PEM", ImportRequest{PEM: []byte("hello")}, "E_INVALIDARG", hrInvalidArg, "no PEM data"},
		{"DER instead of PEM", ImportRequest{PEM: ec.Raw}, "E_INVALIDARG", hrInvalidArg, "no PEM data"},
		{"no key (PEM)", ImportRequest{PEM: certPEM(ec, p.cert)}, "E_INVALIDARG", hrInvalidArg, "has no private key"},
		{"no key (PFX)", ImportRequest{PFX: trustStore, Password: []byte("pw")}, "E_INVALIDARG", hrInvalidArg, "has no private key"},
		{"key only", ImportRequest{PEM: keyPEM(t, ecKey, "PRIVATE KEY")}, "E_INVALIDARG", hrInvalidArg, "no CERTIFICATE"},
		{"mismatched key", ImportRequest{PEM: cat(certPEM(ec, p.cert), keyPEM(t, otherKey, "PRIVATE KEY"))}, "E_INVALIDARG", hrInvalidArg, "does not belong"},
		{"two keys", ImportRequest{PEM: cat(certPEM(ec), keyPEM(t, ecKey, "PRIVATE KEY"), keyPEM(t, otherKey, "PRIVATE KEY"))}, "E_INVALIDARG", hrInvalidArg, "more than one private key"},
		{"serverAuth only", ImportRequest{PEM: cat(certPEM(server), keyPEM(t, serverKey, "PRIVATE KEY"))}, "E_INVALIDARG", hrInvalidArg, "extended key usage (serverAuth) does not include clientAuth"},
		{"no digitalSignature", ImportRequest{PEM: cat(certPEM(signOnly), keyPEM(t, signOnlyKey, "PRIVATE KEY"))}, "E_INVALIDARG", hrInvalidArg, "digitalSignature"},
		{"encrypted PEM (legacy)", ImportRequest{PEM: cat(certPEM(ec), pem.EncodeToMemory(encBlock))}, "E_INVALIDARG", hrInvalidArg, "encrypted"},
		{"encrypted PEM (PKCS#8)", ImportRequest{PEM: cat(certPEM(ec), pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0}}))}, "E_INVALIDARG", hrInvalidArg, "PKCS#12"},
		{"unknown block", ImportRequest{PEM: cat(certPEM(ec), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{1}}))}, "E_INVALIDARG", hrInvalidArg, "unexpected PEM block"},
		{"bad certificate", ImportRequest{PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 3, 1, 1, 1}})}, "E_INVALIDARG", hrInvalidArg, "cannot be parsed"},
		{"bad key", ImportRequest{PEM: cat(certPEM(ec), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{0x30, 0}}))}, "E_INVALIDARG", hrInvalidArg, "cannot be parsed"},
		{"wrong password", ImportRequest{PFX: goodPFX, Password: []byte("wrong")}, "E_INVALIDARG", hrInvalidArg, "password is incorrect"},
		{"no password", ImportRequest{PFX: goodPFX}, "E_INVALIDARG", hrInvalidArg, "password is incorrect"},
		{"not PKCS#12", ImportRequest{PFX: []byte("not a pfx"), Password: []byte("pw")}, "E_INVALIDARG", hrInvalidArg, "PKCS#12"},
		{"truncated PKCS#12", ImportRequest{PFX: goodPFX[:len(goodPFX)/2], Password: []byte("right")}, "E_INVALIDARG", hrInvalidArg, "PKCS#12"},
		{"too many iterations", ImportRequest{PFX: slowPFX, Password: []byte("pw")}, "E_INVALIDARG", hrInvalidArg, "iterations"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := parseImport(c.req)
			wantCode(t, err, c.sym, c.hr)
			if !strings.Contains(err.Error(), c.detailHas) {
				t.Errorf("error %q does not say %q", err, c.detailHas)
			}
			if len(c.req.Password) > 0 && strings.Contains(err.Error(), string(c.req.Password)) {
				t.Errorf("error %q echoes the password", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// TestPFXIterationLimit: the limit itself is accepted, one more is not, in
// every encoder's layout (MAC, certificate safe, key bag).
func TestPFXIterationLimit(t *testing.T) {
	p := newPKI(t)
	ec, ecKey := p.issue(t, leafOpts{})
	for name, enc := range map[string]*pkcs12.Encoder{
		"Modern2023": pkcs12.Modern2023, "Modern2026": pkcs12.Modern2026,
		"LegacyDES": pkcs12.LegacyDES, "LegacyRC2": pkcs12.LegacyRC2,
	} {
		if err := checkPFXWork(withIterations(t, enc, ecKey, ec, maxPFXIterations)); err != nil {
			t.Errorf("%s at the limit: %v", name, err)
		}
		wantCode(t, checkPFXWork(withIterations(t, enc, ecKey, ec, maxPFXIterations+1)), "E_INVALIDARG", hrInvalidArg)
		wantCode(t, checkPFXWork(withIterations(t, enc, ecKey, ec, 0x7FFFFF)), "E_INVALIDARG", hrInvalidArg)
	}
}

// withIterations makes a PKCS#12 file whose every iteration count is n,
// without running n iterations: it encodes with a marker count of the same
// DER length and patches the INTEGERs. (The MAC no longer verifies; the
// iteration check runs before it.)
func withIterations(t *testing.T, enc *pkcs12.Encoder, key crypto.Signer, c *x509.Certificate, n int) []byte {
	t.Helper()
	const marker = 0x805A // DER 00 80 5A: 3 content bytes like 1,000,000, yet cheap
	b := pfx(t, enc.WithIterations(marker), key, c, nil, "pw")
	want := big.NewInt(int64(n)).Bytes()
	if want[0]&0x80 != 0 {
		want = append([]byte{0}, want...)
	}
	from := []byte{0x02, 0x03, 0x00, 0x80, 0x5A}
	to := append([]byte{0x02, byte(len(want))}, want...)
	if bytes.Count(b, from) < 2 {
		t.Fatalf("marker found %d times", bytes.Count(b, from))
	}
	if len(to) != len(from) {
		t.Fatalf("%d is not a 3-byte INTEGER", n)
	}
	return bytes.ReplaceAll(b, from, to)
}

func TestIterationValue(t *testing.T) {
	for _, c := range []struct {
		in   []byte
		want int64
	}{
		{[]byte{0x08, 0x00}, 2048},
		{[]byte{0x00, 0x80}, 128},
		{[]byte{0x7f, 0xff, 0xff, 0xff}, 1<<31 - 1},
		{[]byte{0x80, 0, 0, 0}, maxPFXIterations + 1},
		{[]byte{1, 0, 0, 0, 0}, maxPFXIterations + 1},
		{[]byte{0, 0, 0, 0, 0, 0, 1}, 1},
	} {
		if got := iterationValue(c.in); got != c.want {
			t.Errorf("iterationValue(%x) = %d, want %d", c.in, got, c.want)
		}
	}
}

func TestCertInfo(t *testing.T) {
	p := newPKI(t)
	c, _ := p.issue(t, leafOpts{subject: subjectOf("Example", []string{"Ops"}, "alice"), key: rsaKey()})
	info := certInfo(c, 2)
	if info.Subject != "CN=alice,OU=Ops,O=Example" || info.Issuer != "CN=Test Root CA,O=ferry tests" ||
		info.KeyAlgorithm != "RSA-2048" || !info.HasKey || info.ChainLen != 2 || len(info.SHA1) != 40 || len(info.SHA256) != 64 ||
		info.Serial != c.SerialNumber.Text(16) || !info.NotAfter.Equal(c.NotAfter) {
		t.Errorf("certInfo = %+v", info)
	}
	ec, _ := p.issue(t, leafOpts{})
	ed, _ := p.issue(t, leafOpts{key: ed25519Key(t)})
	if a, b := certInfo(ec, 1).KeyAlgorithm, certInfo(ed, 1).KeyAlgorithm; a != "ECDSA-P256" || b != "Ed25519" {
		t.Errorf("key algorithms %q, %q", a, b)
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
