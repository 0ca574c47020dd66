package notify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/ferry-dev/ferry/job/netguard"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"
)

// newClient returns the HTTP client that posts notifications: TLS 1.2 or
// later against cfg.RootCAs (system roots when nil), no proxy (the dial-time
// address check must see the webhook's own address), redirects not followed
// (a 3xx answer is a failed delivery), and link-local and cloud metadata
// addresses refused at dial time.
func newClient(cfg *Config) (*http.Client, *http.Transport) {
	dialer := &net.Dialer{
		Timeout:        cfg.Timeout,
		KeepAlive:      30 * time.Second,
		ControlContext: refuseMetadata,
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}, tr
}

// blockedAddrError is returned by the dialer's control function when the
// webhook's address is link-local or a cloud metadata endpoint.
type blockedAddrError struct{ addr netip.Addr }

func (e *blockedAddrError) Error() string {
	return fmt.Sprintf("refusing to connect to %s: link-local and cloud metadata addresses are never notified", e.addr)
}

// isBlocked reports whether err comes from a refused address.
func isBlocked(err error) bool {
	var b *blockedAddrError
	return errors.As(err, &b)
}

// blockedAddr is ferry's rule for outbound connections (job/netguard).
func blockedAddr(a netip.Addr) bool { return netguard.Blocked(a) }

// refuseMetadata is a net.Dialer control function: it runs once per address
// tried, after the name is resolved and the socket created, before connect,
// so a name that resolves to a refused address is caught too.
func refuseMetadata(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("unexpected dial address %q: %w", address, err)
	}
	if blockedAddr(ap.Addr()) {
		return &blockedAddrError{addr: ap.Addr()}
	}
	return nil
}

// redactURL is what logs show of a webhook URL: scheme, host and path,
// without the query (which may carry a token).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}
