package notify

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSignature(t *testing.T) {
	secret := testSecret
	body := []byte(`{"id":"e1","seq":7}`)
	at := time.Unix(1_800_000_000, 0)
	h := Sign(secret, at, body)
	if !strings.HasPrefix(h, "t=1800000000,v1=") || len(h) != len("t=1800000000,v1=")+64 {
		t.Fatalf("Sign = %q", h)
	}
	good := strings.TrimPrefix(h, "t=1800000000,")
	other := "v1=" + hex.EncodeToString(mac([]byte("another secret, 32 bytes long..."), "1800000000", body))

	for _, tc := range []struct {
		name      string
		secret    []byte
		header    string
		body      string
		now       time.Time
		tolerance time.Duration
		want      error
	}{
		{"valid", secret, h, string(body), at, 0, nil},
		{"valid within tolerance (receiver ahead)", secret, h, string(body), at.Add(299 * time.Second), 0, nil},
		{"valid within tolerance (receiver behind)", secret, h, string(body), at.Add(-299 * time.Second), 0, nil},
		{"spaces after commas", secret, "t=1800000000, " + good, string(body), at, 0, nil},
		{"unknown keys ignored", secret, "t=1800000000,v0=zz," + good + ",v2=abc", string(body), at, 0, nil},
		{"one of several v1 matches", secret, "t=1800000000," + other + "," + good, string(body), at, 0, nil},
		{"tampered body", secret, h, `{"id":"e1","seq":8}`, at, 0, ErrSignatureMismatch},
		{"wrong secret", []byte("another secret, 32 bytes long..."), h, string(body), at, 0, ErrSignatureMismatch},
		{"only a signature by another key", secret, "t=1800000000," + other, string(body), at, 0, ErrSignatureMismatch},
		{"timestamp changed", secret, "t=1800000001," + good, string(body), at, 0, ErrSignatureMismatch},
		{"old timestamp", secret, h, string(body), at.Add(301 * time.Second), 0, ErrSignatureTimestamp},
		{"future timestamp", secret, h, string(body), at.Add(-301 * time.Second), 0, ErrSignatureTimestamp},
		{"old for a tight tolerance", secret, h, string(body), at.Add(11 * time.Second), 10 * time.Second, ErrSignatureTimestamp},
		{"empty secret", nil, h, string(body), at, 0, ErrNoSecret},
		{"empty header", secret, "", string(body), at, 0, ErrSignatureHeader},
		{"no timestamp", secret, good, string(body), at, 0, ErrSignatureHeader},
		{"no signature", secret, "t=1800000000", string(body), at, 0, ErrSignatureHeader},
		{"two timestamps", secret, "t=1800000000,t=1800000000," + good, string(body), at, 0, ErrSignatureHeader},
		{"negative timestamp", secret, "t=-1," + good, string(body), at, 0, ErrSignatureHeader},
		{"timestamp with sign", secret, "t=+1800000000," + good, string(body), at, 0, ErrSignatureHeader},
		{"huge timestamp", secret, "t=99999999999999999999," + good, string(body), at, 0, ErrSignatureHeader},
		{"short signature", secret, "t=1800000000,v1=abcd", string(body), at, 0, ErrSignatureHeader},
		{"non-hex signature", secret, "t=1800000000,v1=" + strings.Repeat("zz", 32), string(body), at, 0, ErrSignatureHeader},
		{"part without =", secret, h + ",junk", string(body), at, 0, ErrSignatureHeader},
		{"too long", secret, h + strings.Repeat(",x=y", 2000), string(body), at, 0, ErrSignatureHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifySignature(tc.secret, tc.header, []byte(tc.body), tc.now, tc.tolerance)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Errorf("VerifySignature = %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzVerifySignature: no header crashes the parser, a header made by Sign
// always verifies, and a header that verifies carries the right MAC.
func FuzzVerifySignature(f *testing.F) {
	at := time.Unix(1_800_000_000, 0)
	f.Add(Sign(testSecret, at, []byte("{}")), []byte("{}"))
	f.Add("t=1800000000,v1="+strings.Repeat("0", 64), []byte("x"))
	f.Add("t=,v1=", []byte(nil))
	f.Add("t=1,t=2,v1=00", []byte("a"))
	f.Add(",,,", []byte("a"))
	f.Add("t=1800000000 ,v1=ab", []byte("a"))
	f.Add("v1="+strings.Repeat("a", 64)+",t=1800000000", []byte("b"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		if err := VerifySignature(testSecret, Sign(testSecret, at, body), body, at, 0); err != nil {
			t.Fatalf("a fresh signature does not verify: %v", err)
		}
		err := VerifySignature(testSecret, header, body, at, time.Hour)
		if err == nil {
			ts, _, perr := parseSignature(header)
			if perr != nil {
				t.Fatalf("verified a header the parser refuses: %q", header)
			}
			if !strings.Contains(header, hex.EncodeToString(mac(testSecret, ts, body))) {
				t.Fatalf("verified %q without the right MAC", header)
			}
			return
		}
		if !errors.Is(err, ErrSignatureHeader) && !errors.Is(err, ErrSignatureTimestamp) && !errors.Is(err, ErrSignatureMismatch) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
