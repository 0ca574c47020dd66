package certvault

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/job"
	"github.com/rs/zerolog"
	"software.sslmate.com/src/go-pkcs12"
)

// ImportRequest is one certificate with its private key to import: either
// PEM (certificates and one unencrypted private key: PKCS#1, PKCS#8 or SEC1)
// or PFX (a DER PKCS#12 file, modern AES or legacy 3DES/RC2) with its
// Password. Exactly one of PEM and PFX is set.
//
// An ImportRequest never shows its contents: fmt (every verb),
// encoding/json and zerolog print only which form it is and its size.
type ImportRequest struct {
	PEM      []byte
	PFX      []byte
	Password []byte
}

// String shows the form and size, never the bytes.
func (r ImportRequest) String() string {
	switch {
	case len(r.PEM) > 0 && len(r.PFX) > 0:
		return fmt.Sprintf("ImportRequest(pem %d bytes, pfx %d bytes)", len(r.PEM), len(r.PFX))
	case len(r.PFX) > 0:
		return fmt.Sprintf("ImportRequest(pfx %d bytes, password %t)", len(r.PFX), len(r.Password) > 0)
	case len(r.PEM) > 0:
		return fmt.Sprintf("ImportRequest(pem %d bytes)", len(r.PEM))
	}
	return "ImportRequest(empty)"
}

// GoString is String.
func (r ImportRequest) GoString() string { return r.String() }

// Format prints String for every verb.
func (r ImportRequest) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, r.String()) }

// MarshalJSON encodes only the form and sizes.
func (r ImportRequest) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		PEMBytes    int  `json:"pem_bytes,omitempty"`
		PFXBytes    int  `json:"pfx_bytes,omitempty"`
		HasPassword bool `json:"has_password,omitempty"`
	}{len(r.PEM), len(r.PFX), len(r.Password) > 0})
}

// MarshalZerologObject logs only the form and sizes.
func (r ImportRequest) MarshalZerologObject(e *zerolog.Event) {
	e.Int("pem_bytes", len(r.PEM)).Int("pfx_bytes", len(r.PFX)).Bool("has_password", len(r.Password) > 0)
}

// CertInfo is what certvault tells about a stored certificate: metadata,
// never key material. Thumbprints are lower-case hex over the DER.
type CertInfo struct {
	Location Location `json:"location"`
	// Store is the canonical store name as the caller addressed it
	// ("<principal>\<STORE>" in USERS and SERVICES).
	Store     string    `json:"store"`
	SHA1      string    `json:"sha1"`
	SHA256    string    `json:"sha256"`
	Subject   string    `json:"subject"` // RFC 4514, as Go prints it
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Serial is the serial number in lower-case hex.
	Serial string `json:"serial"`
	// KeyAlgorithm is "RSA-2048", "ECDSA-P256", "Ed25519", ….
	KeyAlgorithm string `json:"key_algorithm"`
	HasKey       bool   `json:"has_key"`
	// ChainLen counts the stored certificates, the leaf included.
	ChainLen   int       `json:"chain_len"`
	ImportedBy string    `json:"imported_by"`
	ImportedAt time.Time `json:"imported_at"`
}

// bundle is a parsed import: the leaf, the other certificates in the order
// given, and the private key as PKCS#8 (the caller clears it).
type bundle struct {
	leaf   *x509.Certificate
	chain  []*x509.Certificate // leaf first
	pkcs8  secret
	format string // "pem" or "pfx"
}

// Limits of an import.
const (
	// maxChain bounds the certificates of one import.
	maxChain = 16
	// maxPFXIterations bounds every KDF iteration count in a PKCS#12 file.
	// Exporters use 2,000 (Windows), 2,048 (OpenSSL, go-pkcs12) or 10,000
	// (Java); OWASP's PBKDF2-SHA256 advice is 600,000. The decoder has no
	// limit of its own, and a file asking for 2^31 iterations would hold a
	// CPU for minutes.
	maxPFXIterations = 1_000_000
)

