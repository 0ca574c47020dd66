package identity

import (
	"fmt"
	"strings"

	"github.com/ferry-dev/ferry/job"
)

// Role is what a principal may do in ferry. Roles come from configuration
// (RoleMap): an explicit override, else the role segment of the principal's
// SPIFFE ID within the deployment's trust domain.
type Role string

// The roles. RoleNone (the zero value) means "authenticated, but the role
// mapper gives this principal no role": such a caller is denied everywhere
// except where a server explicitly lets any authenticated caller in (the
// session report).
const (
	RoleNone    Role = ""
	RoleUser    Role = "user"    // submits and owns jobs
	RoleAdmin   Role = "admin"   // manages shared stores and other users' jobs
	RoleAgent   Role = "agent"   // runs jobs; the only role certvault releases keys to
	RoleService Role = "service" // a ferry component (coordinator, certvault); see ServiceName
)

// Issuable reports whether r is a role the CA issues identities for (every
// role but RoleNone).
func (r Role) Issuable() bool {
	switch r {
	case RoleUser, RoleAdmin, RoleAgent, RoleService:
		return true
	}
	return false
}

func (r Role) String() string {
	if r == RoleNone {
		return "none"
	}
	return string(r)
}

// SPIFFEScheme is the URI scheme of ferry identities.
const SPIFFEScheme = "spiffe"

// MaxNameLen bounds an identity name (the last path segment of its SPIFFE ID).
const MaxNameLen = 64

// maxTrustDomainLen is the SPIFFE limit on a trust domain name.
const maxTrustDomainLen = 255

// ValidateName checks an identity name: 1 to 64 characters of [A-Za-z0-9._-],
// not starting with a dot. Such a name is a safe single path segment and a
// safe file name (never "." or "..", never a separator). Errors are
// E_INVALIDARG.
func ValidateName(name string) error {
	if name == "" {
		return job.Errorf(job.E_INVALIDARG, "identity name is empty")
	}
	if len(name) > MaxNameLen {
		return job.Errorf(job.E_INVALIDARG, "identity name %.20q… is %d characters long; at most %d are allowed", name, len(name), MaxNameLen)
	}
	if name[0] == '.' {
		return job.Errorf(job.E_INVALIDARG, "identity name %q starts with a dot", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isNameChar(c) {
			return job.Errorf(job.E_INVALIDARG, "identity name %q has %q at byte %d; only letters, digits, '.', '_' and '-' are allowed", name, rune(c), i)
		}
	}
	return nil
}

func isNameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}

// ValidateTrustDomain checks a SPIFFE trust domain name as ferry accepts it:
// 1 to 255 characters of lowercase letters, digits, '.', '_' and '-',
// starting with a letter or digit (e.g. "ferry.internal", "example.org").
// The SPIFFE specification allows only lowercase; ferry refuses rather than
// folds case, so that a principal has exactly one spelling. Errors are
// E_INVALIDARG.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return job.Errorf(job.E_INVALIDARG, "trust domain is empty")
	}
	if len(td) > maxTrustDomainLen {
		return job.Errorf(job.E_INVALIDARG, "trust domain is %d characters long; at most %d are allowed", len(td), maxTrustDomainLen)
	}
	if strings.HasPrefix(td, SPIFFEScheme+"://") {
		return job.Errorf(job.E_INVALIDARG, "trust domain %q must be given without the spiffe:// scheme", td)
	}
	if c := td[0]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
		return job.Errorf(job.E_INVALIDARG, "trust domain %q must start with a lowercase letter or digit", td)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return job.Errorf(job.E_INVALIDARG, "trust domain %q has %q at byte %d; only lowercase letters, digits, '.', '_' and '-' are allowed", td, rune(c), i)
		}
	}
	return nil
}

// SPIFFEID is a ferry identity: spiffe://<TrustDomain>/<Role>/<Name>.
type SPIFFEID struct {
	TrustDomain string
	Role        Role
	Name        string
}

// String returns the canonical URI form.
func (id SPIFFEID) String() string {
	return SPIFFEScheme + "://" + id.TrustDomain + "/" + string(id.Role) + "/" + id.Name
}

// Validate checks every part of id.
func (id SPIFFEID) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if !id.Role.Issuable() {
		return job.Errorf(job.E_INVALIDARG, "role %q is not one of user, admin, agent, service", string(id.Role))
	}
	return ValidateName(id.Name)
}

// ParseSPIFFEID parses a ferry identity in its canonical form only:
// "spiffe://" + trust domain + "/" + role + "/" + name, each part valid, and
// nothing else (no port, user info, query, fragment, percent-encoding, empty
// or extra segments). Canonical-only parsing means ParseSPIFFEID(s).String()
// == s whenever it succeeds, so two spellings never name one principal.
func ParseSPIFFEID(s string) (SPIFFEID, error) {
	rest, ok := strings.CutPrefix(s, SPIFFEScheme+"://")
	if !ok {
		return SPIFFEID{}, job.Errorf(job.E_INVALIDARG, "%q is not a spiffe:// URI", s)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return SPIFFEID{}, job.Errorf(job.E_INVALIDARG, "%q has no path; ferry identities are spiffe://<trust-domain>/<role>/<name>", s)
	}
	role, name, ok := strings.Cut(path, "/")
	if !ok {
		return SPIFFEID{}, job.Errorf(job.E_INVALIDARG, "%q has one path segment; ferry identities are spiffe://<trust-domain>/<role>/<name>", s)
	}
	id := SPIFFEID{TrustDomain: td, Role: Role(role), Name: name}
	if err := id.Validate(); err != nil {
		return SPIFFEID{}, fmt.Errorf("%q: %w", s, err)
	}
	return id, nil
}
