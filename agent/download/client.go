package download

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"github.com/ferry-dev/ferry/job/netguard"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for ClientOptions fields left at zero.
const (
	DefaultConnectTimeout        = 30 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultIdleReadTimeout       = 60 * time.Second

	// MaxRedirects is how many redirects a request may follow.
	MaxRedirects = 10
)

// ClientOptions configures NewClient. The zero value is a safe client:
// system roots, no client certificate, link-local/metadata addresses and
// HTTPS→HTTP redirects refused, default timeouts.
type ClientOptions struct {
	// RootCAs verifies servers; nil means the system roots.
	RootCAs *x509.CertPool

	// AllowPrivateMetadata lets the client connect to link-local addresses
	// (169.254.0.0/16, fe80::/10) and the well-known cloud metadata
	// endpoints. Off by default: a job's URL must not be a way to read the
	// host's instance credentials. Loopback and private (RFC 1918, ULA)
	// addresses are always allowed. The check is made on the resolved
	// address at dial time, so DNS names that point there are refused too.
	AllowPrivateMetadata bool

	// AllowHTTPSToHTTP lets a redirect go from https to http. Off by default
	// (BITS's BG_HTTP_REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP). It has no effect
	// with RedirectDisallow.
	AllowHTTPSToHTTP bool

	// RedirectPolicy is BITS's BG_HTTP_REDIRECT_POLICY: follow redirects
	// silently (the zero value), follow them and report the final URL in
	// Result.FinalURL, or refuse them (ERROR_WINHTTP_REDIRECT_FAILED,
	// fatal).
	RedirectPolicy RedirectPolicy

	// Proxy is BITS's SetProxySettings. The zero value connects directly
	// (as NewClient always did); see ProxySettings.
	Proxy ProxySettings

	// BITS security flags, each an explicit opt-in that drops exactly one
	// kind of server-certificate failure while every other check still
	// runs: a certificate for another host name
	// (BG_SSL_IGNORE_CERT_CN_INVALID), expired or not yet valid
	// (_IGNORE_CERT_DATE_INVALID), from an authority RootCAs does not
	// trust (_IGNORE_UNKNOWN_CA), or without the serverAuth extended key
	// usage (_IGNORE_CERT_WRONG_USAGE). With IgnoreUnknownCA the leaf's
	// host name, dates and usage are still checked unless ignored too.
	IgnoreCertCNInvalid, IgnoreCertDateInvalid, IgnoreUnknownCA, IgnoreWrongUsage bool

	// ConnectTimeout bounds the TCP connect and, separately, the TLS
	// handshake. ResponseHeaderTimeout bounds the wait for response headers
	// once the request is written. IdleReadTimeout is the longest a read of
	// the response body may wait without receiving any byte (stall
	// detection); time the caller spends between reads (fsync, hooks) does
	// not count. Zero means the default; a negative value disables the
	// timeout.
	ConnectTimeout, ResponseHeaderTimeout, IdleReadTimeout time.Duration

	// GetClientCertificate, when set, supplies the TLS client certificate
	// of every request that carries no per-transfer choice (see
	// WithClientCertificate and WithAnonymousClientAuth, which take
	// precedence). It is asked on every handshake in which the origin
	// requests a certificate, so a renewed certificate is used without
	// building a new client. When neither it nor the request's context
	// supplies one, a CertificateRequest fails the handshake with
	// ErrClientCertNeeded (ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED).
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
}

func orDefault(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}

