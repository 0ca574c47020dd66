package notify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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

// Well-known instance metadata endpoints outside link-local space (the
// same list as the agents' download client).
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	netip.MustParseAddr("168.63.129.16"),   // Azure WireServer
}

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// blockedAddr reports whether a webhook may not be reached at a:
// link-local (169.254.0.0/16, fe80::/10, and their multicast ranges) or a
// metadata endpoint. IPv4-mapped and NAT64 forms of IPv4 addresses are
// judged by the IPv4 address they carry. Loopback and private addresses
// are allowed: webhooks are often internal services.
func blockedAddr(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	if nat64.Contains(a) {
		b := a.As16()
		a = netip.AddrFrom4([4]byte(b[12:16]))
	}
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
		return true
	}
	for _, m := range metadataAddrs {
		if a == m {
			return true
		}
	}
	return false
}

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
