package services

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job/jobstore"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// DevKeyringFile is the dev stack's certvault key-encryption keyring, in the
// data directory (mode 0600).
const DevKeyringFile = "vault.kek"

// loadDevKeyring reads the dev keyring, making a random one on first use.
// Production certvaults take theirs from a file or FERRY_VAULT_KEK.
func loadDevKeyring(dataDir string) (*certvault.Keyring, error) {
	path := filepath.Join(dataDir, DevKeyringFile)
	k, err := certvault.LoadKeyringFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		line := "# ferry dev certvault key-encryption key (keep it secret)\n1:" + base64.StdEncoding.EncodeToString(key) + "\n"
		clear(key)
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("dev: vault keyring: %w", err)
		}
		_, werr := f.WriteString(line)
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			return nil, fmt.Errorf("dev: vault keyring: %w", err)
		}
		return certvault.LoadKeyringFile(path)
	}
	return k, err
}

// vaultServer is certvault's HTTPS API: TLS 1.3 only (its release protocol
// binds to the TLS channel), callers identified by their client
// certificates.
func vaultServer(ctx context.Context, js jetstream.JetStream, store events.Store, keyring *certvault.Keyring,
	auth *identity.Authenticator, cert tls.Certificate, log zerolog.Logger) (*certvault.Vault, *http.Server, error) {
	v, err := certvault.New(ctx, js, store, keyring, log.With().Str("component", "certvault").Logger())
	if err != nil {
		return nil, nil, err
	}
	callerOf := func(r *http.Request) (certvault.Caller, error) {
		s, ok := identity.SessionFrom(r.Context())
		if !ok {
			return certvault.Caller{}, errors.New("no session")
		}
		if err := s.Err(); err != nil {
			return certvault.Caller{}, err
		}
		return certvault.Caller{Principal: s.Principal, Role: string(s.Role)}, nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+identity.SessionPath, auth.SessionHandler())
	mux.Handle(certvault.ReleasePath, v.ReleaseHandler(auth, &jobstore.Repo{Store: store}))
	mux.Handle(certvault.HeadersReleasePath, v.HeadersReleaseHandler(auth, &jobstore.Repo{Store: store}))
	mux.Handle("/", v.Handler(callerOf))
	tlsCfg := identity.ServerTLSConfig(cert, auth.Roots)
	tlsCfg.MinVersion = tls.VersionTLS13
	srv := &http.Server{Handler: auth.Middleware(mux, identity.SessionPath), TLSConfig: tlsCfg}
	return v, srv, nil
}

// vaultReleases is an agent's way to its jobs' keys and write-only header
// values: certvault's release endpoints, reached with the agent's own
// identity.
type vaultReleases struct {
	tls *tls.Config
	url string
}

func (v vaultReleases) Release(ctx context.Context, jobID string) (*tls.Certificate, error) {
	return certvault.Fetch(ctx, v.tls, v.url, jobID)
}

func (v vaultReleases) ReleaseHeaders(ctx context.Context, jobID string) ([]string, error) {
	return certvault.FetchHeaders(ctx, v.tls, v.url, jobID)
}