// NewClient returns the HTTP client Fetch expects. It speaks HTTP/1.1 and
// HTTP/2, never asks for compressed transfer (byte counts and ranges must be
// those of the stored resource), follows at most MaxRedirects redirects and
// only to http or https URLs (per o.RedirectPolicy), and connects directly
// unless o.Proxy says otherwise.
//
// Proxy settings whose lists cannot be parsed (see ProxySettings.Validate)
// make every request fail with E_INVALIDARG.
//
// Call CloseIdleConnections on it when it is no longer needed. Its
// connection pool is not partitioned by client certificate: use one client
// per transfer when transfers carry different WithClientCertificate
// providers.
func NewClient(o ClientOptions) *http.Client {
	connect := orDefault(o.ConnectTimeout, DefaultConnectTimeout)
	dialer := &net.Dialer{
		Timeout:   connect,
		KeepAlive: 30 * time.Second,
	}
	if !o.AllowPrivateMetadata {
		// With a proxy, this checks the proxy's address (the origin is
		// resolved by the proxy); proxyFunc checks literal origin IPs.
		dialer.ControlContext = refuseMetadata
	}
	tlsConf := &tls.Config{
		RootCAs:              o.RootCAs,
		GetClientCertificate: getClientCertificate(o.GetClientCertificate),
		MinVersion:           tls.VersionTLS12,
	}
	ignoring := o.IgnoreCertCNInvalid || o.IgnoreCertDateInvalid || o.IgnoreUnknownCA || o.IgnoreWrongUsage
	if ignoring {
		// Go's own verification cannot drop one kind of failure, so it is
		// replaced by verifyServer, which runs the same checks. The
		// shared config knows no host name (VerifyConnection sees only the
		// SNI name, empty for IP addresses); dialTLS below gives each
		// direct connection its host.
		tlsConf.InsecureSkipVerify = true
		tlsConf.VerifyConnection = verifyServer(o, "")
	}
	base := &http.Transport{
		Proxy:                 proxyFunc(o.Proxy, !o.AllowPrivateMetadata),
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   connect,
		ResponseHeaderTimeout: orDefault(o.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
		DisableCompression:    true,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	if ignoring {
		base.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			raw, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cfg := tlsConf.Clone()
			cfg.ServerName = host
			cfg.NextProtos = []string{"h2", "http/1.1"}
			cfg.VerifyConnection = verifyServer(o, host)
			hctx, cancel := context.WithTimeout(ctx, connect)
			defer cancel()
			tc := tls.Client(raw, cfg)
			if err := tc.HandshakeContext(hctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		}
	}
	var rt http.RoundTripper = base
	if idle := orDefault(o.IdleReadTimeout, DefaultIdleReadTimeout); idle > 0 {
		rt = &stallTransport{base: base, idle: idle}
	}
	allowDowngrade, policy := o.AllowHTTPSToHTTP, o.RedirectPolicy
	return &http.Client{
		Transport: rt,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			switch policy {
			case RedirectDisallow:
				return &redirectError{fmt.Sprintf("the server redirected to %s and the job's redirect policy disallows redirects", redactURL(req.URL))}
			case RedirectAllowReport:
				if tr, ok := req.Context().Value(redirectTraceKey{}).(*redirectTrace); ok {
					tr.setReport()
				}
			}
			return checkRedirect(req, via, allowDowngrade)
		},
	}
}

// RedirectPolicy is BITS's BG_HTTP_REDIRECT_POLICY.
type RedirectPolicy int

const (
	RedirectAllowSilent RedirectPolicy = iota // follow redirects (BG_HTTP_REDIRECT_POLICY_ALLOW_SILENT, the default)
	RedirectAllowReport                       // follow them; Result.FinalURL says where the file came from (_ALLOW_REPORT)
	RedirectDisallow                          // a redirect fails the transfer with ERROR_WINHTTP_REDIRECT_FAILED, fatal (_DISALLOW)
)

func (p RedirectPolicy) String() string {
	switch p {
	case RedirectAllowSilent:
		return "ALLOW_SILENT"
	case RedirectAllowReport:
		return "ALLOW_REPORT"
	case RedirectDisallow:
		return "DISALLOW"
	}
	return fmt.Sprintf("RedirectPolicy(%d)", int(p))
}

// redirectTrace tells Fetch, per request, whether a redirect was followed
// under RedirectAllowReport.
type redirectTrace struct{ reported atomic.Bool }

type redirectTraceKey struct{}

func withRedirectTrace(ctx context.Context, tr *redirectTrace) context.Context {
	return context.WithValue(ctx, redirectTraceKey{}, tr)
}

func (t *redirectTrace) reset()       { t.reported.Store(false) }
func (t *redirectTrace) setReport()   { t.reported.Store(true) }
func (t *redirectTrace) report() bool { return t.reported.Load() }

// redirectError is returned by CheckRedirect; Fetch maps it to
// ERROR_WINHTTP_REDIRECT_FAILED.
type redirectError struct{ reason string }

func (e *redirectError) Error() string { return "redirect refused: " + e.reason }

func checkRedirect(req *http.Request, via []*http.Request, allowDowngrade bool) error {
	if len(via) >= MaxRedirects {
		return &redirectError{fmt.Sprintf("stopped after %d redirects", MaxRedirects)}
	}
	switch req.URL.Scheme {
	case "http", "https":
	default:
		return &redirectError{fmt.Sprintf("the server redirected to a %q URL; only http and https are allowed", req.URL.Scheme)}
	}
	prev := via[len(via)-1].URL
	if prev.Scheme == "https" && req.URL.Scheme == "http" && !allowDowngrade {
		return &redirectError{fmt.Sprintf("the server redirected from https to plain http (%s); allow it with AllowHTTPSToHTTP", redactURL(req.URL))}
	}
	if !strings.EqualFold(req.URL.Host, via[0].URL.Host) {
		// A job's custom headers (often tokens, some write-only) are for
		// the origin the job names: net/http strips only Authorization and
		// cookies on a redirect to another host, so drop the rest here.
		for k := range req.Header {
			if !redirectKeeps[k] {
				delete(req.Header, k)
			}
		}
	}
	return nil
}

// redirectKeeps are the request headers a redirect to another host keeps:
// those the transfer itself sets.
var redirectKeeps = map[string]bool{"Range": true, "If-Range": true, "User-Agent": true, "Accept": true, "Accept-Encoding": true}

// blockedAddrError is returned by the dialer's control function when the
// resolved address is link-local or a cloud metadata endpoint.
type blockedAddrError struct{ addr netip.Addr }

func (e *blockedAddrError) Error() string {
	return fmt.Sprintf("refusing to connect to %s: link-local and cloud metadata addresses are blocked (AllowPrivateMetadata is off)", e.addr)
}

// blockedAddr is ferry's rule for outbound connections (job/netguard).
func blockedAddr(a netip.Addr) bool { return netguard.Blocked(a) }

// refuseMetadata is a net.Dialer control function: it runs after the name is
// resolved and the socket created, before connect, once per address tried.
func refuseMetadata(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		// TCP and UDP dials always pass a literal ip:port here.
		return fmt.Errorf("unexpected dial address %q: %w", address, err)
	}
	if blockedAddr(ap.Addr()) {
		return &blockedAddrError{addr: ap.Addr()}
	}
	return nil
}

