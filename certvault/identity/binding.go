package identity

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/ferry-dev/ferry/job"
)

// Channel binding (RFC 9266): a request carries the tls-exporter value of
// the TLS connection it was sent on, and the server compares it with its own
// value for that connection. Both ends compute the same 32 bytes; every
// connection has different ones, so a header captured or relayed from one
// connection is refused on any other.
const (
	// ChannelBindingHeader carries "tls-exporter=<base64url, no padding>".
	ChannelBindingHeader = "Channel-Binding"
	// ChannelBindingType is the RFC 9266 channel binding type.
	ChannelBindingType = "tls-exporter"
	exporterLabel      = "EXPORTER-Channel-Binding"
	exporterLen        = 32
)

var b64 = base64.RawURLEncoding.Strict()

func exporter(cs *tls.ConnectionState) ([]byte, error) {
	if cs == nil {
		return nil, errors.New("identity: channel binding: not a TLS connection")
	}
	if !cs.HandshakeComplete {
		return nil, errors.New("identity: channel binding: the TLS handshake is not complete")
	}
	ekm, err := cs.ExportKeyingMaterial(exporterLabel, nil, exporterLen)
	if err != nil {
		return nil, fmt.Errorf("identity: channel binding: %w", err)
	}
	return ekm, nil
}

// ChannelBinding returns the Channel-Binding header value of a connection:
// "tls-exporter=" + base64url (no padding) of
// ExportKeyingMaterial("EXPORTER-Channel-Binding", nil, 32). Either end of a
// connection gets the same value. It fails for a TLS 1.2 connection without
// Extended Master Secret (Go refuses to export then).
func ChannelBinding(cs *tls.ConnectionState) (string, error) {
	ekm, err := exporter(cs)
	if err != nil {
		return "", err
	}
	return ChannelBindingType + "=" + b64.EncodeToString(ekm), nil
}

// CheckChannelBinding checks that r carries exactly one Channel-Binding
// header equal, in constant time, to the server's own tls-exporter value for
// the connection r arrived on. Every failure is E_ACCESSDENIED with a detail
// that says which check failed.
func CheckChannelBinding(r *http.Request) error {
	vals := r.Header.Values(ChannelBindingHeader)
	switch len(vals) {
	case 0:
		return job.Errorf(job.E_ACCESSDENIED, "the request has no %s header; send %s: %s=<base64url of this TLS connection's RFC 9266 exporter>",
			ChannelBindingHeader, ChannelBindingHeader, ChannelBindingType)
	case 1:
	default:
		return job.Errorf(job.E_ACCESSDENIED, "the request has %d %s headers; send exactly one", len(vals), ChannelBindingHeader)
	}
	typ, val, ok := strings.Cut(vals[0], "=")
	if !ok || typ != ChannelBindingType {
		return job.Errorf(job.E_ACCESSDENIED, "the %s header is not of type %s (expected %s=<base64url>)", ChannelBindingHeader, ChannelBindingType, ChannelBindingType)
	}
	got, err := b64.DecodeString(val)
	if err != nil || len(got) != exporterLen {
		return job.Errorf(job.E_ACCESSDENIED, "the %s header value is not %d bytes of unpadded base64url", ChannelBindingHeader, exporterLen)
	}
	want, err := exporter(r.TLS)
	if err != nil {
		return &job.Error{Code: job.E_ACCESSDENIED, Err: err,
			Detail: "this connection has no tls-exporter channel binding (it is not TLS, or TLS 1.2 without Extended Master Secret); use TLS 1.3"}
	}
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return job.Errorf(job.E_ACCESSDENIED, "the %s header does not match this TLS connection: it must be computed on the connection that carries the request (a value from another connection is refused)", ChannelBindingHeader)
	}
	return nil
}

// DoBound sends req over a new TLS connection of its own, bound to it: it
// dials req.URL's host with cfg (ALPN forced to http/1.1, ServerName set from
// the URL when empty), computes the connection's channel binding, sets the
// Channel-Binding header on a clone of req, writes it on that same
// connection and reads the response. The connection serves this one request
// and is closed when the response body is closed (or when ctx ends).
// resp.TLS is the connection's state.
func DoBound(ctx context.Context, cfg *tls.Config, req *http.Request) (*http.Response, error) {
	if req.URL == nil || req.URL.Scheme != "https" {
		return nil, fmt.Errorf("identity: bound request: %v is not an https URL", req.URL)
	}
	addr := req.URL.Host
	if req.URL.Port() == "" {
		addr = net.JoinHostPort(req.URL.Hostname(), "443")
	}
	var c *tls.Config
	if cfg != nil {
		c = cfg.Clone()
	} else {
		c = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if c.ServerName == "" {
		c.ServerName = req.URL.Hostname()
	}
	c.NextProtos = []string{"http/1.1"} // we speak HTTP/1.1 on the raw connection
	d := &tls.Dialer{Config: c}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("identity: bound request to %s: %w", addr, err)
	}
	conn := nc.(*tls.Conn)
	cs := conn.ConnectionState()
	cb, err := ChannelBinding(&cs)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	out := req.Clone(ctx)
	out.Header.Set(ChannelBindingHeader, cb)
	out.Close = true
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		_ = conn.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("identity: bound request to %s: %w", addr, err)
	}
	if err := out.Write(conn); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), out)
	if err != nil {
		return fail(err)
	}
	resp.TLS = &cs
	resp.Body = &connBody{ReadCloser: resp.Body, conn: conn, stop: stop}
	return resp, nil
}

// connBody closes the connection with the body.
type connBody struct {
	io.ReadCloser
	conn net.Conn
	stop func() bool
}

func (b *connBody) Close() error {
	err := b.ReadCloser.Close()
	b.stop()
	if cerr := b.conn.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}
