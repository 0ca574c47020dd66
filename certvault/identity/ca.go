package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/job"
)

// Validity defaults. Agents and services get short-lived identities that are
// renewed (research decision 13: step-ca/SPIRE style, renewed at about 2/3 of
// their lifetime); people's identities last longer because they are issued by
// hand.
const (
	DefaultWorkloadValidity = 24 * time.Hour      // agent, service
	DefaultPersonValidity   = 30 * 24 * time.Hour // user, admin
	CAValidity              = 10 * 365 * 24 * time.Hour
	// backdate is how far NotBefore precedes issuance, for clock skew
	// between the CA and the machines that verify.
	backdate = 5 * time.Minute
)

// ErrCAExists is returned by InitCA when the directory already holds a CA (or
// part of one). It matches errors.Is(err, fs.ErrExist).
var ErrCAExists = fmt.Errorf("a CA already exists: %w", fs.ErrExist)

// CA is the deployment's certificate authority: a self-signed ECDSA P-256
// root whose single URI SAN is spiffe://<trust-domain>. It holds its private
// key; printing a CA never shows the key.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Now is the clock used for issuance; nil means time.Now.
	Now func() time.Time

	trustDomain string
	key         crypto.Signer
}

// NewCA makes a CA in memory for trustDomain (see ValidateTrustDomain). Use
// InitCA to make one on disk.
func NewCA(trustDomain string) (*CA, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(),
		Subject:               pkix.Name{CommonName: "ferry CA " + trustDomain, Organization: []string{"ferry"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: SPIFFEScheme, Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: CA certificate: %w", err)
	}
	return &CA{Cert: cert, trustDomain: trustDomain, key: key}, nil
}

// InitCA makes a CA for trustDomain and writes it to dir (created 0700 if
// missing): ca.pem (0644) and ca-key.pem (0600, PKCS#8). It never overwrites:
// if either file exists it returns an error matching ErrCAExists and
// fs.ErrExist, and the files are created with O_EXCL so two concurrent
// InitCA calls cannot both succeed.
func InitCA(dir, trustDomain string) (*CA, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	p := Paths(dir)
	for _, f := range []string{p.CACert, p.CAKey} {
		if _, err := os.Lstat(f); err == nil {
			return nil, fmt.Errorf("identity: %w: %s exists; refusing to overwrite it (remove it first if you really mean to replace the deployment's CA)", ErrCAExists, f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("identity: init CA: %w", err)
		}
	}
	ca, err := NewCA(trustDomain)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(ca.key)
	if err != nil {
		return nil, err
	}
	defer clear(keyPEM)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: init CA: %w", err)
	}
	if err := writeNew(p.CAKey, keyPEM, 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("identity: %w: %s exists; refusing to overwrite it", ErrCAExists, p.CAKey)
		}
		return nil, fmt.Errorf("identity: init CA: %w", err)
	}
	if err := writeNew(p.CACert, ca.CertPEM(), 0o644); err != nil {
		_ = os.Remove(p.CAKey) // we created it a moment ago; leave nothing half-made
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("identity: %w: %s exists; refusing to overwrite it", ErrCAExists, p.CACert)
		}
		return nil, fmt.Errorf("identity: init CA: %w", err)
	}
	return ca, nil
}

// LoadCA reads the CA that InitCA wrote to dir. It checks that ca.pem is a
// CA certificate naming its trust domain (one URI SAN spiffe://<td>) and
// that ca-key.pem is its key. A missing CA matches fs.ErrNotExist.
func LoadCA(dir string) (*CA, error) {
	p := Paths(dir)
	certPEM, err := os.ReadFile(p.CACert)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA (run `ferry ca init` to make one): %w", err)
	}
	keyPEM, err := os.ReadFile(p.CAKey)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA key: %w", err)
	}
	defer clear(keyPEM)
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", p.CACert, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("identity: %s is not a CA certificate", p.CACert)
	}
	td, err := trustDomainOf(cert)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", p.CACert, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", p.CAKey, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("identity: %s is not the key of %s", p.CAKey, p.CACert)
	}
	return &CA{Cert: cert, trustDomain: td, key: key}, nil
}

func trustDomainOf(cert *x509.Certificate) (string, error) {
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("a ferry CA has exactly one URI SAN (spiffe://<trust-domain>); this one has %d", len(cert.URIs))
	}
	u := cert.URIs[0]
	if u.Scheme != SPIFFEScheme || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return "", fmt.Errorf("CA URI SAN %q is not spiffe://<trust-domain>", u)
	}
	if err := ValidateTrustDomain(u.Host); err != nil {
		return "", err
	}
	return u.Host, nil
}

