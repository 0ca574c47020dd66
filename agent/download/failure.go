package download

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/job"
)

// Failure is a failed transfer in ferry's BITS vocabulary. Description is
// human-readable and safe to show and record: it never contains a URL's
// query, user info or request headers. Err is the underlying cause, for
// errors.Is/As and for logs.
type Failure struct {
	Context     string        // job.ContextRemoteFile, job.ContextGeneralTransport, job.ContextLocalFile
	Code        job.Code      // e.g. job.ERROR_WINHTTP_TIMEOUT, job.HTTPStatusCode(404)
	Transient   bool          // TRANSIENT_ERROR (retry later) rather than ERROR
	RetryAfter  time.Duration // the server's Retry-After, 0 when it gave none
	Description string
	Err         error
}

func (f *Failure) Error() string {
	return "download: " + f.Code.Symbol + ": " + f.Description
}

func (f *Failure) Unwrap() error { return f.Err }

func fatal(ctx string, c job.Code, err error, format string, args ...any) *Failure {
	return &Failure{Context: ctx, Code: c, Description: fmt.Sprintf(format, args...), Err: err}
}

func transient(ctx string, c job.Code, err error, format string, args ...any) *Failure {
	f := fatal(ctx, c, err, format, args...)
	f.Transient = true
	return f
}

// redactURL is a URL as descriptions and logs may show it: scheme, host and
// path, without user info, query or fragment (which may carry tokens).
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	s := r.String()
	if u.RawQuery != "" {
		s += "?…"
	}
	return s
}

// printable keeps a server-supplied phrase safe to put in a description:
// printable ASCII only, at most n bytes.
func printable(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// httpFailure classifies a response status the transfer cannot use.
func httpFailure(resp *http.Response, now time.Time) *Failure {
	code := resp.StatusCode
	status := printable(resp.Status, 120)
	if status == "" {
		status = fmt.Sprintf("%d %s", code, http.StatusText(code))
	}
	if f := clientAuthResponse(resp, status); f != nil {
		return f
	}
	desc := fmt.Sprintf("the server answered %q for %s", status, redactURL(resp.Request.URL))
	f := fatal(job.ContextRemoteFile, job.HTTPStatusCode(code), nil, "%s", desc)
	switch {
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code >= 500:
		f.Transient = true
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), resp.Header.Get("Date"), now); ok {
			f.RetryAfter = d
			f.Description += fmt.Sprintf("; it asks to retry after %s", d)
		}
	}
	return f
}

// classifyNet classifies an error from the HTTP client: dialing, TLS,
// redirects, reading the response.
func classifyNet(err error) *Failure { return classifyNetTrace(err, nil) }

