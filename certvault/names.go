package certvault

import (
	"encoding/hex"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/job"
)

// Location is a BITS store location (BG_CERT_STORE_LOCATION). Its values are
// those of the enum, 0..7; see the package documentation for what each means
// in ferry.
type Location uint8

// The eight store locations of BG_CERT_STORE_LOCATION, with their values.
const (
	CurrentUser             Location = 0
	LocalMachine            Location = 1
	CurrentService          Location = 2
	Services                Location = 3
	Users                   Location = 4
	CurrentUserGroupPolicy  Location = 5
	LocalMachineGroupPolicy Location = 6
	LocalMachineEnterprise  Location = 7
)

// locationPrefix is the prefix of the enum's value names; ParseLocation
// accepts names with or without it.
const locationPrefix = "BG_CERT_STORE_LOCATION_"

var locationNames = [...]string{
	CurrentUser:             "CURRENT_USER",
	LocalMachine:            "LOCAL_MACHINE",
	CurrentService:          "CURRENT_SERVICE",
	Services:                "SERVICES",
	Users:                   "USERS",
	CurrentUserGroupPolicy:  "CURRENT_USER_GROUP_POLICY",
	LocalMachineGroupPolicy: "LOCAL_MACHINE_GROUP_POLICY",
	LocalMachineEnterprise:  "LOCAL_MACHINE_ENTERPRISE",
}

// Valid reports whether l is one of the eight locations.
func (l Location) Valid() bool { return int(l) < len(locationNames) }

// String returns the location's name without the BG_CERT_STORE_LOCATION_
// prefix ("CURRENT_USER"), or "Location(9)" for a value outside the enum.
func (l Location) String() string {
	if !l.Valid() {
		return "Location(" + strconv.Itoa(int(l)) + ")"
	}
	return locationNames[l]
}

// MarshalText encodes the location by name.
func (l Location) MarshalText() ([]byte, error) {
	if !l.Valid() {
		return nil, job.Errorf(job.E_NOTIMPL, "store location %d is not a BG_CERT_STORE_LOCATION value (0..7)", l)
	}
	return []byte(l.String()), nil
}

// UnmarshalText accepts what ParseLocation accepts.
func (l *Location) UnmarshalText(b []byte) error {
	loc, err := ParseLocation(string(b))
	if err != nil {
		return err
	}
	*l = loc
	return nil
}

// ParseLocation parses a store location given by name or by number, as the
// API and the CLI accept it: one of the eight BG_CERT_STORE_LOCATION names,
// case-insensitive, with or without the "BG_CERT_STORE_LOCATION_" prefix
// ("CURRENT_USER", "bg_cert_store_location_local_machine"), or its value as
// one decimal digit "0".."7". Anything else (empty, "8", "-1", "01", " 1",
// other names) is E_NOTIMPL, as BITS answers for a location outside the enum.
func ParseLocation(s string) (Location, error) {
	if len(s) == 1 && s[0] >= '0' && s[0] <= '7' {
		return Location(s[0] - '0'), nil
	}
	// Only ASCII can spell a name: strings.ToUpper maps some non-ASCII
	// letters (U+017F, long s) to ASCII ones, which must not make
	// "ſervices" a location.
	if isASCII(s) {
		name := strings.TrimPrefix(strings.ToUpper(s), locationPrefix)
		for i, n := range locationNames {
			if name == n {
				return Location(i), nil
			}
		}
	}
	return 0, job.Errorf(job.E_NOTIMPL, "store location %q is not a BG_CERT_STORE_LOCATION value: use one of %s or 0..7",
		truncate(s, 64), strings.Join(locationNames[:], ", "))
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// MaxNameUnits is the longest store name or subject name, in UTF-16 code
// units: BITS allows 256 characters including the terminating NUL.
const MaxNameUnits = 255

// Well-known store names. They exist, empty, in every location a caller may
// read; other (application-defined) stores come into being with their first
// import.
const (
	StoreMy   = "MY"
	StoreCA   = "CA"
	StoreRoot = "ROOT"
	StoreSPC  = "SPC"
)

// wellKnown reports whether canonical is one of the four system store names.
func wellKnown(canonical string) bool {
	switch canonical {
	case StoreMy, StoreCA, StoreRoot, StoreSPC:
		return true
	}
	return false
}

// ValidateStoreName checks a store name and returns its canonical form
// (upper case; store names are case-insensitive, so "my", "My" and "MY"
// name one store).
//
//   - empty: RPC_X_NULL_REF_POINTER (BITS: StoreName NULL);
//   - longer than 255 UTF-16 code units (BITS: 256 characters including the
//     terminator; characters outside the Basic Multilingual Plane count
//     twice, as in a Windows LPCWSTR): BG_E_STRING_TOO_LONG;
//   - not UTF-8, a character that is not printable (control and format
//     characters, non-ASCII spaces), '/', '\' (it separates the principal
//     from the store in USERS and SERVICES names), or a leading or trailing
//     space: E_INVALIDARG.
//
// Names are compared by Unicode simple case folding (strings.EqualFold),
// not after normalisation: a composed and a decomposed "É" are two names.
func ValidateStoreName(name string) (string, error) {
	if name == "" {
		return "", job.Errorf(job.RPC_X_NULL_REF_POINTER, "the store name is required")
	}
	if n := utf16Len(name); n > MaxNameUnits {
		return "", job.Errorf(job.BG_E_STRING_TOO_LONG, "the store name is %d characters long; at most %d are allowed", n, MaxNameUnits)
	}
	if err := checkNameChars("store name", name); err != nil {
		return "", err
	}
	canon := canonicalName(name)
	// Upper-casing keeps the length in UTF-16 units and printability for
	// every Unicode character; checking again makes that a guarantee rather
	// than an assumption about the tables.
	if utf16Len(canon) > MaxNameUnits || checkNameChars("store name", canon) != nil {
		return "", job.Errorf(job.E_INVALIDARG, "the store name %q has no valid upper-case form", truncate(name, 64))
	}
	return canon, nil
}

// checkNameChars refuses what no store name may contain.
func checkNameChars(what, name string) error {
	if !utf8.ValidString(name) {
		return job.Errorf(job.E_INVALIDARG, "the %s is not valid UTF-8", what)
	}
	if name[0] == ' ' || name[len(name)-1] == ' ' {
		return job.Errorf(job.E_INVALIDARG, "the %s %q begins or ends with a space", what, truncate(name, 64))
	}
	for _, r := range name {
		switch {
		case r == '/' || r == '\\':
			return job.Errorf(job.E_INVALIDARG, "the %s %q contains %q, which store names may not contain", what, truncate(name, 64), r)
		case !unicode.IsPrint(r):
			return job.Errorf(job.E_INVALIDARG, "the %s %q contains the unprintable character %U", what, truncate(name, 64), r)
		}
	}
	return nil
}

// canonicalName upper-cases each character through its lower-case form,
// so that the characters that fold together (K, k and the Kelvin sign; S, s
// and the long s; Σ, σ and ς) share one canonical form. A character whose
// upper case does not fold with it (the Turkish dotless ı and dotted İ) is
// kept: two names are the same store exactly when strings.EqualFold says
// so (Unicode simple case folding).
func canonicalName(name string) string {
	return strings.Map(func(r rune) rune {
		if u := unicode.ToUpper(unicode.ToLower(r)); u == r || equalFoldRune(u, r) {
			return u
		}
		return r
	}, name)
}

// equalFoldRune reports whether a and b are in one simple-folding orbit.
func equalFoldRune(a, b rune) bool {
	for r := unicode.SimpleFold(a); r != a; r = unicode.SimpleFold(r) {
		if r == b {
			return true
		}
	}
	return false
}

// utf16Len is the length of s in UTF-16 code units (invalid bytes count one).
func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		n += max(utf16.RuneLen(r), 1)
	}
	return n
}

