package services

import (
	"context"
	"net/http"
	"net/url"

	"github.com/ferry-dev/ferry/certvault"
)

// CertImport is the body of a certificate import: PEM (certificate and
// key), or PKCS#12 bytes with their password.
type CertImport struct {
	PEM      *string `json:"pem,omitempty"`
	PFX      []byte  `json:"pfx,omitempty"`
	Password *string `json:"password,omitempty"`
}

func storePath(location, store string) string {
	return "/v1/stores/" + url.PathEscape(location) + "/" + url.PathEscape(store) + "/certificates"
}

// ImportCert imports a certificate with its private key into a certvault
// store.
func (c *Client) ImportCert(ctx context.Context, location, store string, req CertImport) (certvault.CertInfo, error) {
	var info certvault.CertInfo
	return info, c.do(ctx, http.MethodPost, storePath(location, store), req, &info)
}

// ListCerts lists a store's certificates (metadata only).
func (c *Client) ListCerts(ctx context.Context, location, store string) ([]certvault.CertInfo, error) {
	var out struct {
		Certificates []certvault.CertInfo `json:"certificates"`
	}
	return out.Certificates, c.do(ctx, http.MethodGet, storePath(location, store), nil, &out)
}

// RemoveCert deletes a certificate from a store.
func (c *Client) RemoveCert(ctx context.Context, location, store, sha1 string) error {
	return c.do(ctx, http.MethodDelete, storePath(location, store)+"/"+url.PathEscape(sha1), nil, nil)
}

// RotateKey asks certvault to rotate its key-encryption key and rewrap
// every stored private key (POST /v1/admin/rotate-key, admins only; see
// certvault.RotateKeyOptions for finish and retire).
func (c *Client) RotateKey(ctx context.Context, opts certvault.RotateKeyOptions) (certvault.RotateKeyResult, error) {
	var res certvault.RotateKeyResult
	return res, c.do(ctx, http.MethodPost, certvault.RotateKeyPath, opts, &res)
}
