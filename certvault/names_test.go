package certvault

import (
	"strings"
	"testing"
)

func TestParseLocation(t *testing.T) {
	valid := map[string]Location{
		"0": CurrentUser, "1": LocalMachine, "2": CurrentService, "3": Services,
		"4": Users, "5": CurrentUserGroupPolicy, "6": LocalMachineGroupPolicy, "7": LocalMachineEnterprise,
		"CURRENT_USER": CurrentUser, "current_user": CurrentUser, "Local_Machine": LocalMachine,
		"BG_CERT_STORE_LOCATION_CURRENT_SERVICE": CurrentService, "bg_cert_store_location_services": Services,
		"USERS": Users, "CURRENT_USER_GROUP_POLICY": CurrentUserGroupPolicy,
		"local_machine_group_policy": LocalMachineGroupPolicy, "LOCAL_MACHINE_ENTERPRISE": LocalMachineEnterprise,
	}
	for s, want := range valid {
		got, err := ParseLocation(s)
		if err != nil || got != want {
			t.Errorf("ParseLocation(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for l := range Location(8) {
		if got, err := ParseLocation(l.String()); err != nil || got != l {
			t.Errorf("ParseLocation(%v.String()) = %v, %v", l, got, err)
		}
	}
	for _, s := range []string{"", "8", "9", "-1", "01", "+1", " 1", "1 ", "0x1", "CURRENTUSER", "CURRENT USER",
		"BG_CERT_STORE_LOCATION_", "BG_CERT_STORE_LOCATION_8", "MACHINE", "ſervices", "ＵＳＥＲＳ",
		"BG_CERT_STORE_LOCATION_BG_CERT_STORE_LOCATION_USERS", "users\x00"} {
		_, err := ParseLocation(s)
		wantCode(t, err, "E_NOTIMPL", hrNotImpl)
	}
	if s := Location(9).String(); s != "Location(9)" {
		t.Errorf("Location(9).String() = %q", s)
	}
	if _, err := Location(8).MarshalText(); err == nil {
		t.Error("Location(8) marshals")
	}
}

func TestValidateStoreName(t *testing.T) {
	for in, want := range map[string]string{
		"MY": "MY", "my": "MY", "My": "MY", "ca": "CA", "Root": "ROOT", "spc": "SPC",
		"app store 1": "APP STORE 1", "Ünïcødé": "ÜNÏCØDÉ",
		"\u212a":                       "K", // Kelvin sign folds with K and k
		"ſ":                            "S", // long s folds with S and s
		"σς":                           "ΣΣ",
		"a:b_c-d.e":                    "A:B_C-D.E",
		strings.Repeat("a", 255):       strings.Repeat("A", 255),
		strings.Repeat("😀", 127) + "a": strings.Repeat("😀", 127) + "A", // 255 UTF-16 units
	} {
		got, err := ValidateStoreName(in)
		if err != nil || got != want {
			t.Errorf("ValidateStoreName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	cases := []struct {
		in, sym, hr string
	}{
		{"", "RPC_X_NULL_REF_POINTER", hrNullRef},
		{strings.Repeat("a", 256), "BG_E_STRING_TOO_LONG", hrTooLong},
		{strings.Repeat("😀", 128), "BG_E_STRING_TOO_LONG", hrTooLong}, // 128 runes, 256 units
		{strings.Repeat("/", 300), "BG_E_STRING_TOO_LONG", hrTooLong}, // length is checked first
		{"a/b", "E_INVALIDARG", hrInvalidArg},
		{`a\b`, "E_INVALIDARG", hrInvalidArg},
		{"a\x00b", "E_INVALIDARG", hrInvalidArg},
		{"a\tb", "E_INVALIDARG", hrInvalidArg},
		{"a\nb", "E_INVALIDARG", hrInvalidArg},
		{"a\u200bb", "E_INVALIDARG", hrInvalidArg}, // zero-width space (format)
		{"a\u00a0b", "E_INVALIDARG", hrInvalidArg}, // no-break space
		{"a\u202eb", "E_INVALIDARG", hrInvalidArg}, // right-to-left override
		{" MY", "E_INVALIDARG", hrInvalidArg},
		{"MY ", "E_INVALIDARG", hrInvalidArg},
		{" ", "E_INVALIDARG", hrInvalidArg},
		{"\xff", "E_INVALIDARG", hrInvalidArg},
	}
	for _, c := range cases {
		_, err := ValidateStoreName(c.in)
		wantCode(t, err, c.sym, c.hr)
	}
}

func TestParseThumbprint(t *testing.T) {
	const hex40 = "0123456789abcdef0123456789abcdef01234567"
	want := [20]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67}
	for _, s := range []string{
		hex40,
		strings.ToUpper(hex40),
		"01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67",
		"01 23 45 67 89 ab cd ef 01 23 45 67 89 ab cd ef 01 23 45 67",
		"\u200e01 23 45 67 89 ab cd ef 01 23 45 67 89 ab cd ef 01 23 45 67", // copied from the Windows dialog
		"  " + hex40 + "\t",
	} {
		got, err := ParseThumbprint(s)
		if err != nil || got != want {
			t.Errorf("ParseThumbprint(%q) = %x, %v", s, got, err)
		}
	}
	cases := []struct {
		in, sym, hr string
	}{
		{"", "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"   ", "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"::", "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"xyz", "E_INVALIDARG", hrInvalidArg},
		{"0x" + hex40[2:], "E_INVALIDARG", hrInvalidArg},
		{hex40[:39] + "g", "E_INVALIDARG", hrInvalidArg},
		{hex40 + "-", "E_INVALIDARG", hrInvalidArg},
		{hex40[:39], "E_INVALIDARG", hrInvalidArg},                              // odd number of digits
		{hex40 + "0", "E_INVALIDARG", hrInvalidArg},                             // odd, and too long
		{hex40 + strings.Repeat("00", 100) + "z", "E_INVALIDARG", hrInvalidArg}, // junk after a long run
		{hex40[:38], "RPC_X_BAD_STUB_DATA", hrBadStub},                          // 19 bytes
		{hex40 + "00", "RPC_X_BAD_STUB_DATA", hrBadStub},                        // 21 bytes
		{strings.Repeat("ab", 32), "RPC_X_BAD_STUB_DATA", hrBadStub},            // a SHA-256 thumbprint
		{"ab", "RPC_X_BAD_STUB_DATA", hrBadStub},
		{strings.Repeat("ab:", 10000), "RPC_X_BAD_STUB_DATA", hrBadStub},
	}
	for _, c := range cases {
		_, err := ParseThumbprint(c.in)
		wantCode(t, err, c.sym, c.hr)
	}
}

func TestSubjectName(t *testing.T) {
	p := newPKI(t)
	c, _ := p.issue(t, leafOpts{subject: subjectOf("Example, Inc.", []string{"Ops"}, "alice")})
	if got := strings.Join(SubjectValues(c), ", "); got != "Example, Inc., Ops, alice" {
		t.Fatalf("SubjectValues = %q", got)
	}
	for name, want := range map[string]bool{
		"alice": true, "ALICE": true, "Ops, alice": true, " ops ,alice ": true,
		"Example, Inc., Ops, alice": true, "Example, Inc.": true, "Inc., Ops": false, // a part of a value
		"ali": false, "Op": false, "Example, alice": false, "alice, Ops": false, "Ops, alice, x": false,
		"Example": false,
	} {
		n, err := ParseSubjectName(name)
		if err != nil {
			t.Fatalf("ParseSubjectName(%q): %v", name, err)
		}
		if got := n.Matches(c); got != want {
			t.Errorf("%q matches %v: %v, want %v", name, SubjectValues(c), got, want)
		}
	}
	for _, c := range []struct{ in, sym, hr string }{
		{"", "RPC_X_NULL_REF_POINTER", hrNullRef},
		{"  ", "RPC_X_NULL_REF_POINTER", hrNullRef},
		{strings.Repeat("a", 256), "BG_E_STRING_TOO_LONG", hrTooLong},
		{"a,,b", "E_INVALIDARG", hrInvalidArg},
		{",alice", "E_INVALIDARG", hrInvalidArg},
		{"alice\n", "E_INVALIDARG", hrInvalidArg},
		{"\xffalice", "E_INVALIDARG", hrInvalidArg},
	} {
		_, err := ParseSubjectName(c.in)
		wantCode(t, err, c.sym, c.hr)
	}
}
