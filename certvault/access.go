package certvault

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/job"
)

// Roles a Caller can have. The identity layer maps verified client
// certificates to a principal and one of these; certvault only reads them.
const (
	RoleAdmin   = "admin"
	RoleUser    = "user"
	RoleAgent   = "agent"
	RoleService = "service"
)

// Caller is who asks: the principal from the caller's verified certificate
// (spiffe://…/user/alice, x509:CN=…) and its role. A Caller with an empty
// principal, an unknown role or an unprintable principal is refused every
// operation with E_ACCESSDENIED (fail closed).
type Caller struct {
	Principal string
	Role      string
}

// MaxPrincipalLen bounds a principal, in bytes. It keeps KV keys well within
// NATS's subject limit.
const MaxPrincipalLen = 1024

func (c Caller) check() error {
	switch c.Role {
	case RoleAdmin, RoleUser, RoleAgent, RoleService:
	default:
		return job.Errorf(job.E_ACCESSDENIED, "the caller has no certvault role")
	}
	if err := checkPrincipal(c.Principal); err != nil {
		return job.Errorf(job.E_ACCESSDENIED, "the caller has no usable principal: %s", err.(*job.Error).Detail)
	}
	return nil
}

// checkPrincipal accepts a non-empty, printable UTF-8 principal of at most
// MaxPrincipalLen bytes.
func checkPrincipal(p string) error {
	switch {
	case p == "":
		return job.Errorf(job.RPC_X_NULL_REF_POINTER, "the principal is empty")
	case len(p) > MaxPrincipalLen:
		return job.Errorf(job.BG_E_STRING_TOO_LONG, "the principal is longer than %d bytes", MaxPrincipalLen)
	case !utf8.ValidString(p):
		return job.Errorf(job.E_INVALIDARG, "the principal is not valid UTF-8")
	}
	for _, r := range p {
		if !unicode.IsPrint(r) {
			return job.Errorf(job.E_INVALIDARG, "the principal contains the unprintable character %U", r)
		}
	}
	return nil
}

// op is what a caller wants to do with a store.
type op int

const (
	opRead  op = iota // List, Lookup, LookupBySubject; a job's use of a certificate
	opWrite           // Import, Remove
)

// storeRef is a store as stored: whose (scope: a principal, or "" for the
// shared locations), which location, which name (canonical). Every location a
// caller names resolves to one storeRef; USERS and SERVICES resolve to
// another principal's CURRENT_USER and CURRENT_SERVICE stores.
type storeRef struct {
	Scope    string
	Location Location
	Store    string
}

// view is how the caller named the store, for the answers it gets back.
type view struct {
	Location Location
	Store    string // canonical, "<principal>\<STORE>" for USERS and SERVICES
}

// resolve checks that caller may do o on the store named (loc, name) and
// returns the store's identity. The checks run in BITS order: the location
// (E_NOTIMPL), the name (RPC_X_NULL_REF_POINTER, BG_E_STRING_TOO_LONG,
// E_INVALIDARG), then the caller's right to the location (E_ACCESSDENIED).
// Whether the store exists is the caller's next question.
//
// The rules (docs/certvault.md has the table):
//
//	CURRENT_USER (0)               the caller's own stores; any role reads and writes them
//	LOCAL_MACHINE (1)              shared; every role reads, admins write
//	CURRENT_SERVICE (2)            the calling service's own stores; role service only
//	SERVICES (3)                   "<principal>\<store>": that principal's CURRENT_SERVICE store; admins only
//	USERS (4)                      "<principal>\<store>": that principal's CURRENT_USER store; admins only
//	CURRENT_USER_GROUP_POLICY (5)  shared, policy for users; users and admins read, admins write
//	LOCAL_MACHINE_GROUP_POLICY (6) shared, machine policy; every role reads, admins write
//	LOCAL_MACHINE_ENTERPRISE (7)   shared, enterprise-wide; every role reads, admins write
func resolve(caller Caller, loc Location, name string, o op) (storeRef, view, error) {
	if !loc.Valid() {
		return storeRef{}, view{}, job.Errorf(job.E_NOTIMPL, "store location %d is not a BG_CERT_STORE_LOCATION value (0..7)", loc)
	}
	var (
		owner, store string
		err          error
	)
	if loc == Users || loc == Services {
		owner, store, err = splitQualified(loc, name)
	} else {
		store, err = ValidateStoreName(name)
	}
	if err != nil {
		return storeRef{}, view{}, err
	}
	if err := caller.check(); err != nil {
		return storeRef{}, view{}, err
	}
	deny := func(why string) (storeRef, view, error) {
		return storeRef{}, view{}, job.Errorf(job.E_ACCESSDENIED, "%s may not %s stores in %s: %s",
			caller.Role, o, loc, why)
	}
	admin := caller.Role == RoleAdmin
	v := view{Location: loc, Store: store}
	switch loc {
	case CurrentUser:
		return storeRef{caller.Principal, CurrentUser, store}, v, nil
	case CurrentService:
		if caller.Role != RoleService {
			return deny("CURRENT_SERVICE holds the stores of the calling service identity")
		}
		return storeRef{caller.Principal, CurrentService, store}, v, nil
	case Users, Services:
		if !admin {
			return deny("it addresses other principals' stores and is for admins")
		}
		target := CurrentUser
		if loc == Services {
			target = CurrentService
		}
		v.Store = owner + `\` + store
		return storeRef{owner, target, store}, v, nil
	case CurrentUserGroupPolicy:
		if o == opWrite && !admin {
			return deny("group policy stores are managed by admins")
		}
		if o == opRead && caller.Role != RoleUser && !admin {
			return deny("it holds policy for users")
		}
	default: // LocalMachine, LocalMachineGroupPolicy, LocalMachineEnterprise
		if o == opWrite && !admin {
			return deny("shared stores are managed by admins")
		}
	}
	return storeRef{"", loc, store}, v, nil
}

func (o op) String() string {
	if o == opWrite {
		return "change"
	}
	return "read"
}

// splitQualified splits a USERS or SERVICES store name "<principal>\<store>"
// at its last backslash. The whole name obeys the length limit of store
// names; the store part is a store name; the principal part is any
// non-empty printable principal.
func splitQualified(loc Location, name string) (owner, store string, err error) {
	if name == "" {
		return "", "", job.Errorf(job.RPC_X_NULL_REF_POINTER, "the store name is required")
	}
	if n := utf16Len(name); n > MaxNameUnits {
		return "", "", job.Errorf(job.BG_E_STRING_TOO_LONG, "the store name is %d characters long; at most %d are allowed", n, MaxNameUnits)
	}
	i := strings.LastIndexByte(name, '\\')
	if i < 0 {
		return "", "", job.Errorf(job.E_INVALIDARG, `a %s store is named "<principal>\<store>", as in "spiffe://example.org/user/alice\MY"`, loc)
	}
	owner = name[:i]
	if err := checkPrincipal(owner); err != nil {
		e := err.(*job.Error)
		return "", "", job.Errorf(job.E_INVALIDARG, "the principal part of the %s store name: %s", loc, e.Detail)
	}
	store, err = ValidateStoreName(name[i+1:])
	if err != nil {
		return "", "", err
	}
	return owner, store, nil
}
