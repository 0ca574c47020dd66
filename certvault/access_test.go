package certvault

import (
	"fmt"
	"strings"
	"testing"
)

// TestResolveMatrix is the access table of the package documentation, cell
// by cell: who may read (r) and change (w) which location.
func TestResolveMatrix(t *testing.T) {
	callers := map[string]Caller{"user": alice, "admin": admin, "agent": agent, "service": service}
	// Per location, per role: "rw", "r", or "".
	want := map[Location]map[string]string{
		CurrentUser:             {"user": "rw", "admin": "rw", "agent": "rw", "service": "rw"},
		LocalMachine:            {"user": "r", "admin": "rw", "agent": "r", "service": "r"},
		CurrentService:          {"user": "", "admin": "", "agent": "", "service": "rw"},
		Services:                {"user": "", "admin": "rw", "agent": "", "service": ""},
		Users:                   {"user": "", "admin": "rw", "agent": "", "service": ""},
		CurrentUserGroupPolicy:  {"user": "r", "admin": "rw", "agent": "", "service": ""},
		LocalMachineGroupPolicy: {"user": "r", "admin": "rw", "agent": "r", "service": "r"},
		LocalMachineEnterprise:  {"user": "r", "admin": "rw", "agent": "r", "service": "r"},
	}
	for loc, roles := range want {
		for role, rights := range roles {
			c := callers[role]
			name := "MY"
			if loc == Users || loc == Services {
				name = bob.Principal + `\my`
			}
			for _, o := range []op{opRead, opWrite} {
				allowed := strings.Contains(rights, map[op]string{opRead: "r", opWrite: "w"}[o])
				ref, v, err := resolve(c, loc, name, o)
				if !allowed {
					wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
					continue
				}
				if err != nil {
					t.Errorf("%s %s %v: %v", role, o, loc, err)
					continue
				}
				// Whose store it is.
				var wantRef storeRef
				switch loc {
				case CurrentUser, CurrentService:
					wantRef = storeRef{c.Principal, loc, "MY"}
				case Users:
					wantRef = storeRef{bob.Principal, CurrentUser, "MY"}
				case Services:
					wantRef = storeRef{bob.Principal, CurrentService, "MY"}
				default:
					wantRef = storeRef{"", loc, "MY"}
				}
				if ref != wantRef {
					t.Errorf("%s %s %v: store %+v, want %+v", role, o, loc, ref, wantRef)
				}
				if v.Location != loc || (loc == Users || loc == Services) != (v.Store == bob.Principal+`\MY`) {
					t.Errorf("%s %s %v: view %+v", role, o, loc, v)
				}
			}
		}
	}
}

func TestResolveRefusesBadCallers(t *testing.T) {
	for _, c := range []Caller{
		{},
		{Principal: "spiffe://ferry.test/user/x"},                      // no role
		{Principal: "spiffe://ferry.test/user/x", Role: "coordinator"}, // not a certvault role
		{Principal: "", Role: RoleAdmin},
		{Principal: "bad\nprincipal", Role: RoleUser},
		{Principal: strings.Repeat("p", MaxPrincipalLen+1), Role: RoleUser},
		{Principal: "\xff", Role: RoleUser},
	} {
		_, _, err := resolve(c, CurrentUser, "MY", opRead)
		wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
	}
}

// TestResolveOrder: location, then name, then access, as BITS checks them.
func TestResolveOrder(t *testing.T) {
	_, _, err := resolve(Caller{}, Location(8), "", opRead)
	wantCode(t, err, "E_NOTIMPL", hrNotImpl)
	_, _, err = resolve(Caller{}, LocalMachine, "", opWrite)
	wantCode(t, err, "RPC_X_NULL_REF_POINTER", hrNullRef)
	_, _, err = resolve(alice, LocalMachine, strings.Repeat("x", 256), opWrite)
	wantCode(t, err, "BG_E_STRING_TOO_LONG", hrTooLong)
	_, _, err = resolve(alice, LocalMachine, "MY", opWrite)
	wantCode(t, err, "E_ACCESSDENIED", hrAccessDenied)
}

func TestQualifiedNames(t *testing.T) {
	ok := map[string]storeRef{
		`spiffe://ferry.test/user/bob\my`:                   {bob.Principal, CurrentUser, "MY"},
		`x509:CN=Bob\, Jr,O=Example\Custom Store`:           {`x509:CN=Bob\, Jr,O=Example`, CurrentUser, "CUSTOM STORE"},
		fmt.Sprintf(`%s\%s`, "p", strings.Repeat("s", 253)): {"p", CurrentUser, strings.Repeat("S", 253)},
	}
	for name, want := range ok {
		ref, v, err := resolve(admin, Users, name, opRead)
		if err != nil || ref != want {
			t.Errorf("USERS %q: %+v, %v; want %+v", name, ref, err, want)
		}
		if !strings.HasSuffix(v.Store, `\`+want.Store) {
			t.Errorf("USERS %q: view %q", name, v.Store)
		}
	}
	for _, c := range []struct{ in, sym, hr string }{
		{"", "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"MY", "E_INVALIDARG", hrInvalidArg}, // no principal
		{`\MY`, "E_INVALIDARG", hrInvalidArg},
		{"p\x01\\MY", "E_INVALIDARG", hrInvalidArg},
		{`bob\`, "RPC_X_NULL_REF_POINTER", hrNullRef}, // no store
		{`bob\a/b`, "E_INVALIDARG", hrInvalidArg},
		{"p\\" + strings.Repeat("s", 254), "BG_E_STRING_TOO_LONG", hrTooLong}, // 256 in all
	} {
		_, _, err := resolve(admin, Services, c.in, opRead)
		wantCode(t, err, c.sym, c.hr)
	}
}
