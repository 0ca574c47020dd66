package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/spf13/cobra"
)

// optionFlags are the job option flags shared by job create, job set and
// transfer: BITS HTTP options and job properties.
type optionFlags struct {
	maxDownloadTime  time.Duration
	dynamic          bool
	maxSize          int64
	ignoreCertErrors []string
	redirectPolicy   string
	httpsToHTTP      bool
	anonymous        bool
	proxyUsage       string
	proxyList        []string
	proxyBypass      []string
	headers          []string
	clearHeaders     bool
	notifyURL        string
	notifyFlags      []string
}

func addOptionFlags(cmd *cobra.Command, o *optionFlags, set bool) {
	f := cmd.Flags()
	f.DurationVar(&o.maxDownloadTime, "max-download-time", job.DefaultMaxDownloadTime, "MaxDownloadTime: time CONNECTING+TRANSFERRING before BG_E_MAXDOWNLOAD_TIMEOUT (0: none)")
	f.BoolVar(&o.dynamic, "dynamic", false, "DYNAMIC_CONTENT: no size or ranges needed; an interruption restarts the file (before the first resume)")
	f.Int64Var(&o.maxSize, "max-download-size", 0, "MAX_DOWNLOAD_SIZE in bytes: larger files fail with BG_E_TOO_LARGE (0: none; before the first resume)")
	f.StringSliceVar(&o.ignoreCertErrors, "ignore-cert-errors", nil, "BG_SSL_IGNORE_* opt-ins: CERT_CN_INVALID, CERT_DATE_INVALID, UNKNOWN_CA, CERT_WRONG_USAGE (recorded in the job's events)")
	f.StringVar(&o.redirectPolicy, "redirect-policy", "", "ALLOW_SILENT (default), ALLOW_REPORT (record where redirects led) or DISALLOW")
	f.BoolVar(&o.httpsToHTTP, "allow-https-to-http", false, "allow redirects from https to http")
	f.BoolVar(&o.anonymous, "anonymous-client-auth", false, "answer an origin's optional request for a client certificate with none (BITS fails with 0x80072F0C)")
	f.StringVar(&o.proxyUsage, "proxy-usage", "", "PRECONFIG (environment, default), NO_PROXY, OVERRIDE or AUTODETECT")
	f.StringSliceVar(&o.proxyList, "proxy", nil, "proxies for --proxy-usage OVERRIDE (host:port or http(s)://host:port)")
	f.StringSliceVar(&o.proxyBypass, "proxy-bypass", nil, "hosts or domain suffixes reached without the proxy")
	f.StringArrayVarP(&o.headers, "header", "H", nil, `custom header sent on every request, "Name: value" (repeatable)`)
	if set {
		f.BoolVar(&o.clearHeaders, "clear-headers", false, "remove the job's custom headers")
	}
	f.StringVar(&o.notifyURL, "notify-url", "", "HTTPS webhook that receives the job's notifications")
	f.StringSliceVar(&o.notifyFlags, "notify-flags", nil, "JOB_TRANSFERRED, JOB_ERROR, JOB_MODIFICATION, FILE_TRANSFERRED, DISABLE (default JOB_TRANSFERRED,JOB_ERROR)")
}

// patch returns the options the user set on the command line, nil when none.
func (o *optionFlags) patch(cmd *cobra.Command) *job.OptionsPatch {
	f := cmd.Flags()
	var p job.OptionsPatch
	if f.Changed("dynamic") {
		p.Dynamic = &o.dynamic
	}
	if f.Changed("max-download-size") {
		p.MaxDownloadSize = &o.maxSize
	}
	if f.Changed("ignore-cert-errors") {
		p.IgnoreCertErrors = &o.ignoreCertErrors
	}
	if f.Changed("redirect-policy") {
		p.RedirectPolicy = &o.redirectPolicy
	}
	if f.Changed("allow-https-to-http") {
		p.AllowHTTPSToHTTP = &o.httpsToHTTP
	}
	if f.Changed("anonymous-client-auth") {
		p.AnonymousClientAuth = &o.anonymous
	}
	if f.Changed("proxy-usage") || f.Changed("proxy") || f.Changed("proxy-bypass") {
		usage := o.proxyUsage
		if usage == "" && len(o.proxyList) > 0 {
			usage = job.ProxyOverride
		}
		p.Proxy = &events.ProxySettings{Usage: usage, List: o.proxyList, Bypass: o.proxyBypass}
	}
	if f.Changed("header") {
		p.CustomHeaders = &o.headers
	} else if o.clearHeaders {
		p.CustomHeaders = &[]string{}
	}
	if f.Changed("notify-url") || f.Changed("notify-flags") {
		n := events.NotifySettings{URL: o.notifyURL, Flags: o.notifyFlags}
		p.Notify = &n
	}
	if p.Empty() {
		return nil
	}
	return &p
}

// maxDownloadSeconds returns --max-download-time in seconds if it was given.
func (o *optionFlags) maxDownloadSeconds(cmd *cobra.Command) *int64 {
	if !cmd.Flags().Changed("max-download-time") {
		return nil
	}
	s := int64(o.maxDownloadTime / time.Second)
	return &s
}

// fileFlags are per-file flags of job create and add-file (one file only).
type fileFlags struct {
	ranges string
	sha256 string
}

func addFileFlags(cmd *cobra.Command, o *fileFlags) {
	f := cmd.Flags()
	f.StringVar(&o.ranges, "ranges", "", "AddFileWithRanges: OFFSET:LENGTH,... (LENGTH 'eof' or -1 to the end), concatenated in order; one file only")
	f.StringVar(&o.sha256, "sha256", "", "expected SHA-256 of the file (BG_E_VALIDATION_FAILED on mismatch); one file only")
}

// apply sets the per-file flags on files, refusing them with several files.
func (o *fileFlags) apply(files []events.FileSpec) error {
	if o.ranges == "" && o.sha256 == "" {
		return nil
	}
	if len(files) != 1 {
		return fmt.Errorf("--ranges and --sha256 apply to one file; %d given", len(files))
	}
	files[0].SHA256 = o.sha256
	if o.ranges != "" {
		rs, err := parseRanges(o.ranges)
		if err != nil {
			return err
		}
		files[0].Ranges = rs
	}
	return nil
}

// parseRanges parses "OFFSET:LENGTH,..." where LENGTH may be "eof" or -1.
func parseRanges(s string) ([]events.FileRange, error) {
	var out []events.FileRange
	for _, part := range strings.Split(s, ",") {
		off, n, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			return nil, fmt.Errorf("range %q is not OFFSET:LENGTH", part)
		}
		o, err := strconv.ParseInt(off, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("range %q: offset: %w", part, err)
		}
		var l int64 = -1
		if !strings.EqualFold(n, "eof") {
			if l, err = strconv.ParseInt(n, 10, 64); err != nil {
				return nil, fmt.Errorf("range %q: length: %w", part, err)
			}
		}
		out = append(out, events.FileRange{Offset: o, Length: l})
	}
	return out, nil
}
