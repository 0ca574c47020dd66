package download

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    contentRange
		wantErr bool
	}{
		{in: "bytes 0-499/1234", want: contentRange{0, 499, 1234}},
		{in: "bytes 500-1233/1234", want: contentRange{500, 1233, 1234}},
		{in: "bytes 500-999/*", want: contentRange{500, 999, -1}},
		{in: "bytes */1234", want: contentRange{-1, -1, 1234}},
		{in: "BYTES 1-1/2", want: contentRange{1, 1, 2}},
		{in: "  bytes  7-8/9 ", want: contentRange{7, 8, 9}},
		{in: "bytes=7-8/9", want: contentRange{7, 8, 9}},
		{in: "bytes 0-9223372036854775806/9223372036854775807", want: contentRange{0, 9223372036854775806, 9223372036854775807}},
		{in: "", wantErr: true},
		{in: "bytes", wantErr: true},
		{in: "bytes ", wantErr: true},
		{in: "items 0-1/2", wantErr: true},
		{in: "bytes0-1/2", wantErr: true},
		{in: "bytes 1-0/2", wantErr: true},
		{in: "bytes 0-2/2", wantErr: true},
		{in: "bytes -1-2/5", wantErr: true},
		{in: "bytes +1-2/5", wantErr: true},
		{in: "bytes 1-+2/5", wantErr: true},
		{in: "bytes 1 -2/5", wantErr: true},
		{in: "bytes 1-2/ 5", wantErr: true},
		{in: "bytes */*", wantErr: true},
		{in: "bytes 1-2", wantErr: true},
		{in: "bytes 0-1/9223372036854775808", wantErr: true},
		{in: "bytes 0-99999999999999999999/*", wantErr: true},
		{in: "bytes 0x1-2/3", wantErr: true},
		{in: "bytes 1-2/3/4", wantErr: true},
	} {
		got, err := parseContentRange(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && got != tc.want) {
			t.Errorf("parseContentRange(%q) = %+v, %v; want %+v, err %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-499/1234", "bytes 500-999/*", "bytes */1234", "bytes=1-2/3", "bytes 1-0/2", "bytes -", "bytes 9223372036854775807-9223372036854775807/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := parseContentRange(s)
		if err != nil {
			return
		}
		if cr.Total < -1 {
			t.Fatalf("%q: total %d", s, cr.Total)
		}
		if cr.unsatisfied() {
			if cr.Last != -1 || cr.Total < 0 {
				t.Fatalf("%q: unsatisfied range %+v", s, cr)
			}
		} else if cr.First < 0 || cr.First > cr.Last || (cr.Total >= 0 && cr.Last >= cr.Total) {
			t.Fatalf("%q: invariant broken: %+v", s, cr)
		}
		// The canonical form parses back to the same value.
		back, err := parseContentRange(cr.String())
		if err != nil || back != cr {
			t.Fatalf("%q: round trip %q gives %+v, %v", s, cr.String(), back, err)
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v, date string
		want    time.Duration
		ok      bool
	}{
		{"7", "", 7 * time.Second, true},
		{" 120 ", "", 2 * time.Minute, true},
		{"0", "", 0, true},
		{"999999999", "", MaxRetryAfter, true},
		{"99999999999999999999999", "", MaxRetryAfter, true},
		{"Sun, 01 Mar 2026 12:05:00 GMT", "", 5 * time.Minute, true},
		{"Sun, 01 Mar 2026 11:00:00 GMT", "", 0, true},
		// Measured against the server's own Date: skew cancels out.
		{"Sun, 06 Nov 1994 08:51:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", 2 * time.Minute, true},
		{"Sunday, 06-Nov-94 08:49:37 GMT", "", 0, true},
		{"Fri, 01 Mar 2030 12:00:00 GMT", "", MaxRetryAfter, true},
		{"", "", 0, false},
		{"-5", "", 0, false},
		{"1.5", "", 0, false},
		{"7s", "", 0, false},
		{"tomorrow", "", 0, false},
	} {
		got, ok := parseRetryAfter(tc.v, tc.date, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q, %q) = %v, %v; want %v, %v", tc.v, tc.date, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"7", "0", "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "-1", "99999999999999999999"} {
		f.Add(s, "Sun, 06 Nov 1994 08:40:00 GMT")
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v, date string) {
		d, ok := parseRetryAfter(v, date, now)
		if d < 0 || d > MaxRetryAfter || (!ok && d != 0) {
			t.Fatalf("parseRetryAfter(%q, %q) = %v, %v", v, date, d, ok)
		}
		if n, err := strconv.ParseUint(strings.Trim(v, " \t"), 10, 32); err == nil && ok && n < uint64(MaxRetryAfter/time.Second) && d != time.Duration(n)*time.Second {
			t.Fatalf("delay-seconds %q gave %v", v, d)
		}
	})
}
