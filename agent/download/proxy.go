package download

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/ferry-dev/ferry/job"
)

// ProxyUsage is BITS's BG_JOB_PROXY_USAGE.
//
// The zero value is ProxyDirect, not BITS's default PRECONFIG: NewClient
// connected directly before proxies were configurable, and an agent (a
// service) has no per-user proxy configuration to inherit. Callers that
// mirror BITS map its PRECONFIG to ProxyPreconfig explicitly.
type ProxyUsage int

const (
	ProxyDirect     ProxyUsage = iota // no proxy (BG_JOB_PROXY_USAGE_NO_PROXY)
	ProxyPreconfig                    // the environment: HTTP_PROXY, HTTPS_PROXY, NO_PROXY (BG_JOB_PROXY_USAGE_PRECONFIG)
	ProxyOverride                     // List and Bypass (BG_JOB_PROXY_USAGE_OVERRIDE)
	ProxyAutodetect                   // treated as ProxyPreconfig: there is no WPAD here (BG_JOB_PROXY_USAGE_AUTODETECT)
)

func (u ProxyUsage) String() string {
	switch u {
	case ProxyDirect:
		return "NO_PROXY"
	case ProxyPreconfig:
		return "PRECONFIG"
	case ProxyOverride:
		return "OVERRIDE"
	case ProxyAutodetect:
		return "AUTODETECT"
	}
	return "ProxyUsage(" + strconv.Itoa(int(u)) + ")"
}

// MaxProxyListLen is BITS's limit on each of the proxy and bypass lists
// (32,000 characters, as bitsmsg.h's BG_E_PROXY_LIST_TOO_LARGE text says;
// the job model applies the same limit, job.MaxProxyList).
const MaxProxyListLen = 32000

// ProxySettings are BITS's SetProxySettings(Usage, ProxyList, BypassList).
//
// List (OVERRIDE only) holds proxies separated by spaces or semicolons, each
// "[scheme=][proxy-scheme://]host[:port]": an entry with "http=" or
// "https=" serves only requests of that scheme, one without serves the
// rest; the first fitting entry wins. proxy-scheme is http (the default),
// https or socks5. Bypass (OVERRIDE only) holds host names that go direct,
// separated the same way: "name" (exact, case-insensitive), "*.suffix" or
// "*suffix" (the wildcard only at the left), "*" (everything) and
// "<local>" (host names without a dot).
//
// Link-local and metadata protection (ClientOptions.AllowPrivateMetadata
// off) sees, through a proxy, the proxy's resolved address at dial time:
// the origin is resolved by the proxy, out of the agent's reach. An
// origin given as a literal IP address is still checked before the request
// is handed to the proxy; a DNS name that a proxy resolves to a metadata
// address is not (the proxy's own policy must refuse it).
type ProxySettings struct {
	Usage  ProxyUsage
	List   string
	Bypass string
}

// Validate reports settings BITS would refuse: a list longer than
// MaxProxyListLen (BG_E_PROXY_LIST_TOO_LARGE,
// BG_E_PROXY_BYPASS_LIST_TOO_LARGE), lists given with a usage other than
// OVERRIDE, OVERRIDE without a proxy, an unknown usage or an entry that
// cannot be parsed (E_INVALIDARG). The error is a *Failure.
func (p ProxySettings) Validate() error {
	if f := p.check(); f != nil {
		return f
	}
	return nil
}

func (p ProxySettings) check() *Failure {
	const gt = job.ContextGeneralTransport
	switch {
	case len(p.List) > MaxProxyListLen:
		return fatal(gt, job.BG_E_PROXY_LIST_TOO_LARGE, nil, "the proxy list has %d characters, more than %d", len(p.List), MaxProxyListLen)
	case len(p.Bypass) > MaxProxyListLen:
		return fatal(gt, job.BG_E_PROXY_BYPASS_TOO_LARGE, nil, "the proxy bypass list has %d characters, more than %d", len(p.Bypass), MaxProxyListLen)
	case p.Usage < ProxyDirect || p.Usage > ProxyAutodetect:
		return fatal(gt, job.E_INVALIDARG, nil, "unknown proxy usage %d", int(p.Usage))
	case p.Usage != ProxyOverride && (strings.TrimSpace(p.List) != "" || strings.TrimSpace(p.Bypass) != ""):
		return fatal(gt, job.E_INVALIDARG, nil, "proxy and bypass lists are only allowed with OVERRIDE (usage is %s)", p.Usage)
	case p.Usage == ProxyOverride && len(proxyFields(p.List)) == 0:
		return fatal(gt, job.E_INVALIDARG, nil, "OVERRIDE needs at least one proxy")
	}
	if _, err := parseProxyList(p.List); err != nil {
		return err
	}
	return nil
}

