package services

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
)

// DevTrustDomain is the SPIFFE trust domain of the dev stack's CA.
const DevTrustDomain = "ferry.dev"

// CLIIdentity is the file name (in the credentials directory) of the
// identity the CLI presents when no --cert is given.
const CLIIdentity = "admin"

// devPKI is the dev stack's CA and the identities it issues.
type devPKI struct {
	ca   *identity.CA
	dir  string
	auth *identity.Authenticator
}

// loadDevPKI opens (or creates on first use) the dev CA under dir, makes
// sure the CLI's admin identity exists and is not about to expire, and
// returns the authenticator that trusts the CA.
func loadDevPKI(dir string) (*devPKI, error) {
	ca, err := identity.LoadCA(dir)
	if errors.Is(err, fs.ErrNotExist) {
		ca, err = identity.InitCA(dir, DevTrustDomain)
	}
	if err != nil {
		return nil, fmt.Errorf("dev: credentials in %s: %w", dir, err)
	}
	p := &devPKI{ca: ca, dir: dir, auth: &identity.Authenticator{
		Roots: ca.Pool(), Roles: identity.RoleMap{TrustDomain: ca.TrustDomain()}}}
	certFile, keyFile := identity.Paths(dir).Identity(CLIIdentity)
	if c, err := identity.LoadKeyPair(certFile, keyFile); err == nil && time.Until(c.Leaf.NotAfter) > 24*time.Hour {
		return p, nil
	}
	name := "admin"
	if u, err := user.Current(); err == nil && identity.ValidateName(u.Username) == nil {
		name = u.Username
	}
	certPEM, keyPEM, err := ca.Issue(identity.IssueRequest{Role: identity.RoleAdmin, Name: name})
	if err != nil {
		return nil, err
	}
	if err := identity.WriteIdentity(dir, CLIIdentity, certPEM, keyPEM); err != nil {
		return nil, err
	}
	return p, nil
}

// serverCert issues the coordinator's TLS identity for loopback names.
func (p *devPKI) issue(role identity.Role, name string, hosts ...string) (tls.Certificate, error) {
	req := identity.IssueRequest{Role: role, Name: name}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			req.IPs = append(req.IPs, ip)
		} else {
			req.DNSNames = append(req.DNSNames, h)
		}
	}
	certPEM, keyPEM, err := p.ca.Issue(req)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// ClientConfig says how the CLI reaches and authenticates to a coordinator.
// Empty fields are found from the environment and the data directory.
type ClientConfig struct {
	// Service is the server to reach: "coordinator" (the default) or
	// "certvault".
	Service string
	Addr    string // its URL (else FERRY_ADDR / FERRY_VAULT_ADDR, else dev.json)
	DataDir string
	CACert  string // PEM of the CA that signs the coordinator (else <credentials>/ca.pem)
	Cert    string // client certificate (else <credentials>/admin.pem)
	Key     string // its key (else <credentials>/admin-key.pem)
}

// tlsConfig loads the client's identity and the CA it trusts.
func (c ClientConfig) tlsConfig() (*tls.Config, error) {
	layout := identity.Paths(identity.DefaultDir(c.DataDir))
	caFile, certFile, keyFile := c.CACert, c.Cert, c.Key
	if caFile == "" {
		caFile = layout.CACert
	}
	if certFile == "" {
		certFile, keyFile = layout.Identity(CLIIdentity)
	}
	if keyFile == "" {
		return nil, errors.New("--key is required with --cert")
	}
	roots, err := identity.LoadRoots(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w (run `ferry dev` once, or pass --ca-cert)", err)
	}
	cert, err := identity.LoadKeyPair(certFile, keyFile)
	if err != nil {
		if _, statErr := os.Stat(certFile); statErr != nil {
			return nil, fmt.Errorf("no client identity at %s: run `ferry dev` once, or `ferry ca issue`, or pass --cert/--key", certFile)
		}
		return nil, fmt.Errorf("client identity: %w", err)
	}
	return identity.ClientTLSConfig(cert, roots), nil
}

// CredentialsDir is dir if given, else $FERRY_CREDENTIALS, else
// <dataDir>/pki.
func CredentialsDir(dir, dataDir string) string {
	if dir != "" {
		return dir
	}
	return identity.DefaultDir(dataDir)
}

// InitCA creates a CA in dir (`ferry ca init`).
func InitCA(dir, trustDomain string) (*identity.CA, error) {
	return identity.InitCA(dir, trustDomain)
}

// IssueOptions are the arguments of `ferry ca issue`.
type IssueOptions struct {
	Dir      string // credentials directory holding the CA
	Out      string // where to write the identity
	Role     string
	Name     string
	Hosts    []string
	Validity time.Duration
}

// IssueIdentity issues and writes an identity; it returns its principal and
// certificate file.
func IssueIdentity(o IssueOptions) (string, string, error) {
	ca, err := identity.LoadCA(o.Dir)
	if err != nil {
		return "", "", fmt.Errorf("no CA in %s (run `ferry ca init` first): %w", o.Dir, err)
	}
	req := identity.IssueRequest{Role: identity.Role(o.Role), Name: o.Name, Validity: o.Validity}
	for _, h := range o.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			req.IPs = append(req.IPs, ip)
		} else {
			req.DNSNames = append(req.DNSNames, h)
		}
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return "", "", err
	}
	if err := identity.WriteIdentity(o.Out, o.Name, certPEM, keyPEM); err != nil {
		return "", "", err
	}
	certFile, _ := identity.Paths(o.Out).Identity(o.Name)
	id := identity.SPIFFEID{TrustDomain: ca.TrustDomain(), Role: req.Role, Name: o.Name}
	return id.String(), certFile, nil
}
