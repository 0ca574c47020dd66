package download

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// contentRange is a parsed Content-Range header (RFC 9110 §14.4).
type contentRange struct {
	First, Last int64 // inclusive; both -1 for an unsatisfied range ("bytes */N")
	Total       int64 // complete length; -1 when the server sent "*"
}

func (c contentRange) unsatisfied() bool { return c.First < 0 }

// String formats c the way a server sends it.
func (c contentRange) String() string {
	total := "*"
	if c.Total >= 0 {
		total = strconv.FormatInt(c.Total, 10)
	}
	if c.unsatisfied() {
		return "bytes */" + total
	}
	return fmt.Sprintf("bytes %d-%d/%s", c.First, c.Last, total)
}

var errBadContentRange = errors.New("malformed Content-Range")

// parseContentRange parses "bytes first-last/total", "bytes first-last/*"
// and "bytes */total". It is strict about numbers (decimal digits only, no
// sign, no overflow, first <= last < total) and lenient about the separator
// after the unit (one or more spaces, or the non-standard "=").
func parseContentRange(s string) (contentRange, error) {
	bad := contentRange{First: -1, Last: -1, Total: -1}
	s = strings.Trim(s, " \t")
	const unit = "bytes"
	if len(s) < len(unit)+1 || !strings.EqualFold(s[:len(unit)], unit) {
		return bad, errBadContentRange
	}
	s = s[len(unit):]
	switch {
	case s[0] == '=':
		s = s[1:]
	case s[0] == ' ':
		s = strings.TrimLeft(s, " ")
	default:
		return bad, errBadContentRange
	}
	rng, total, ok := strings.Cut(s, "/")
	if !ok {
		return bad, errBadContentRange
	}
	cr := contentRange{First: -1, Last: -1, Total: -1}
	if total != "*" {
		n, ok := parseDigits(total)
		if !ok {
			return bad, errBadContentRange
		}
		cr.Total = n
	}
	if rng == "*" {
		if cr.Total < 0 { // "bytes */*" says nothing
			return bad, errBadContentRange
		}
		return cr, nil
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return bad, errBadContentRange
	}
	f, ok1 := parseDigits(first)
	l, ok2 := parseDigits(last)
	if !ok1 || !ok2 || f > l || (cr.Total >= 0 && l >= cr.Total) {
		return bad, errBadContentRange
	}
	cr.First, cr.Last = f, l
	return cr, nil
}

// parseDigits parses a non-empty run of ASCII digits into a non-negative
// int64; anything else (signs, spaces, overflow) is refused.
func parseDigits(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// MaxRetryAfter caps a server's Retry-After: a misconfigured or hostile
// server must not park a job for months. The job's own retry policy
// (MinimumRetryDelay, NoProgressTimeout) still applies on top.
const MaxRetryAfter = 24 * time.Hour

// parseRetryAfter parses a Retry-After value: delay-seconds or an HTTP-date.
// An HTTP-date is measured against the response's Date header when that
// parses (so clock skew between server and agent cancels out), else against
// now. Dates in the past give 0. The result is capped at MaxRetryAfter.
func parseRetryAfter(v, date string, now time.Time) (time.Duration, bool) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		for i := 0; i < len(v); i++ {
			if v[i] < '0' || v[i] > '9' {
				return 0, false
			}
		}
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter, true // too large (or beyond int64): capped
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	base := now
	if d, err := http.ParseTime(strings.Trim(date, " \t")); err == nil {
		base = d
	}
	d := t.Sub(base)
	switch {
	case d < 0:
		d = 0
	case d > MaxRetryAfter:
		d = MaxRetryAfter
	}
	return d, true
}