// parseImport validates an import request and parses it. Every refusal is
// a *job.Error with a detail that tells the user what to do:
//
//   - neither PEM nor PFX: RPC_X_NULL_REF_POINTER; both, or a password with
//     PEM: E_INVALIDARG;
//   - unreadable input, encrypted PEM, wrong PKCS#12 password, no private
//     key, a key that matches no certificate, a key type TLS cannot sign
//     with, or a leaf not valid for client authentication: E_INVALIDARG.
//
// Why E_INVALIDARG and not the codes that look closer: CRYPT_E_NOT_FOUND
// and E_ACCESSDENIED already mean "no certificate with that hash" and "you
// may not use this location" in this API (SetClientCertificateByID), and
// CERT_E_WRONG_USAGE is the verdict on a *caller's* certificate (HTTP 401).
// A wrong password cannot be told from a damaged file (both fail the MAC);
// either way the request's content is what is wrong.
func parseImport(req ImportRequest) (*bundle, error) {
	switch {
	case len(req.PEM) == 0 && len(req.PFX) == 0:
		return nil, job.Errorf(job.RPC_X_NULL_REF_POINTER, "a certificate is required: give pem, or pfx with its password")
	case len(req.PEM) > 0 && len(req.PFX) > 0:
		return nil, job.Errorf(job.E_INVALIDARG, "give either pem or pfx, not both")
	case len(req.PEM) > 0 && len(req.Password) > 0:
		return nil, job.Errorf(job.E_INVALIDARG, "a password applies to pfx only; encrypted PEM keys are not supported (convert to PKCS#12: openssl pkcs12 -export)")
	case len(req.PEM) > 0:
		return parsePEM(req.PEM)
	}
	return parsePFX(req.PFX, req.Password)
}

func parsePEM(data []byte) (*bundle, error) {
	var (
		certs  []*x509.Certificate
		keyDER []byte
		keyTyp string
		found  bool
	)
	defer func() { clear(keyDER) }()
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		found = true
		if _, enc := block.Headers["Proc-Type"]; enc || block.Type == "ENCRYPTED PRIVATE KEY" {
			clear(block.Bytes)
			return nil, job.Errorf(job.E_INVALIDARG, "the PEM private key is encrypted, which is not supported: export certificate and key as PKCS#12 (openssl pkcs12 -export -in cert.pem -inkey key.pem -out cert.pfx) and import the pfx with its password")
		}
		switch block.Type {
		case "CERTIFICATE":
			if len(certs) == maxChain {
				return nil, job.Errorf(job.E_INVALIDARG, "more than %d certificates", maxChain)
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, job.Errorf(job.E_INVALIDARG, "PEM certificate %d cannot be parsed: %v", len(certs)+1, err)
			}
			certs = append(certs, c)
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
			if keyDER != nil {
				clear(block.Bytes)
				return nil, job.Errorf(job.E_INVALIDARG, "the PEM holds more than one private key; give the one that belongs to the certificate")
			}
			keyDER, keyTyp = block.Bytes, block.Type
		case "EC PARAMETERS":
			// openssl ecparam -genkey writes these before the key; the key
			// names its curve itself.
		default:
			return nil, job.Errorf(job.E_INVALIDARG, "unexpected PEM block %q: give CERTIFICATE blocks and one PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block", truncate(block.Type, 40))
		}
	}
	if !found {
		return nil, job.Errorf(job.E_INVALIDARG, "no PEM data found: give the certificate and its private key as PEM, or a PKCS#12 file as pfx")
	}
	if len(certs) == 0 {
		return nil, job.Errorf(job.E_INVALIDARG, "the PEM holds no CERTIFICATE block")
	}
	if keyDER == nil {
		return nil, errNoKey()
	}
	var (
		key any
		err error
	)
	switch keyTyp {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(keyDER)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(keyDER)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(keyDER)
	}
	if err != nil {
		return nil, job.Errorf(job.E_INVALIDARG, "the %s block cannot be parsed: %v", keyTyp, err)
	}
	return assemble(key, certs, "pem")
}

func errNoKey() error {
	return job.Errorf(job.E_INVALIDARG, "the certificate has no private key: a client certificate is usable only with its key (keys that stay on a smart card are not supported); give the key in the PEM, or a PKCS#12 file that contains it")
}

