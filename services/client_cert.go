package services

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/ferry-dev/ferry/coordinator"
)

// CertSpec names a job's client certificate: a store location (a
// BG_CERT_STORE_LOCATION name or "0".."7"), a store name, and either a SHA-1
// thumbprint (any hex spelling) or a subject name.
type CertSpec struct {
	Location   string
	Store      string
	Thumbprint string
	Subject    string
}

// Empty reports whether nothing was given.
func (s CertSpec) Empty() bool { return s == CertSpec{} }

func (s CertSpec) request() (coordinator.ClientCertificateRequest, error) {
	req := coordinator.ClientCertificateRequest{Store: s.Store, Thumbprint: s.Thumbprint, Subject: s.Subject}
	if s.Location != "" {
		loc, err := json.Marshal(s.Location)
		if err != nil {
			return req, err
		}
		req.Location = loc
	}
	return req, nil
}

func certPath(id string) string { return "/v1/jobs/" + url.PathEscape(id) + "/client-certificate" }

// SetClientCertificate names the job's client certificate
// (SetClientCertificateByID, or ByName when spec has a subject).
func (c *Client) SetClientCertificate(ctx context.Context, id string, spec CertSpec) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	req, err := spec.request()
	if err != nil {
		return r, err
	}
	return r, c.do(ctx, http.MethodPut, certPath(id), req, &r)
}

// ClientCertificate returns the job's client certificate
// (GetClientCertificate); RPC_X_BAD_STUB_DATA when it has none.
func (c *Client) ClientCertificate(ctx context.Context, id string) (coordinator.ClientCertificateResponse, error) {
	var r coordinator.ClientCertificateResponse
	return r, c.do(ctx, http.MethodGet, certPath(id), nil, &r)
}

// RemoveClientCertificate removes the job's client certificate: S_FALSE
// when it had none.
func (c *Client) RemoveClientCertificate(ctx context.Context, id string) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	return r, c.do(ctx, http.MethodDelete, certPath(id), nil, &r)
}

// TakeOwnership makes the caller (an administrator) the job's owner; the
// job's client certificate is removed.
func (c *Client) TakeOwnership(ctx context.Context, id string) (coordinator.ActionResponse, error) {
	var r coordinator.ActionResponse
	return r, c.do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/take-ownership", nil, &r)
}