type proxyEntry struct {
	scheme string // "" = any
	url    *url.URL
}

func proxyFields(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ';' || r == '\t' || r == ',' })
}

func parseProxyList(s string) ([]proxyEntry, *Failure) {
	var out []proxyEntry
	for _, f := range proxyFields(s) {
		e := proxyEntry{}
		if k, v, ok := strings.Cut(f, "="); ok {
			e.scheme, f = strings.ToLower(k), v
			if e.scheme != "http" && e.scheme != "https" {
				return nil, fatal(job.ContextGeneralTransport, job.E_INVALIDARG, nil, "proxy entry %q: only http= and https= select a scheme", printable(f, 100))
			}
		}
		raw := f
		if !strings.Contains(raw, "://") {
			raw = "http://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fatal(job.ContextGeneralTransport, job.E_INVALIDARG, nil, "proxy entry %q is not [scheme=][proxy-scheme://]host[:port]", printable(f, 100))
		}
		switch u.Scheme {
		case "http", "https", "socks5":
		default:
			return nil, fatal(job.ContextGeneralTransport, job.E_INVALIDARG, nil, "proxy entry %q: the proxy scheme must be http, https or socks5", printable(f, 100))
		}
		e.url = &url.URL{Scheme: u.Scheme, Host: u.Host}
		out = append(out, e)
	}
	return out, nil
}

// bypassed reports whether host matches a bypass list.
func bypassed(host string, patterns []string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, p := range patterns {
		p = strings.ToLower(p)
		switch {
		case p == "<local>":
			if !strings.Contains(host, ".") && !strings.Contains(host, ":") {
				return true
			}
		case p == "*":
			return true
		case strings.HasPrefix(p, "*"):
			if strings.HasSuffix(host, p[1:]) {
				return true
			}
		case host == p:
			return true
		}
	}
	return false
}

// proxyFunc is the transport's Proxy function for p. Bad settings make every
// request fail with the validation error.
func proxyFunc(p ProxySettings, blockMetadata bool) func(*http.Request) (*url.URL, error) {
	var choose func(*http.Request) (*url.URL, error)
	switch p.Usage {
	case ProxyDirect:
		if f := p.check(); f != nil {
			return func(*http.Request) (*url.URL, error) { return nil, f }
		}
		return nil
	case ProxyPreconfig, ProxyAutodetect:
		// net/http reads the environment once per process; requests to
		// localhost and loopback addresses are never proxied.
		choose = http.ProxyFromEnvironment
	case ProxyOverride:
		entries, _ := parseProxyList(p.List)
		bypass := proxyFields(p.Bypass)
		choose = func(req *http.Request) (*url.URL, error) {
			if bypassed(req.URL.Hostname(), bypass) {
				return nil, nil
			}
			var fallback *url.URL
			for _, e := range entries {
				if e.scheme == req.URL.Scheme {
					return e.url, nil
				}
				if e.scheme == "" && fallback == nil {
					fallback = e.url
				}
			}
			return fallback, nil
		}
	}
	if f := p.check(); f != nil {
		return func(*http.Request) (*url.URL, error) { return nil, f }
	}
	return func(req *http.Request) (*url.URL, error) {
		u, err := choose(req)
		if err != nil || u == nil {
			return u, err
		}
		// The dialer will see only the proxy's address: check what can be
		// checked of the origin here.
		if blockMetadata {
			if a, err := netip.ParseAddr(strings.Trim(req.URL.Hostname(), "[]")); err == nil && blockedAddr(a) {
				return nil, &blockedAddrError{addr: a}
			}
			if ip := net.ParseIP(req.URL.Hostname()); ip != nil {
				if a, ok := netip.AddrFromSlice(ip); ok && blockedAddr(a) {
					return nil, &blockedAddrError{addr: a}
				}
			}
		}
		return u, nil
	}
}
