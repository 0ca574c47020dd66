package download

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/ferry-dev/ferry/job"
)

// ErrClientCertNeeded aborts a TLS handshake in which the origin asked for a
// client certificate (it sent a CertificateRequest) and the transfer has
// none. Fetch reports it as ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED, like BITS,
// even when the origin would have accepted no certificate: TLS carries no
// "required" flag, and BITS fails the job whenever the site asks.
var ErrClientCertNeeded = errors.New("the origin asked for a TLS client certificate and the transfer has none")

// ClientCertProvider supplies the client certificate of one transfer when
// the origin asks for one. It runs inside the TLS handshake (cri.Context()
// is the request's context) and only then, so a certificate is looked up or
// released only for origins that ask. A nil certificate with a nil error
// means the transfer has none (ErrClientCertNeeded). An error aborts the
// handshake; return a *Failure to choose how Fetch reports it (otherwise
// it is classified like any other connection error).
type ClientCertProvider func(*tls.CertificateRequestInfo) (*tls.Certificate, error)

type clientAuthKey struct{}

// clientAuth is what a context says about client authentication.
type clientAuth struct {
	provider  ClientCertProvider
	anonymous bool
}

// WithClientCertificate returns a context whose requests answer a
// CertificateRequest with provider's certificate. A nil provider removes any
// provider (and anonymous opt-in) set by a parent context.
//
// A client made by NewClient keeps the connections it has established in
// its pool: never share one between transfers with different providers (or
// with and without one), or one job's authenticated connection could carry
// another job's requests. The agent uses one client per transfer.
func WithClientCertificate(ctx context.Context, provider ClientCertProvider) context.Context {
	return context.WithValue(ctx, clientAuthKey{}, clientAuth{provider: provider})
}

// WithAnonymousClientAuth returns a context whose requests answer a
// CertificateRequest with an empty Certificate message instead of failing
// with ErrClientCertNeeded: the explicit per-job opt-in for origins whose
// client authentication is optional. The origin may still refuse the
// connection ("certificate required", or an HTTP 400 from nginx).
func WithAnonymousClientAuth(ctx context.Context) context.Context {
	return context.WithValue(ctx, clientAuthKey{}, clientAuth{anonymous: true})
}

func clientAuthOf(ctx context.Context) clientAuth {
	if ctx == nil {
		return clientAuth{}
	}
	ca, _ := ctx.Value(clientAuthKey{}).(clientAuth)
	return ca
}

// certTrace records, for one Fetch, what the client answered when origins
// asked for a certificate, so that an ambiguous refusal ("handshake
// failure" after an empty certificate) can be classified precisely.
type certTrace struct {
	mu        sync.Mutex
	asked     bool
	sentEmpty bool
	sentCert  bool
}

type certTraceKey struct{}

func withCertTrace(ctx context.Context, tr *certTrace) context.Context {
	return context.WithValue(ctx, certTraceKey{}, tr)
}

