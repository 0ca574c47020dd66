package agent

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/agent/download"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// clientOptions applies a job's HTTP options to the agent's client options.
func clientOptions(base download.ClientOptions, o events.JobOptions) download.ClientOptions {
	c := base
	c.AllowHTTPSToHTTP = base.AllowHTTPSToHTTP || o.AllowHTTPSToHTTP
	switch o.RedirectPolicy {
	case job.RedirectAllowReport:
		c.RedirectPolicy = download.RedirectAllowReport
	case job.RedirectDisallow:
		c.RedirectPolicy = download.RedirectDisallow
	default:
		c.RedirectPolicy = download.RedirectAllowSilent
	}
	if p := o.Proxy; p != nil {
		// A job without proxy settings uses the agent's (PRECONFIG).
		switch p.Usage {
		case job.ProxyNoProxy:
			c.Proxy = download.ProxySettings{Usage: download.ProxyDirect}
		case job.ProxyAutodetect:
			c.Proxy = download.ProxySettings{Usage: download.ProxyAutodetect}
		case job.ProxyOverride:
			c.Proxy = download.ProxySettings{Usage: download.ProxyOverride,
				List: strings.Join(p.List, " "), Bypass: strings.Join(p.Bypass, " ")}
		}
	}
	for _, f := range o.IgnoreCertErrors {
		switch f {
		case job.IgnoreCertCNInvalid:
			c.IgnoreCertCNInvalid = true
		case job.IgnoreCertDateInvalid:
			c.IgnoreCertDateInvalid = true
		case job.IgnoreUnknownCA:
			c.IgnoreUnknownCA = true
		case job.IgnoreCertWrongUsage:
			c.IgnoreWrongUsage = true
		}
	}
	return c
}

// customHeaders turns "Name: value" lines (validated by the job model) into
// request headers.
func customHeaders(lines []string) http.Header {
	if len(lines) == 0 {
		return nil
	}
	h := make(http.Header, len(lines))
	for _, l := range lines {
		name, value, _ := strings.Cut(l, ":")
		h.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	return h
}

// withWriteOnly adds the lines of write-only headers to h (plain headers,
// from customHeaders): a write-only header replaces plain ones of its
// name, so a value meant to stay secret is never sent beside another.
func withWriteOnly(h http.Header, lines []string) http.Header {
	if len(lines) == 0 {
		return h
	}
	out := make(http.Header, len(h)+len(lines))
	for k, v := range h {
		out[k] = v
	}
	for _, l := range lines {
		name, _, _ := strings.Cut(l, ":")
		out.Del(strings.TrimSpace(name))
	}
	for _, l := range lines {
		name, value, _ := strings.Cut(l, ":")
		out.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	return out
}

func fileRanges(rs []events.FileRange) []download.Range {
	if rs == nil {
		return nil
	}
	out := make([]download.Range, len(rs))
	for i, r := range rs {
		out[i] = download.Range{Offset: r.Offset, Length: r.Length}
	}
	return out
}

// flatHeaders keeps one value per response header for the event.
func flatHeaders(h http.Header) map[string]string {
	if len(h) == 0 {
		return nil
	}
	m := make(map[string]string, len(h))
	for k, v := range h {
		if len(v) > 0 {
			m[k] = v[0]
		}
	}
	return m
}

var errMaxDownloadTime = errors.New("maximum download time reached")

// downloadDeadline is when the job's MaxDownloadTime runs out, counting
// the time it has already spent connecting and transferring.
func downloadDeadline(j *job.Job, now time.Time) (time.Time, bool) {
	if j.RetryPolicy.MaxDownloadTimeSec <= 0 {
		return time.Time{}, false
	}
	max := time.Duration(j.RetryPolicy.MaxDownloadTimeSec) * time.Second
	return now.Add(max - j.DownloadTimeAt(now)), true
}

func maxDownloadFailure(j *job.Job) *download.Failure {
	return &download.Failure{Context: job.ContextGeneralQueueManager, Code: job.BG_E_MAXDOWNLOAD_TIMEOUT,
		Description: fmt.Sprintf("the job spent its maximum download time (%ds) connecting and transferring", j.RetryPolicy.MaxDownloadTimeSec)}
}