// TrustDomain returns the CA's SPIFFE trust domain.
func (ca *CA) TrustDomain() string { return ca.trustDomain }

// CertPEM returns the CA certificate in PEM form (what clients and servers
// trust).
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Pool returns a pool holding only this CA: the roots for Authenticator,
// ServerTLSConfig and ClientTLSConfig.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// String describes the CA without its key.
func (ca CA) String() string {
	if ca.Cert == nil {
		return "identity.CA{}"
	}
	return fmt.Sprintf("identity.CA{trust domain %q, subject %q, not after %s, key redacted}",
		ca.trustDomain, ca.Cert.Subject.String(), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
}

// GoString is String, so that %#v does not print the key either.
func (ca CA) GoString() string { return ca.String() }

func (ca *CA) now() time.Time {
	if ca.Now != nil {
		return ca.Now()
	}
	return time.Now()
}

// IssueRequest describes an identity to issue.
type IssueRequest struct {
	Role Role   // user, admin, agent or service
	Name string // see ValidateName; the last segment of the SPIFFE ID
	// DNSNames and IPs are server names, allowed for service identities
	// only (they also get the serverAuth usage).
	DNSNames []string
	IPs      []net.IP
	// Validity is how long the certificate is valid from now: 0 means
	// DefaultWorkloadValidity for agents and services and
	// DefaultPersonValidity for users and admins. It is cut short at the
	// CA's own expiry.
	Validity time.Duration
}

// Validate reports every problem of the request at once (E_INVALIDARG).
func (r IssueRequest) Validate() error {
	var errs []error
	if !r.Role.Issuable() {
		errs = append(errs, job.Errorf(job.E_INVALIDARG, "role %q is not one of user, admin, agent, service", string(r.Role)))
	}
	if err := ValidateName(r.Name); err != nil {
		errs = append(errs, err)
	}
	if r.Role != RoleService && (len(r.DNSNames) > 0 || len(r.IPs) > 0) {
		errs = append(errs, job.Errorf(job.E_INVALIDARG, "only service identities carry DNS names or IP addresses; this one is %s", r.Role))
	}
	for _, d := range r.DNSNames {
		if err := validateDNSName(d); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ip := range r.IPs {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			errs = append(errs, job.Errorf(job.E_INVALIDARG, "IP address %v is not valid", ip))
		}
	}
	if r.Validity < 0 {
		errs = append(errs, job.Errorf(job.E_INVALIDARG, "validity %v is negative", r.Validity))
	}
	return errors.Join(errs...)
}

func validateDNSName(d string) error {
	if d == "" || len(d) > 253 {
		return job.Errorf(job.E_INVALIDARG, "DNS name %q must be 1 to 253 characters", d)
	}
	rest := strings.TrimPrefix(d, "*.")
	for _, label := range strings.Split(rest, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return job.Errorf(job.E_INVALIDARG, "DNS name %q has an invalid label %q", d, label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return job.Errorf(job.E_INVALIDARG, "DNS name %q has %q; only letters, digits, '-' and '.' (and a leading \"*.\") are allowed", d, rune(c))
			}
		}
	}
	return nil
}

// Issue makes a new key pair and certificate for one identity: one URI SAN
// spiffe://<trust-domain>/<role>/<name>, KeyUsage DigitalSignature, the
// clientAuth extended key usage (and serverAuth for service identities,
// with their DNS and IP SANs), subject CN=<name>, OU=<role>, O=ferry.
// certPEM holds the leaf only (the CA is a root that peers already trust);
// keyPEM is an unencrypted PKCS#8 "PRIVATE KEY" block. Invalid requests are
// E_INVALIDARG.
func (ca *CA) Issue(req IssueRequest) (certPEM, keyPEM []byte, err error) {
	if err := req.Validate(); err != nil {
		return nil, nil, fmt.Errorf("identity: issue: %w", err)
	}
	id := SPIFFEID{TrustDomain: ca.trustDomain, Role: req.Role, Name: req.Name}
	uri, err := url.Parse(id.String())
	if err != nil {
		return nil, nil, fmt.Errorf("identity: issue: %w", err)
	}
	now := ca.now()
	if !now.Before(ca.Cert.NotAfter) {
		return nil, nil, fmt.Errorf("identity: issue: the CA expired at %s", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	validity := req.Validity
	if validity == 0 {
		validity = DefaultPersonValidity
		if req.Role == RoleAgent || req.Role == RoleService {
			validity = DefaultWorkloadValidity
		}
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	eku := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if req.Role == RoleService {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: issue: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject: pkix.Name{
			CommonName:         req.Name,
			OrganizationalUnit: []string{string(req.Role)},
			Organization:       []string{"ferry"},
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: issue %s: %w", id, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("identity: encode key: %w", err)
	}
	defer clear(der)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PRIVATE KEY or EC PRIVATE KEY PEM block")
		}
		var (
			k   any
			err error
		)
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			continue
		}
		clear(b.Bytes)
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key of type %T cannot sign", k)
		}
		return s, nil
	}
}