func (tr *certTrace) record(cert *tls.Certificate, err error) {
	if tr == nil {
		return
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.asked = true
	switch {
	case err != nil:
	case cert == nil || len(cert.Certificate) == 0:
		tr.sentEmpty = true
	default:
		tr.sentCert = true
	}
}

func (tr *certTrace) get() (asked, sentEmpty, sentCert bool) {
	if tr == nil {
		return false, false, false
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.asked, tr.sentEmpty, tr.sentCert
}

// getClientCertificate is the tls.Config callback of clients made by
// NewClient. It fires only when the origin sends a CertificateRequest. In
// order: the context's provider, the context's anonymous opt-in, the
// client-wide fallback (ClientOptions.GetClientCertificate), else
// ErrClientCertNeeded.
func getClientCertificate(fallback ClientCertProvider) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(cri *tls.CertificateRequestInfo) (cert *tls.Certificate, err error) {
		ctx := cri.Context()
		var tr *certTrace
		if ctx != nil {
			tr, _ = ctx.Value(certTraceKey{}).(*certTrace)
		}
		defer func() { tr.record(cert, err) }()
		ca := clientAuthOf(ctx)
		switch {
		case ca.provider != nil:
			cert, err = ca.provider(cri)
			if err == nil && cert == nil {
				// A provider with nothing to give: the job has no
				// certificate for this origin.
				return nil, ErrClientCertNeeded
			}
			return cert, err
		case ca.anonymous:
			return &tls.Certificate{}, nil
		case fallback != nil:
			return fallback(cri)
		}
		return nil, ErrClientCertNeeded
	}
}

// Client-authentication failures are reported in BG_ERROR_CONTEXT_REMOTE_FILE:
// the origin was reached and its own certificate verified; what failed is
// its access decision for this site, like a 401 or 403, and the same
// context is used whether the origin says so with a TLS alert or (nginx)
// with an HTTP 400 page.

// clientCertAlerts are the TLS alerts a server sends about the certificate
// it received: a server verifies no other certificate, so from the server
// they always concern the client's. Keys are crypto/tls's names for the
// alerts (the client's error text is "remote error: tls: <name>"); the value
// explains the alert.
var clientCertAlerts = map[string]string{
	"bad certificate":               "the certificate is corrupt, its signature is wrong, or it is not valid for client authentication",
	"unsupported certificate":       "the origin does not support this type of certificate",
	"revoked certificate":           "the certificate was revoked by its issuer",
	"expired certificate":           "the certificate has expired or is not yet valid",
	"unknown certificate":           "the origin could not accept the certificate",
	"unknown certificate authority": "the certificate is not issued by an authority the origin trusts",
	"access denied":                 "the certificate is valid but the origin denies it access",
}

// clientAuthAlert classifies a TLS alert from the server that is about
// client authentication; nil when it is not.
func clientAuthAlert(err error, opErr *net.OpError, tr *certTrace) *Failure {
	alert := strings.TrimPrefix(opErr.Err.Error(), "tls: ")
	asked, sentEmpty, _ := tr.get()
	switch {
	case alert == "certificate required":
		return fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED, err,
			"the origin requires a TLS client certificate and none was sent (%s)", opErr.Error())
	case alert == "handshake failure" && asked && sentEmpty:
		// TLS 1.2 servers that require a certificate answer an empty
		// Certificate message this way.
		return fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED, err,
			"the origin ended the handshake after the transfer answered its certificate request with no certificate (%s)", opErr.Error())
	}
	if why, ok := clientCertAlerts[alert]; ok {
		return fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_SECURE_FAILURE, err,
			"the origin rejected the job's TLS client certificate: %s (%s)", why, opErr.Error())
	}
	return nil
}

// clientAuthResponse classifies nginx's client-authentication refusals,
// which come after the handshake as HTTP 400 pages (nginx's internal 496
// and 495, also matched should a proxy pass them on). nil when resp is not
// one of them. It reads at most 4 KiB of the body.
func clientAuthResponse(resp *http.Response, status string) *Failure {
	code := resp.StatusCode
	if code != http.StatusBadRequest && code != 495 && code != 496 {
		return nil
	}
	words := status
	if resp.Body != nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		if title := htmlTitle(string(b)); title != "" {
			words = title
		}
	}
	lower := strings.ToLower(words)
	switch {
	case code == 496, strings.Contains(lower, "no required ssl certificate was sent"):
		return fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED, nil,
			"the origin requires a TLS client certificate and none was sent; it answered %q for %s", words, redactURL(resp.Request.URL))
	case code == 495, strings.Contains(lower, "ssl certificate error"):
		return fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_SECURE_FAILURE, nil,
			"the origin rejected the job's TLS client certificate; it answered %q for %s", words, redactURL(resp.Request.URL))
	}
	return nil
}

// htmlTitle is the sanitized text of an HTML page's <title>, at most 100
// printable ASCII bytes; "" when there is none.
func htmlTitle(page string) string {
	lower := strings.ToLower(page)
	i := strings.Index(lower, "<title>")
	if i < 0 {
		return ""
	}
	rest := page[i+len("<title>"):]
	if j := strings.Index(strings.ToLower(rest), "</title>"); j >= 0 {
		rest = rest[:j]
	}
	return strings.Join(strings.Fields(printable(rest, 100)), " ")
}