func parsePFX(data, password []byte) (*bundle, error) {
	if err := checkPFXWork(data); err != nil {
		return nil, err
	}
	// PKCS#12 passwords are text (BMPString); go-pkcs12 takes a string.
	key, leaf, cas, err := pkcs12.DecodeChain(data, string(password))
	if err != nil {
		var ni pkcs12.NotImplementedError
		switch {
		case errors.Is(err, pkcs12.ErrIncorrectPassword):
			return nil, job.Errorf(job.E_INVALIDARG, "the PKCS#12 password is incorrect (or the file is damaged)")
		case errors.Is(err, pkcs12.ErrDecryption):
			return nil, job.Errorf(job.E_INVALIDARG, "the PKCS#12 file cannot be decrypted with this password (or it is damaged)")
		case err.Error() == "pkcs12: private key missing":
			return nil, errNoKey()
		case errors.As(err, &ni):
			return nil, job.Errorf(job.E_INVALIDARG, "this PKCS#12 file is not supported (%v); re-export it with openssl pkcs12 -export", err)
		}
		return nil, job.Errorf(job.E_INVALIDARG, "not a readable PKCS#12 (.pfx) file: %v (only DER files are read; re-export with openssl pkcs12 -export)", err)
	}
	if len(cas)+1 > maxChain {
		return nil, job.Errorf(job.E_INVALIDARG, "more than %d certificates", maxChain)
	}
	// DecodeChain takes the first certificate for the leaf; assemble picks
	// the one that matches the key instead.
	return assemble(key, append([]*x509.Certificate{leaf}, cas...), "pfx")
}

// assemble picks the leaf by public-key match, checks that it can do TLS
// client authentication, and converts the key to PKCS#8.
func assemble(key any, certs []*x509.Certificate, format string) (*bundle, error) {
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, job.Errorf(job.E_INVALIDARG, "the private key (%T) cannot sign, so it cannot authenticate a TLS client", key)
	}
	switch k := signer.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
	default:
		return nil, job.Errorf(job.E_INVALIDARG, "private keys of type %T are not supported: use RSA, ECDSA or Ed25519", k)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return nil, job.Errorf(job.E_INVALIDARG, "the private key's public half cannot be compared")
	}
	leafAt := -1
	for i, c := range certs {
		if pub.Equal(c.PublicKey) {
			leafAt = i
			break
		}
	}
	if leafAt < 0 {
		return nil, job.Errorf(job.E_INVALIDARG, "the private key does not belong to any of the %d certificates given", len(certs))
	}
	leaf := certs[leafAt]
	chain := make([]*x509.Certificate, 0, len(certs))
	chain = append(chain, leaf)
	for i, c := range certs {
		if i != leafAt {
			chain = append(chain, c)
		}
	}
	if err := checkClientAuth(leaf); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, job.Errorf(job.E_INVALIDARG, "the private key cannot be encoded: %v", err)
	}
	return &bundle{leaf: leaf, chain: chain, pkcs8: der, format: format}, nil
}

// checkClientAuth refuses a leaf that TLS peers would reject as a client
// certificate: an extended key usage without clientAuth (or anyExtendedKeyUsage),
// or a key usage without digitalSignature. A certificate without those
// extensions is valid for every use.
func checkClientAuth(c *x509.Certificate) error {
	if len(c.ExtKeyUsage) > 0 || len(c.UnknownExtKeyUsage) > 0 {
		ok := false
		for _, u := range c.ExtKeyUsage {
			ok = ok || u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny
		}
		if !ok {
			return job.Errorf(job.E_INVALIDARG, "the certificate %q is not valid for client authentication: its extended key usage (%s) does not include clientAuth",
				truncate(c.Subject.String(), 120), ekuNames(c))
		}
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return job.Errorf(job.E_INVALIDARG, "the certificate %q is not valid for client authentication: its key usage does not include digitalSignature",
			truncate(c.Subject.String(), 120))
	}
	return nil
}

func ekuNames(c *x509.Certificate) string {
	names := map[x509.ExtKeyUsage]string{
		x509.ExtKeyUsageServerAuth: "serverAuth", x509.ExtKeyUsageCodeSigning: "codeSigning",
		x509.ExtKeyUsageEmailProtection: "emailProtection", x509.ExtKeyUsageTimeStamping: "timeStamping",
		x509.ExtKeyUsageOCSPSigning: "OCSPSigning",
	}
	var out []string
	for _, u := range c.ExtKeyUsage {
		if n, ok := names[u]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("usage %d", u))
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		out = append(out, oid.String())
	}
	return strings.Join(out, ", ")
}

// info describes the bundle's leaf.
func (b *bundle) info() CertInfo {
	return certInfo(b.leaf, len(b.chain))
}

