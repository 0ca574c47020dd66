package certvault

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/job"
)

// SubjectName is a parsed BITS subject name (SetClientCertificateByName):
// one or more adjacent RDN values, comma-separated, without attribute names,
// in the certificate's encoding order — the reverse of the usual display
// order. For a certificate shown as "CN=alice,OU=Ops,O=Example" the full
// name is "Example, Ops, alice", and "alice", "Ops, alice" and
// "Example, Ops" are names of it too.
type SubjectName struct {
	parts []string // trimmed, non-empty
}

// ParseSubjectName checks a subject name as SetClientCertificateByName does:
// empty is RPC_X_NULL_REF_POINTER, longer than 255 UTF-16 code units is
// BG_E_STRING_TOO_LONG; text that is not UTF-8, has unprintable characters
// or an empty part (",alice", "a,,b") is E_INVALIDARG.
func ParseSubjectName(s string) (SubjectName, error) {
	if strings.TrimSpace(s) == "" {
		return SubjectName{}, job.Errorf(job.RPC_X_NULL_REF_POINTER, "the subject name is required")
	}
	if n := utf16Len(s); n > MaxNameUnits {
		return SubjectName{}, job.Errorf(job.BG_E_STRING_TOO_LONG, "the subject name is %d characters long; at most %d are allowed", n, MaxNameUnits)
	}
	if !utf8.ValidString(s) {
		return SubjectName{}, job.Errorf(job.E_INVALIDARG, "the subject name is not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return SubjectName{}, job.Errorf(job.E_INVALIDARG, "the subject name contains the unprintable character %U", r)
		}
	}
	parts := splitValues(s)
	for _, p := range parts {
		if p == "" {
			return SubjectName{}, job.Errorf(job.E_INVALIDARG, "the subject name %q has an empty part: give RDN values separated by commas, as in \"Example, Ops, alice\"", truncate(s, 64))
		}
	}
	return SubjectName{parts: parts}, nil
}

// String is the name in its normal form: parts joined by ", ".
func (n SubjectName) String() string { return strings.Join(n.parts, ", ") }

// Matches reports whether the name designates c, by this rule — BITS's,
// made exact:
//
//	Take the values of c's subject RDNs in encoding order (the values of a
//	multi-valued RDN joined by " + "). The name matches if its parts equal
//	the parts of a run of adjacent values, comparing case-insensitively
//	(Unicode simple folding) after trimming spaces around each comma.
//
// Values are split at commas too, so "Example, Inc." as one organisation
// value is matched by the name "Example, Inc., alice". A name never matches
// part of a value: BITS's substring search would let "ali" match "alice"
// and "Ops" match "DevOps", which is how the wrong certificate gets sent.
func (n SubjectName) Matches(c *x509.Certificate) bool {
	if len(n.parts) == 0 {
		return false
	}
	values := SubjectValues(c)
	for start := range values {
		if n.matchesFrom(values[start:]) {
			return true
		}
	}
	return false
}

// matchesFrom reports whether the name's parts are exactly the parts of
// values[0:k] for some k.
func (n SubjectName) matchesFrom(values []string) bool {
	want := n.parts
	for _, v := range values {
		vp := splitValues(v)
		if len(vp) > len(want) {
			return false
		}
		for i, p := range vp {
			if !strings.EqualFold(p, want[i]) {
				return false
			}
		}
		want = want[len(vp):]
		if len(want) == 0 {
			return true
		}
	}
	return false
}

// splitValues splits at commas and trims spaces.
func splitValues(s string) []string {
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

// SubjectValues returns the values of c's subject RDNs in encoding order,
// which is the BITS form of its subject name ("Example, Ops, alice" when
// joined with ", ").
func SubjectValues(c *x509.Certificate) []string {
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(c.RawSubject, &rdns); err != nil || len(rest) > 0 {
		return nil
	}
	out := make([]string, 0, len(rdns))
	for _, rdn := range rdns {
		vals := make([]string, 0, len(rdn))
		for _, atv := range rdn {
			vals = append(vals, fmt.Sprint(atv.Value))
		}
		out = append(out, strings.Join(vals, " + "))
	}
	return out
}
