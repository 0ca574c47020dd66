package job

import (
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/ferry-dev/ferry/events"
)

// OptionsPatch changes some of a job's options (events.JobOptions); nil
// fields are unchanged. It is the body members of PATCH /v1/jobs/{id} and of
// job creation, and what Create and Modify carry.
type OptionsPatch struct {
	Dynamic             *bool                  `json:"dynamic_content,omitempty"`
	MaxDownloadSize     *int64                 `json:"max_download_size,omitempty"`
	IgnoreCertErrors    *[]string              `json:"ignore_cert_errors,omitempty"`
	RedirectPolicy      *string                `json:"redirect_policy,omitempty"`
	AllowHTTPSToHTTP    *bool                  `json:"allow_https_to_http,omitempty"`
	AnonymousClientAuth *bool                  `json:"anonymous_client_auth,omitempty"`
	Proxy               *events.ProxySettings  `json:"proxy,omitempty"`
	CustomHeaders       *[]string              `json:"custom_headers,omitempty"`
	Notify              *events.NotifySettings `json:"notify,omitempty"`
}

// Empty reports whether the patch changes nothing.
func (p *OptionsPatch) Empty() bool { return p == nil || *p == OptionsPatch{} }

// BG_SSL_IGNORE_* flags, by the names jobs use.
const (
	IgnoreCertCNInvalid   = "CERT_CN_INVALID"
	IgnoreCertDateInvalid = "CERT_DATE_INVALID"
	IgnoreUnknownCA       = "UNKNOWN_CA"
	IgnoreCertWrongUsage  = "CERT_WRONG_USAGE"
)

// BG_HTTP_REDIRECT_POLICY_* values.
const (
	RedirectAllowSilent = "ALLOW_SILENT"
	RedirectAllowReport = "ALLOW_REPORT"
	RedirectDisallow    = "DISALLOW"
)

// BG_JOB_PROXY_USAGE values.
const (
	ProxyPreconfig  = "PRECONFIG"
	ProxyNoProxy    = "NO_PROXY"
	ProxyOverride   = "OVERRIDE"
	ProxyAutodetect = "AUTODETECT"
)

// BG_NOTIFY_* flags, by name.
const (
	NotifyJobTransferred  = "JOB_TRANSFERRED"
	NotifyJobError        = "JOB_ERROR"
	NotifyDisable         = "DISABLE"
	NotifyJobModification = "JOB_MODIFICATION"
	NotifyFileTransferred = "FILE_TRANSFERRED"
)

// NotifyFlagValues maps BG_NOTIFY_* names to their BITS values.
var NotifyFlagValues = map[string]uint32{
	NotifyJobTransferred: 0x1, NotifyJobError: 0x2, NotifyDisable: 0x4,
	NotifyJobModification: 0x8, NotifyFileTransferred: 0x10,
}

// DefaultNotifyFlags are BITS's defaults: JOB_TRANSFERRED | JOB_ERROR.
var DefaultNotifyFlags = []string{NotifyJobTransferred, NotifyJobError}