// classifyNetTrace is classifyNet knowing, when tr is not nil, what the
// transfer answered to the origins' certificate requests.
func classifyNetTrace(err error, tr *certTrace) *Failure {
	// The client wraps errors in *url.Error, whose message contains the full
	// URL (query included); describe the cause alone.
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	const gt = job.ContextGeneralTransport
	var (
		blocked   *blockedAddrError
		redirect  *redirectError
		stall     *stallError
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		record    tls.RecordHeaderError
		dnsErr    *net.DNSError
		opErr     *net.OpError
		netErr    net.Error
	)
	switch {
	case errors.Is(err, ErrClientCertNeeded):
		return fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED, err,
			"the origin asked for a TLS client certificate and the job has none; the connection was closed before any HTTP request was sent")
	case errors.As(err, &blocked):
		return fatal(gt, job.E_ACCESSDENIED, err, "%s", blocked.Error())
	case errors.As(err, &redirect):
		return fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_REDIRECT_FAILED, err, "%s", redirect.reason)
	case errors.As(err, &stall):
		return transient(gt, job.ERROR_WINHTTP_TIMEOUT, err, "the transfer stalled: %s", stall.Error())
	case errors.As(err, &unknownCA):
		return fatal(gt, job.ERROR_WINHTTP_SECURE_INVALID_CA, err, "the server's certificate is not signed by a trusted authority: %s", unknownCA.Error())
	case errors.As(err, &hostname):
		return fatal(gt, job.ERROR_WINHTTP_SECURE_CERT_CN, err, "the server's certificate does not match the host name: %s", hostname.Error())
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return fatal(gt, job.ERROR_WINHTTP_SECURE_CERT_DATE, err, "the server's certificate is expired or not yet valid: %s", invalid.Error())
	case errors.As(err, &invalid), errors.As(err, &verify):
		return fatal(gt, job.ERROR_WINHTTP_SECURE_FAILURE, err, "the server's certificate was refused: %s", err.Error())
	case errors.As(err, &record):
		return fatal(gt, job.ERROR_WINHTTP_SECURE_FAILURE, err, "the server did not answer with TLS: %s", record.Error())
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// A TLS alert from the server. crypto/tls keeps the alert type
		// unexported, so its text is all there is.
		if f := clientAuthAlert(err, opErr, tr); f != nil {
			return f
		}
		return fatal(gt, job.ERROR_WINHTTP_SECURE_FAILURE, err, "the server ended the TLS session: %s", opErr.Error())
	case errors.As(err, &dnsErr):
		return transient(gt, job.ERROR_WINHTTP_NAME_NOT_RESOLVED, err, "cannot resolve %q: %s", dnsErr.Name, dnsErr.Err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return transient(gt, job.ERROR_WINHTTP_CANNOT_CONNECT, err, "the server refused the connection: %s", err.Error())
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.ENETDOWN):
		return transient(gt, job.ERROR_WINHTTP_CANNOT_CONNECT, err, "the server cannot be reached: %s", err.Error())
	case errors.As(err, &netErr) && netErr.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		return transient(gt, job.ERROR_WINHTTP_TIMEOUT, err, "the operation timed out: %s", err.Error())
	case isTLSMessage(err):
		return fatal(gt, job.ERROR_WINHTTP_SECURE_FAILURE, err, "the secure connection failed: %s", err.Error())
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return transient(gt, job.ERROR_WINHTTP_CONNECTION_ERROR, err, "the connection was closed before the transfer finished: %s", err.Error())
	}
	// Anything else on the wire (HTTP/2 stream resets, GOAWAY, malformed
	// framing) is a connection problem worth retrying, not a verdict on
	// the job.
	return transient(gt, job.ERROR_WINHTTP_CONNECTION_ERROR, err, "the connection failed: %s", err.Error())
}

// isTLSMessage spots crypto/tls's plain errors ("tls: handshake failure",
// "tls: no supported versions"), which have no type of their own.
func isTLSMessage(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if strings.HasPrefix(e.Error(), "tls: ") {
			return true
		}
	}
	return false
}

// pathEscapes matches os.Root's unexported "path escapes from parent"
// error by text; the test with a symlink pointing outside the root keeps
// this honest across Go releases.
const pathEscapes = "path escapes from parent"

// classifyLocal classifies an error from the file system. what says what was
// being done ("write the temporary file").
func classifyLocal(err error, what string) *Failure {
	const lf = job.ContextLocalFile
	var pe *fs.PathError
	desc := err.Error()
	if errors.As(err, &pe) {
		desc = pe.Op + " " + pe.Path + ": " + pe.Err.Error()
	}
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return transient(lf, job.ERROR_DISK_FULL, err, "cannot %s: the disk is full (%s)", what, desc)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		return fatal(lf, job.E_ACCESSDENIED, err, "cannot %s: access denied (%s)", what, desc)
	case strings.Contains(err.Error(), pathEscapes), errors.Is(err, errNotLocal):
		return fatal(lf, job.E_ACCESSDENIED, err, "cannot %s: the path leaves the agent's root directory (%s)", what, desc)
	}
	return fatal(lf, job.E_FAIL, err, "cannot %s: %s", what, desc)
}

var errNotLocal = errors.New("path is not a local path inside the root")
