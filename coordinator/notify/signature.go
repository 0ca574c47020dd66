package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Headers of every webhook request.
const (
	// HeaderSignature is "t=<unix seconds>,v1=<hex HMAC-SHA256>", where the
	// MAC is over "<t>.<body>" with the notifier's secret.
	HeaderSignature = "Ferry-Signature"
	// HeaderEventID is the event's ID, equal to the body's "id".
	HeaderEventID = "Ferry-Event-Id"
	// HeaderAttempt counts the deliveries of this notification, from 1. It
	// is informational and not signed.
	HeaderAttempt = "Ferry-Delivery-Attempt"
)

// DefaultTolerance is how far a signature's timestamp may be from the
// receiver's clock when VerifySignature is given no tolerance.
const DefaultTolerance = 5 * time.Minute

// maxSignatureHeader bounds the header VerifySignature parses.
const maxSignatureHeader = 4096

// Errors of VerifySignature.
var (
	// ErrSignatureHeader: the header is missing or not "t=...,v1=...".
	ErrSignatureHeader = errors.New("notify: malformed Ferry-Signature header")
	// ErrSignatureTimestamp: the timestamp is outside the tolerance (a
	// replay of an old request, or a clock far off).
	ErrSignatureTimestamp = errors.New("notify: Ferry-Signature timestamp outside the tolerance")
	// ErrSignatureMismatch: no v1 signature matches the body and secret.
	ErrSignatureMismatch = errors.New("notify: Ferry-Signature does not match")
	// ErrNoSecret: VerifySignature was called with an empty secret.
	ErrNoSecret = errors.New("notify: empty secret")
)

// Sign returns the Ferry-Signature header value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// VerifySignature checks a webhook request: header is its Ferry-Signature
// value, body its exact bytes, secret the notifier's secret and now the
// receiver's clock. The timestamp must be within tolerance of now (either
// way; DefaultTolerance if tolerance ≤ 0) and one v1 signature must be the
// HMAC-SHA256 of "<t>.<body>". Unknown keys are ignored so that new
// signature versions can be added beside v1.
//
// It returns nil or an error wrapping ErrSignatureHeader,
// ErrSignatureTimestamp, ErrSignatureMismatch or ErrNoSecret. Verify before
// parsing the body, and de-duplicate on the event ID afterwards: a valid
// request may be delivered more than once.
func VerifySignature(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if len(secret) == 0 {
		return ErrNoSecret
	}
	ts, sigs, err := parseSignature(header)
	if err != nil {
		return err
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	t, _ := strconv.ParseInt(ts, 10, 64) // parseSignature checked it
	if d := now.Unix() - t; d > int64(tolerance/time.Second) || -d > int64(tolerance/time.Second) {
		return ErrSignatureTimestamp
	}
	want := mac(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return ErrSignatureMismatch
}

// parseSignature splits "t=<digits>,v1=<64 hex>[,v1=...][,k=v...]" into the
// timestamp (as sent, so the MAC covers the same bytes) and the decoded v1
// signatures. Exactly one t is required and at least one well-formed v1.
func parseSignature(header string) (ts string, sigs [][]byte, err error) {
	if header == "" || len(header) > maxSignatureHeader {
		return "", nil, ErrSignatureHeader
	}
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return "", nil, ErrSignatureHeader
		}
		switch k {
		case "t":
			if ts != "" || !validTimestamp(v) {
				return "", nil, ErrSignatureHeader
			}
			ts = v
		case "v1":
			if len(v) != 2*sha256.Size || len(sigs) >= 8 {
				return "", nil, ErrSignatureHeader
			}
			b, err := hex.DecodeString(v)
			if err != nil {
				return "", nil, ErrSignatureHeader
			}
			sigs = append(sigs, b)
		}
	}
	if ts == "" || len(sigs) == 0 {
		return "", nil, ErrSignatureHeader
	}
	return ts, sigs, nil
}

// validTimestamp accepts 1 to 18 decimal digits (no sign, no spaces): a
// Unix time in seconds that fits an int64 with room to compare.
func validTimestamp(s string) bool {
	if s == "" || len(s) > 18 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