// applyOptions returns o with p applied, validated and normalized. resumed
// says whether the job was ever resumed (DYNAMIC_CONTENT and
// MAX_DOWNLOAD_SIZE are read-only after that); files are the job's files
// (DYNAMIC_CONTENT refuses files with ranges).
func applyOptions(o events.JobOptions, p *OptionsPatch, resumed bool, files []File) (events.JobOptions, error) {
	if p.Empty() {
		return o, nil
	}
	o = cloneOptions(o)
	if p.Dynamic != nil && *p.Dynamic != o.Dynamic {
		if resumed {
			return o, Errorf(BG_E_READ_ONLY_AFTER_RESUME, "dynamic_content can only be set before the job is first resumed")
		}
		if *p.Dynamic {
			for i := range files {
				if len(files[i].Ranges) > 0 {
					return o, Errorf(BG_E_RANDOM_ACCESS_NOT_SUPP, "file %d has ranges: a job with dynamic content cannot fetch ranges", i)
				}
			}
		}
		o.Dynamic = *p.Dynamic
	}
	if p.MaxDownloadSize != nil && *p.MaxDownloadSize != o.MaxDownloadSize {
		if resumed {
			return o, Errorf(BG_E_READ_ONLY_AFTER_RESUME, "max_download_size can only be set before the job is first resumed")
		}
		if *p.MaxDownloadSize < 0 {
			return o, Errorf(E_INVALIDARG, "max_download_size must not be negative (0 means no limit)")
		}
		o.MaxDownloadSize = *p.MaxDownloadSize
	}
	if p.IgnoreCertErrors != nil {
		flags, err := normalizeSet(*p.IgnoreCertErrors, "ignore_cert_errors", E_INVALIDARG,
			IgnoreCertCNInvalid, IgnoreCertDateInvalid, IgnoreUnknownCA, IgnoreCertWrongUsage)
		if err != nil {
			return o, err
		}
		o.IgnoreCertErrors = flags
	}
	if p.RedirectPolicy != nil {
		switch v := strings.ToUpper(strings.TrimSpace(*p.RedirectPolicy)); v {
		case "", RedirectAllowSilent:
			o.RedirectPolicy = ""
		case RedirectAllowReport, RedirectDisallow:
			o.RedirectPolicy = v
		default:
			return o, Errorf(E_INVALIDARG, "redirect_policy %q is not one of ALLOW_SILENT, ALLOW_REPORT, DISALLOW", *p.RedirectPolicy)
		}
	}
	if p.AllowHTTPSToHTTP != nil {
		o.AllowHTTPSToHTTP = *p.AllowHTTPSToHTTP
	}
	if p.AnonymousClientAuth != nil {
		o.AnonymousClientAuth = *p.AnonymousClientAuth
	}
	if p.Proxy != nil {
		px, err := validateProxy(*p.Proxy)
		if err != nil {
			return o, err
		}
		o.Proxy = px
	}
	if p.CustomHeaders != nil {
		hs, err := ValidateCustomHeaders(*p.CustomHeaders)
		if err != nil {
			return o, err
		}
		o.CustomHeaders = hs
	}
	if p.Notify != nil {
		n, err := validateNotify(*p.Notify)
		if err != nil {
			return o, err
		}
		o.Notify = n
	}
	return canonicalOptions(o), nil
}

// canonicalOptions turns empty slices into nil so that equal options compare
// and encode equal.
func canonicalOptions(o events.JobOptions) events.JobOptions {
	if len(o.IgnoreCertErrors) == 0 {
		o.IgnoreCertErrors = nil
	}
	if len(o.CustomHeaders) == 0 {
		o.CustomHeaders = nil
	}
	if len(o.WriteOnlyHeaders) == 0 {
		o.WriteOnlyHeaders = nil
	}
	return o
}

// OptionsEqual reports whether two option sets are the same.
func OptionsEqual(a, b events.JobOptions) bool {
	a, b = canonicalOptions(a), canonicalOptions(b)
	eqProxy := (a.Proxy == nil) == (b.Proxy == nil) && (a.Proxy == nil ||
		a.Proxy.Usage == b.Proxy.Usage && slices.Equal(a.Proxy.List, b.Proxy.List) && slices.Equal(a.Proxy.Bypass, b.Proxy.Bypass))
	eqNotify := (a.Notify == nil) == (b.Notify == nil) && (a.Notify == nil ||
		a.Notify.URL == b.Notify.URL && slices.Equal(a.Notify.Flags, b.Notify.Flags))
	return a.Dynamic == b.Dynamic && a.MaxDownloadSize == b.MaxDownloadSize &&
		slices.Equal(a.IgnoreCertErrors, b.IgnoreCertErrors) && a.RedirectPolicy == b.RedirectPolicy &&
		a.AllowHTTPSToHTTP == b.AllowHTTPSToHTTP && a.AnonymousClientAuth == b.AnonymousClientAuth &&
		slices.Equal(a.CustomHeaders, b.CustomHeaders) && slices.Equal(a.WriteOnlyHeaders, b.WriteOnlyHeaders) &&
		eqProxy && eqNotify
}