func certInfo(leaf *x509.Certificate, chainLen int) CertInfo {
	s1, s256 := sha1.Sum(leaf.Raw), sha256.Sum256(leaf.Raw)
	serial := ""
	if leaf.SerialNumber != nil {
		serial = hex.EncodeToString(new(big.Int).Abs(leaf.SerialNumber).Bytes())
		if leaf.SerialNumber.Sign() < 0 {
			serial = "-" + serial
		}
	}
	return CertInfo{
		SHA1:         hex.EncodeToString(s1[:]),
		SHA256:       hex.EncodeToString(s256[:]),
		Subject:      leaf.Subject.String(),
		Issuer:       leaf.Issuer.String(),
		NotBefore:    leaf.NotBefore.UTC(),
		NotAfter:     leaf.NotAfter.UTC(),
		Serial:       serial,
		KeyAlgorithm: keyAlgorithm(leaf.PublicKey),
		HasKey:       true,
		ChainLen:     chainLen,
	}
}

func keyAlgorithm(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA-" + strings.ReplaceAll(k.Curve.Params().Name, "-", "")
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// checkPFXWork refuses a PKCS#12 file whose key-derivation iteration counts
// exceed maxPFXIterations, before any derivation runs. It reads the DER
// tree (descending into OCTET STRINGs that hold DER) and takes every
// INTEGER that directly follows an OCTET STRING in a SEQUENCE for an
// iteration count: that is the shape of MacData, PBEParameter and
// PBKDF2-params, and of nothing else in a PFX outside certificates' own
// extensions, where such an integer would be a harmless false alarm only if
// huge. It sees the MAC, each safe's encryption and the shrouded key bags of
// unencrypted safes — everything exporters write in the clear. A key bag
// inside an encrypted safe is only reached after the MAC check, which needs
// the password: only the importer can make such a file, and Vault bounds
// concurrent PKCS#12 decodes. Structure it cannot read is left to the
// decoder to refuse.
func checkPFXWork(der []byte) error {
	if n := maxIterationsIn(der, 0); n > pfxIterationLimit {
		return job.Errorf(job.E_INVALIDARG, "the PKCS#12 file asks for more than %d key-derivation iterations; re-export it with fewer (openssl pkcs12 -export -iter 10000)", pfxIterationLimit)
	}
	return nil
}

// pfxIterationLimit is maxPFXIterations; the PKCS#12 fuzz target lowers it
// so that the fuzzer does not spend its time deriving keys.
var pfxIterationLimit int64 = maxPFXIterations

// maxDERDepth bounds the recursion of maxIterationsIn.
const maxDERDepth = 24

// maxIterationsIn returns the largest iteration count found in der, or
// maxPFXIterations+1 for one too large for an int64.
func maxIterationsIn(der []byte, depth int) int64 {
	if depth > maxDERDepth {
		return 0
	}
	var most int64
	var prevOctet bool
	for len(der) > 0 {
		var v asn1.RawValue
		rest, err := asn1.Unmarshal(der, &v)
		if err != nil {
			return most
		}
		der = rest
		switch {
		case v.Class == asn1.ClassUniversal && v.Tag == asn1.TagInteger && !v.IsCompound && prevOctet:
			most = max(most, iterationValue(v.Bytes))
		case v.IsCompound:
			most = max(most, maxIterationsIn(v.Bytes, depth+1))
		case v.Class == asn1.ClassUniversal && v.Tag == asn1.TagOctetString && len(v.Bytes) > 1:
			if b := v.Bytes[0]; b == 0x30 || b == 0x31 || b == 0x04 || b&0xe0 == 0xa0 {
				most = max(most, maxIterationsIn(v.Bytes, depth+1))
			}
		}
		prevOctet = v.Class == asn1.ClassUniversal && v.Tag == asn1.TagOctetString && !v.IsCompound
	}
	return most
}

// iterationValue reads a DER INTEGER's content as an iteration count;
// anything that does not fit in 31 bits counts as too many.
func iterationValue(b []byte) int64 {
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	if len(b) > 4 {
		return maxPFXIterations + 1
	}
	var n int64
	for _, c := range b {
		n = n<<8 | int64(c)
	}
	if len(b) == 4 && b[0]&0x80 != 0 {
		return maxPFXIterations + 1 // negative or ≥ 2^31
	}
	return n
}

// chainDER returns the DER of the bundle's certificates, leaf first.
func (b *bundle) chainDER() [][]byte {
	out := make([][]byte, len(b.chain))
	for i, c := range b.chain {
		out[i] = bytes.Clone(c.Raw)
	}
	return out
}