// ParseThumbprint parses a SHA-1 certificate thumbprint written in hex, as
// tools print it: "1f2e…", "1F:2E:…" (openssl), "1f 2e …" (Windows), with
// any mix of ':' and space separators (and the invisible U+200E that the
// Windows certificate dialog puts in front of a copied thumbprint). The
// codes are those of SetClientCertificateByID:
//
//   - empty (or only separators and spaces): RPC_X_NULL_REF_POINTER;
//   - characters other than hex digits and separators, or an odd number of
//     hex digits: E_INVALIDARG (the text is not a byte string at all);
//   - a well-formed byte string that is not 20 bytes long:
//     RPC_X_BAD_STUB_DATA.
func ParseThumbprint(s string) ([20]byte, error) {
	var out [20]byte
	digits := make([]byte, 0, 40)
	for i, r := range s {
		switch {
		case r == ':' || r == ' ' || r == '\t':
		case r == '\u200e' || r == '\ufeff':
		case r < utf8.RuneSelf && isHex(byte(r)):
			if len(digits) == 2*len(out)+2 {
				// Long enough to be wrong; count the rest without keeping it.
				return out, badThumbprintLength(s[i:], len(digits))
			}
			digits = append(digits, byte(r))
		default:
			return out, job.Errorf(job.E_INVALIDARG, "the thumbprint contains %q: write it in hex, optionally separated by ':' or spaces", r)
		}
	}
	switch {
	case len(digits) == 0:
		return out, job.Errorf(job.RPC_X_NULL_REF_POINTER, "the certificate thumbprint is required")
	case len(digits)%2 != 0:
		return out, job.Errorf(job.E_INVALIDARG, "the thumbprint has an odd number (%d) of hex digits", len(digits))
	case len(digits) != 2*len(out):
		return out, job.Errorf(job.RPC_X_BAD_STUB_DATA, "the thumbprint is %d bytes long; a SHA-1 thumbprint is exactly 20 bytes", len(digits)/2)
	}
	if _, err := hex.Decode(out[:], digits); err != nil {
		return [20]byte{}, job.Errorf(job.E_INVALIDARG, "the thumbprint is not hex: %v", err)
	}
	return out, nil
}

// badThumbprintLength finishes parsing a thumbprint that is already too
// long, to tell malformed text (E_INVALIDARG) from a wrong length.
func badThumbprintLength(rest string, n int) error {
	for _, r := range rest {
		switch {
		case r == ':' || r == ' ' || r == '\t' || r == '\u200e' || r == '\ufeff':
		case r < utf8.RuneSelf && isHex(byte(r)):
			n++
		default:
			return job.Errorf(job.E_INVALIDARG, "the thumbprint contains %q: write it in hex, optionally separated by ':' or spaces", r)
		}
	}
	if n%2 != 0 {
		return job.Errorf(job.E_INVALIDARG, "the thumbprint has an odd number (%d) of hex digits", n)
	}
	return job.Errorf(job.RPC_X_BAD_STUB_DATA, "the thumbprint is %d bytes long; a SHA-1 thumbprint is exactly 20 bytes", n/2)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