// normalizeSet upper-cases, de-duplicates and sorts names, refusing any not
// in allowed with code c.
func normalizeSet(in []string, what string, c Code, allowed ...string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, s := range in {
		v := strings.ToUpper(strings.TrimSpace(s))
		if !slices.Contains(allowed, v) {
			return nil, Errorf(c, "%s: %q is not one of %s", what, s, strings.Join(allowed, ", "))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func validateProxy(p events.ProxySettings) (*events.ProxySettings, error) {
	usage := strings.ToUpper(strings.TrimSpace(p.Usage))
	if usage == "" {
		usage = ProxyPreconfig
	}
	switch usage {
	case ProxyPreconfig, ProxyNoProxy, ProxyAutodetect:
		if len(p.List) > 0 || len(p.Bypass) > 0 {
			return nil, Errorf(E_INVALIDARG, "proxy lists are only allowed with usage OVERRIDE")
		}
		if usage == ProxyPreconfig {
			return nil, nil // the default
		}
		return &events.ProxySettings{Usage: usage}, nil
	case ProxyOverride:
	default:
		return nil, Errorf(E_INVALIDARG, "proxy usage %q is not one of PRECONFIG, NO_PROXY, OVERRIDE, AUTODETECT", p.Usage)
	}
	if len(p.List) == 0 {
		return nil, Errorf(E_INVALIDARG, "proxy usage OVERRIDE needs a proxy list")
	}
	if n := listLen(p.List); n > MaxProxyList {
		return nil, Errorf(BG_E_PROXY_LIST_TOO_LARGE, "the proxy list has %d characters; at most %d are allowed", n, MaxProxyList)
	}
	if n := listLen(p.Bypass); n > MaxProxyList {
		return nil, Errorf(BG_E_PROXY_BYPASS_TOO_LARGE, "the proxy bypass list has %d characters; at most %d are allowed", n, MaxProxyList)
	}
	out := &events.ProxySettings{Usage: usage}
	for _, s := range p.List {
		v := strings.TrimSpace(s)
		if err := validateProxyAddr(v); err != nil {
			return nil, err
		}
		out.List = append(out.List, v)
	}
	for _, s := range p.Bypass {
		v := strings.TrimSpace(s)
		if v == "" || strings.ContainsAny(v, " \t\r\n\x00/") {
			return nil, Errorf(E_INVALIDARG, "proxy bypass entry %q is not a host name, domain suffix or address", s)
		}
		out.Bypass = append(out.Bypass, v)
	}
	return out, nil
}

// validateProxyAddr accepts "[http=|https=][scheme://]host[:port]" with
// scheme http, https or socks5, and without credentials (they would end up
// in events).
func validateProxyAddr(s string) error {
	raw := s
	if k, rest, ok := strings.Cut(raw, "="); ok && (strings.EqualFold(k, "http") || strings.EqualFold(k, "https")) {
		raw = rest
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || strings.ContainsAny(s, " ;\t") {
		return Errorf(E_INVALIDARG, "proxy %q is not [http=|https=][scheme://]host[:port]", s)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https", "socks5":
	default:
		return Errorf(E_INVALIDARG, "proxy %q: scheme must be http, https or socks5", s)
	}
	if u.User != nil {
		return Errorf(E_INVALIDARG, "proxy %q must not carry credentials", s)
	}
	return nil
}

func listLen(l []string) int {
	n := 0
	for _, s := range l {
		n += len(s) + 1
	}
	return n
}

// Headers a job may not set: the transfer itself controls them.
var reservedHeaders = []string{"Host", "Range", "If-Range", "Content-Length", "Transfer-Encoding",
	"Connection", "Accept-Encoding", "Te", "Trailer", "Upgrade", "Proxy-Connection", "Keep-Alive"}

// ValidateCustomHeaders checks SetCustomHeaders input: "Name: value" lines,
// at most MaxCustomHeaders characters together, names that are HTTP tokens
// and not controlled by the transfer, values without line breaks.
func ValidateCustomHeaders(hs []string) ([]string, error) {
	total := 0
	out := make([]string, 0, len(hs))
	for i, h := range hs {
		total += len(h) + 2 // CRLF, as BITS counts one string
		name, value, ok := strings.Cut(h, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" || !isToken(name) {
			return nil, Errorf(E_INVALIDARG, "custom header %d is not \"Name: value\"", i)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			return nil, Errorf(E_INVALIDARG, "custom header %s: the value contains a line break", name)
		}
		canon := http.CanonicalHeaderKey(name)
		if slices.Contains(reservedHeaders, canon) {
			return nil, Errorf(E_INVALIDARG, "custom header %s is set by the transfer itself", canon)
		}
		out = append(out, canon+": "+value)
	}
	if total > MaxCustomHeaders {
		return nil, Errorf(BG_E_STRING_TOO_LONG, "custom headers have %d characters; at most %d are allowed", total, MaxCustomHeaders)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// HeaderNames lists the names of custom header lines (never their values).
func HeaderNames(hs []string) []string {
	out := make([]string, 0, len(hs))
	for _, h := range hs {
		name, _, _ := strings.Cut(h, ":")
		out = append(out, strings.TrimSpace(name))
	}
	return out
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

func validateNotify(n events.NotifySettings) (*events.NotifySettings, error) {
	if n.URL == "" && len(n.Flags) == 0 {
		return nil, nil // notifications off
	}
	flags := n.Flags
	if flags == nil {
		flags = DefaultNotifyFlags
	}
	names := make([]string, 0, len(NotifyFlagValues))
	for k := range NotifyFlagValues {
		names = append(names, k)
	}
	sort.Strings(names)
	// Invalid flags are E_NOTIMPL, as SetNotifyFlags answers.
	norm, err := normalizeSet(flags, "notify flags", E_NOTIMPL, names...)
	if err != nil {
		return nil, err
	}
	if n.URL == "" {
		return nil, Errorf(RPC_X_NULL_REF_POINTER, "notify url is required with notify flags")
	}
	if len(n.URL) > MaxURLLength {
		return nil, Errorf(BG_E_STRING_TOO_LONG, "notify url is longer than %d characters", MaxURLLength)
	}
	u, err := url.Parse(n.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, Errorf(E_INVALIDARG, "notify url %q must be an absolute https URL", n.URL)
	}
	if u.User != nil {
		return nil, Errorf(E_INVALIDARG, "notify url must not carry credentials")
	}
	return &events.NotifySettings{Flags: norm, URL: n.URL}, nil
}

// NotifyWants reports whether the job's notification settings ask for flag.
func NotifyWants(o events.JobOptions, flag string) bool {
	if o.Notify == nil || o.Notify.URL == "" || slices.Contains(o.Notify.Flags, NotifyDisable) {
		return false
	}
	return slices.Contains(o.Notify.Flags, flag)
}

// validateRanges checks AddFileWithRanges input: offsets and lengths
// (BG_E_INVALID_RANGE), ranges that overlap once sorted by offset
// (BG_E_OVERLAPPING_RANGES), and the count (BG_E_TOO_MANY_RANGES_IN_FILE).
func validateRanges(rs []events.FileRange, maxRanges int) error {
	if len(rs) > maxRanges {
		return Errorf(BG_E_TOO_MANY_RANGES_IN_FILE, "a file may have at most %d ranges (%d given)", maxRanges, len(rs))
	}
	for i, r := range rs {
		if r.Offset < 0 || r.Length == 0 || r.Length < -1 || (r.Length > 0 && r.Offset > (1<<62)-r.Length) {
			return Errorf(BG_E_INVALID_RANGE, "range %d (offset %d, length %d) is not valid: offset ≥ 0 and length > 0 or -1 (to the end of the file)", i, r.Offset, r.Length)
		}
	}
	sorted := slices.Clone(rs)
	slices.SortStableFunc(sorted, func(a, b events.FileRange) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	for i := 1; i < len(sorted); i++ {
		prev, cur := sorted[i-1], sorted[i]
		if prev.Length == -1 || prev.Offset+prev.Length > cur.Offset {
			return Errorf(BG_E_OVERLAPPING_RANGES, "ranges at offsets %d and %d overlap", prev.Offset, cur.Offset)
		}
	}
	return nil
}

// RangesTotal is the number of bytes the ranges select, or SizeUnknown when
// one runs to the end of the file.
func RangesTotal(rs []events.FileRange) int64 {
	var n int64
	for _, r := range rs {
		if r.Length < 0 {
			return SizeUnknown
		}
		n += r.Length
	}
	return n
}