func serialNumber() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1)) // positive, never zero
}

// Files of a credentials directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
	// CredentialsEnv names the environment variable that overrides
	// DefaultDir.
	CredentialsEnv = "FERRY_CREDENTIALS"
)

// DefaultDir is the credentials directory the CLI uses without flags:
// $FERRY_CREDENTIALS if set, else <dataDir>/pki. The caller passes its data
// directory (services owns that default; identity does not depend on it).
func DefaultDir(dataDir string) string {
	if d := os.Getenv(CredentialsEnv); d != "" {
		return d
	}
	return filepath.Join(dataDir, "pki")
}

// Layout names the files of a credentials directory:
//
//	ca.pem, ca-key.pem          the CA (InitCA, LoadCA)
//	<name>.pem, <name>-key.pem  an identity (WriteIdentity, LoadKeyPair)
type Layout struct {
	Dir    string
	CACert string
	CAKey  string
}

// Paths returns the layout of the credentials directory dir.
func Paths(dir string) Layout {
	return Layout{Dir: dir, CACert: filepath.Join(dir, CACertFile), CAKey: filepath.Join(dir, CAKeyFile)}
}

// Identity returns the certificate and key files of the identity name. The
// name is not checked here; WriteIdentity checks it.
func (l Layout) Identity(name string) (certFile, keyFile string) {
	return filepath.Join(l.Dir, name+".pem"), filepath.Join(l.Dir, name+"-key.pem")
}

// validateFileName checks an identity's file name: a valid name (see
// ValidateName) that does not collide with the CA's files or with another
// identity's key file ("x-key.pem" is the key of "x", so "x-key" is refused).
func validateFileName(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if name == "ca" || strings.HasSuffix(name, "-key") {
		return job.Errorf(job.E_INVALIDARG, "identity file name %q is reserved (it would collide with ca.pem, ca-key.pem or another identity's key file)", name)
	}
	return nil
}

// WriteIdentity stores an identity in dir (created 0700 if missing) as
// <name>.pem (0644) and <name>-key.pem (0600). It checks that the key matches
// the certificate, and replaces existing files atomically (renewal of
// short-lived identities rewrites them): each file is written to a temporary
// file, synced and renamed, the key first.
func WriteIdentity(dir, name string, certPEM, keyPEM []byte) error {
	if err := validateFileName(name); err != nil {
		return fmt.Errorf("identity: write identity: %w", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("identity: write identity %s: certificate and key do not form a key pair: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: write identity: %w", err)
	}
	certFile, keyFile := Paths(dir).Identity(name)
	if err := writeReplace(keyFile, keyPEM, 0o600); err != nil {
		return fmt.Errorf("identity: write identity %s: %w", name, err)
	}
	if err := writeReplace(certFile, certPEM, 0o644); err != nil {
		return fmt.Errorf("identity: write identity %s: %w", name, err)
	}
	return nil
}

// LoadKeyPair reads a certificate (PEM, leaf first, optionally followed by
// intermediates) and its key, with Leaf parsed.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("identity: load key pair %s, %s: %w", certFile, keyFile, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("identity: load key pair %s: %w", certFile, err)
		}
	}
	return c, nil
}

// LoadRoots reads a PEM file of trusted CA certificates (ca.pem) into a pool.
func LoadRoots(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("identity: load roots: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("identity: load roots: %s holds no PEM certificate", file)
	}
	return p, nil
}

// writeNew creates path exclusively with exactly perm (whatever the umask)
// and writes data durably. On failure it removes what it created.
func writeNew(path string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	return finish(f, data, perm)
}

// writeReplace writes data to a temporary file beside path with exactly perm
// and renames it over path.
func writeReplace(path string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err := finish(f, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func finish(f *os.File, data []byte, perm fs.FileMode) error {
	err := f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