// stallTransport adds stall detection to response bodies: a body Read that
// receives nothing for idle fails with a stallError and aborts the request.
type stallTransport struct {
	base *http.Transport
	idle time.Duration
}

func (t *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel(nil)
		return nil, err
	}
	s := &stallReader{rc: resp.Body, idle: t.idle, cancel: cancel}
	s.timer = time.AfterFunc(time.Hour, s.fire)
	s.timer.Stop()
	resp.Body = s
	return resp, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// underlying transport.
func (t *stallTransport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// stallError is the error of a body read that stalled. It is a net.Error
// with Timeout() true.
type stallError struct{ idle time.Duration }

func (e *stallError) Error() string {
	return fmt.Sprintf("no data received from the server for %s", e.idle)
}
func (e *stallError) Timeout() bool   { return true }
func (e *stallError) Temporary() bool { return true }

type stallReader struct {
	rc      io.ReadCloser
	idle    time.Duration
	timer   *time.Timer
	stalled atomic.Bool
	cancel  context.CancelCauseFunc
}

func (s *stallReader) fire() {
	s.stalled.Store(true)
	s.cancel(&stallError{s.idle})
}

// Read arms the timer only while it waits for the network, so the caller's
// own pauses between reads (fsync, hooks) never count as a stall.
func (s *stallReader) Read(p []byte) (int, error) {
	s.timer.Reset(s.idle)
	n, err := s.rc.Read(p)
	s.timer.Stop()
	if s.stalled.Load() {
		return n, &stallError{s.idle}
	}
	return n, err
}

func (s *stallReader) Close() error {
	s.timer.Stop()
	err := s.rc.Close()
	s.cancel(nil)
	return err
}
