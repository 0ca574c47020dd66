package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ferry-dev/ferry/job"
)

// DNPrefix starts the principal of a certificate that has no URI SAN.
const DNPrefix = "x509:"

// Principal names the identity a certificate asserts:
//
//   - exactly one URI SAN: that URI, as written in the certificate
//     (ferry's own identities are spiffe://<trust-domain>/<role>/<name>);
//   - no URI SAN: "x509:" + the subject DN in RFC 4514 form (never the CN
//     alone), for certificates of other issuers such as people's;
//   - more than one URI SAN: an error (the X509-SVID rule: an identity
//     document names one identity);
//   - a URI SAN whose scheme is "x509": an error, so that no certificate
//     can claim a principal of the DN namespace through its URI SAN;
//   - no URI SAN and an empty subject: an error (it names nobody).
//
// Principal only reads the certificate: call it on a leaf that verification
// produced (Session does), never on an unverified peer certificate for
// authorization.
func Principal(leaf *x509.Certificate) (string, error) {
	if leaf == nil {
		return "", errors.New("identity: no certificate")
	}
	switch len(leaf.URIs) {
	case 0:
		dn := leaf.Subject.String()
		if dn == "" {
			return "", fmt.Errorf("identity: certificate has neither a URI SAN nor a subject, so it names no principal")
		}
		return DNPrefix + dn, nil
	case 1:
		u := leaf.URIs[0].String()
		if strings.HasPrefix(strings.ToLower(u), DNPrefix) {
			return "", fmt.Errorf("identity: URI SAN %q uses the x509: scheme reserved for subject-DN principals", u)
		}
		if u == "" {
			return "", errors.New("identity: certificate has an empty URI SAN")
		}
		return u, nil
	default:
		return "", fmt.Errorf("identity: certificate has %d URI SANs; a ferry identity has exactly one", len(leaf.URIs))
	}
}

// RoleMap is the role configuration of a server: the deployment's trust
// domain and explicit overrides. Its zero value gives every principal
// RoleNone (no trust domain is configured, no override exists): it fails
// closed.
type RoleMap struct {
	// TrustDomain is the deployment's SPIFFE trust domain (e.g.
	// "ferry.internal"). Roles are derived only from SPIFFE IDs of this
	// trust domain; empty derives none.
	TrustDomain string `json:"trust_domain"`
	// Overrides maps a principal, exactly as Principal spells it, to its
	// role. An override wins over the SPIFFE path, including an override to
	// RoleNone (""), which takes every role away from a principal (a
	// deny-list entry). This is how principals without a ferry SPIFFE ID
	// ("x509:CN=Alice,O=Example") get a role.
	Overrides map[string]Role `json:"overrides,omitempty"`
}

// RoleOf returns the role of a verified principal: its override if it has
// one; else, for a canonical spiffe://<TrustDomain>/<role>/<name> (see
// ParseSPIFFEID) of the configured trust domain, the role its path names:
// /user/<name> → user, /admin/<name> → admin, /agent/<id> → agent,
// /service/<name> → service. Everything else — other trust domains, other
// paths, deeper paths, non-canonical spellings, DN principals — is RoleNone:
// authenticated, but allowed nothing (the HttpReceiveClientCertificate
// "denied by mapper" case). ferry deliberately does not default unknown
// principals to user: a certificate from the deployment's CA for a
// purpose ferry does not know must not be able to create jobs.
func (m RoleMap) RoleOf(principal string) Role {
	if r, ok := m.Overrides[principal]; ok {
		return r
	}
	id, ok := m.ownID(principal)
	if !ok {
		return RoleNone
	}
	return id.Role
}

// AgentID returns the agent ID of spiffe://<TrustDomain>/agent/<id>. It
// reads the SPIFFE path only: a principal given the agent role by an override
// has no agent ID.
func (m RoleMap) AgentID(principal string) (string, bool) {
	return m.nameFor(principal, RoleAgent)
}

// ServiceName returns the name of spiffe://<TrustDomain>/service/<name>
// (e.g. "coordinator", "certvault"): a server that must recognise one
// particular component (certvault trusting the coordinator's On-Behalf-Of)
// checks this rather than the service role alone.
func (m RoleMap) ServiceName(principal string) (string, bool) {
	return m.nameFor(principal, RoleService)
}

func (m RoleMap) nameFor(principal string, role Role) (string, bool) {
	id, ok := m.ownID(principal)
	if !ok || id.Role != role {
		return "", false
	}
	return id.Name, true
}

func (m RoleMap) ownID(principal string) (SPIFFEID, bool) {
	if m.TrustDomain == "" {
		return SPIFFEID{}, false
	}
	id, err := ParseSPIFFEID(principal)
	if err != nil || id.TrustDomain != m.TrustDomain {
		return SPIFFEID{}, false
	}
	return id, true
}

// Validate reports every problem of the configuration at once: an invalid
// trust domain, empty override keys, override values that are not a role.
func (m RoleMap) Validate() error {
	var errs []error
	if m.TrustDomain != "" {
		if err := ValidateTrustDomain(m.TrustDomain); err != nil {
			errs = append(errs, fmt.Errorf("roles: %w", err))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(m.Overrides)) {
		r := m.Overrides[p]
		if p == "" {
			errs = append(errs, job.Errorf(job.E_INVALIDARG, "roles: an override has an empty principal"))
		}
		if r != RoleNone && !r.Issuable() {
			errs = append(errs, job.Errorf(job.E_INVALIDARG, "roles: override for %q has role %q; roles are user, admin, agent, service, or \"\" (none)", p, string(r)))
		}
	}
	return errors.Join(errs...)
}
