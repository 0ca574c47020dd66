package certvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hpke"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/job"
)

// maxReleaseAnswer bounds the answer Fetch reads (a chain and a sealed key).
const maxReleaseAnswer = 1 << 20

// Fetch asks certvault at vaultURL (e.g. "https://vault.example:8443") for
// the client certificate of job jobID: it makes a one-time X25519 key pair,
// sends POST /v1/releases on a TLS connection of its own with the
// connection's Channel-Binding (identity.DoBound; tlsCfg carries the
// agent's identity and the vault's roots), opens the sealed private key with
// the same channel binding and the grant ID, and returns the chain with the
// key. Intermediate copies of the key bytes are zeroed.
//
// A refusal is returned as the *job.Error of the vault's problem document
// (E_ACCESSDENIED, BG_E_INVALID_STATE, CRYPT_E_NOT_FOUND, …).
func Fetch(ctx context.Context, tlsCfg *tls.Config, vaultURL, jobID string) (*tls.Certificate, error) {
	raw, priv, binding, err := postRelease(ctx, tlsCfg, vaultURL, ReleasePath, jobID)
	defer clear(raw)
	if err != nil {
		return nil, err
	}
	var rel Release
	if err := json.Unmarshal(raw, &rel); err != nil {
		return nil, fmt.Errorf("certvault: release: decode the answer: %w", err)
	}
	defer clear(rel.SealedKey)
	switch {
	case rel.Suite != ReleaseSuite:
		return nil, fmt.Errorf("certvault: release: unexpected suite %q", rel.Suite)
	case len(rel.Chain) == 0:
		return nil, errors.New("certvault: release: the answer has no certificate")
	case rel.GrantID == "":
		return nil, errors.New("certvault: release: the answer has no grant ID")
	}
	der, err := hpke.Open(priv, releaseKDF, releaseAEAD, releaseInfo(binding, rel.GrantID), rel.SealedKey)
	if err != nil {
		return nil, fmt.Errorf("certvault: release: the sealed key does not open: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	clear(der)
	if err != nil {
		return nil, fmt.Errorf("certvault: release: parse the released key: %w", err)
	}
	leaf, err := x509.ParseCertificate(rel.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("certvault: release: parse the certificate: %w", err)
	}
	if sum := sha1.Sum(leaf.Raw); hex.EncodeToString(sum[:]) != rel.SHA1 {
		return nil, errors.New("certvault: release: the certificate does not have the thumbprint the answer names")
	}
	signer, ok := key.(crypto.Signer)
	pub, ok2 := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !ok2 || !pub.Equal(signer.Public()) {
		return nil, errors.New("certvault: release: the released key does not match the certificate")
	}
	return &tls.Certificate{Certificate: rel.Chain, PrivateKey: key, Leaf: leaf}, nil
}

// postRelease sends a release request for jobID to path (ReleasePath,
// HeadersReleasePath) with a fresh one-time HPKE key pair, on a connection
// of its own bound by its Channel-Binding, and returns the body of a 200
// answer (the caller clears it), the key pair, and the connection's channel
// binding. Another answer is returned as its error.
func postRelease(ctx context.Context, tlsCfg *tls.Config, vaultURL, path, jobID string) ([]byte, hpke.PrivateKey, string, error) {
	priv, err := releaseKEM.GenerateKey()
	if err != nil {
		return nil, nil, "", fmt.Errorf("certvault: release: make a key pair: %w", err)
	}
	body, err := json.Marshal(ReleaseRequest{JobID: jobID, HPKEPublicKey: priv.PublicKey().Bytes()})
	if err != nil {
		return nil, nil, "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(vaultURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, "", fmt.Errorf("certvault: release: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := identity.DoBound(ctx, tlsCfg, req)
	if err != nil {
		return nil, nil, "", fmt.Errorf("certvault: release: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReleaseAnswer+1))
	_ = resp.Body.Close()
	if err != nil {
		clear(raw)
		return nil, nil, "", fmt.Errorf("certvault: release: read the answer: %w", err)
	}
	if len(raw) > maxReleaseAnswer {
		clear(raw)
		return nil, nil, "", fmt.Errorf("certvault: release: the answer is larger than %d bytes", maxReleaseAnswer)
	}
	if resp.StatusCode != http.StatusOK {
		err := releaseError(resp, raw)
		clear(raw)
		return nil, nil, "", err
	}
	binding, err := identity.ChannelBinding(resp.TLS)
	if err != nil {
		clear(raw)
		return nil, nil, "", fmt.Errorf("certvault: release: %w", err)
	}
	return raw, priv, binding, nil
}

// releaseError turns a refusal into the *job.Error of its problem document.
func releaseError(resp *http.Response, raw []byte) error {
	var p Problem
	if err := json.Unmarshal(raw, &p); err == nil && p.Code != "" {
		if c, ok := job.LookupCode(p.Code); ok {
			c.Status = resp.StatusCode
			return &job.Error{Code: c, Detail: p.Detail}
		}
	}
	const show = 200
	text := strings.TrimSpace(string(raw))
	if len(text) > show {
		text = text[:show] + "…"
	}
	return fmt.Errorf("certvault: release: the vault answered %s: %s", resp.Status, text)
}
