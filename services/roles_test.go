package services

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// selfSigned makes a client certificate with its key, as PEM.
func selfSigned(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := x509.MarshalPKCS8PrivateKey(key)
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})...)
}

func issue(t *testing.T, ca *identity.CA, role identity.Role, name string, ips ...net.IP) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(identity.IssueRequest{Role: role, Name: name, IPs: ips})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// syncLog is a log sink for concurrent writers.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// separateVault is certvault's real HTTPS server (vaultServer) on loopback,
// as `ferry certvault run` serves it, with its own CA and trust domain.
type separateVault struct {
	vault *certvault.Vault
	js    jetstream.JetStream
	url   string
	ca    *identity.CA
	log   *syncLog
}

// vaultTrustDomain is the trust domain of a separateVault's CA.
const vaultTrustDomain = "vaultclient.test"

// startSeparateVault starts a separateVault whose roles map gives the
// principals of overrides their role; the others have the role their
// SPIFFE ID names.
func startSeparateVault(t *testing.T, overrides map[string]identity.Role) *separateVault {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	_, _, js := eventstest.StartServer(t)
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	keyring, err := certvault.NewKeyring(map[int][]byte{1: kek})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(vaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	auth := &identity.Authenticator{Roots: ca.Pool(), Roles: identity.RoleMap{TrustDomain: ca.TrustDomain(), Overrides: overrides}}
	logs := &syncLog{}
	vault, srv, err := vaultServer(ctx, js, store, keyring, auth, issue(t, ca, identity.RoleService, "certvault", net.IPv4(127, 0, 0, 1)),
		zerolog.New(logs).Level(zerolog.TraceLevel))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ctx, srv, ln, srv.TLSConfig) }()
	t.Cleanup(func() { cancel(); <-done })
	return &separateVault{vault: vault, js: js, url: "https://" + ln.Addr().String(), ca: ca, log: logs}
}

func (s *separateVault) principal(r identity.Role, name string) string {
	return identity.SPIFFEID{TrustDomain: s.ca.TrustDomain(), Role: r, Name: name}.String()
}

// client is a VaultClient with the identity role/name of the vault's CA.
func (s *separateVault) client(t *testing.T, role identity.Role, name string) *VaultClient {
	return NewVaultClient(s.url, identity.ClientTLSConfig(issue(t, s.ca, role, name), s.ca.Pool()))
}

// TestVaultLookup: the coordinator's certvault client, against certvault's
// real HTTPS server. An owner's own stores are read through their admin
// address when the coordinator is an admin in certvault; the owner's rights
// are applied first; shared stores need nothing; by-subject lookups are
// not available.
func TestVaultLookup(t *testing.T) {
	ctx := context.Background()
	sv := startSeparateVault(t, map[string]identity.Role{
		identity.SPIFFEID{TrustDomain: vaultTrustDomain, Role: identity.RoleService, Name: "coordinator"}.String(): identity.RoleAdmin})
	vault, ca, url, principal := sv.vault, sv.ca, sv.url, sv.principal

	alice := certvault.Caller{Principal: principal(identity.RoleUser, "alice"), Role: "user"}
	bob := certvault.Caller{Principal: principal(identity.RoleUser, "bob"), Role: "user"}
	admin := certvault.Caller{Principal: principal(identity.RoleAdmin, "root"), Role: "admin"}
	mine, err := vault.Import(ctx, alice, certvault.CurrentUser, "MY", certvault.ImportRequest{PEM: selfSigned(t, "alice")})
	if err != nil {
		t.Fatal(err)
	}
	shared, err := vault.Import(ctx, admin, certvault.LocalMachine, "MY", certvault.ImportRequest{PEM: selfSigned(t, "machine")})
	if err != nil {
		t.Fatal(err)
	}
	sum := func(h string) (s [20]byte) { b, _ := hex.DecodeString(h); copy(s[:], b); return }

	asAdmin := NewVaultLookup(url, identity.ClientTLSConfig(issue(t, ca, identity.RoleService, "coordinator"), ca.Pool()))
	plain := NewVaultLookup(url, identity.ClientTLSConfig(issue(t, ca, identity.RoleService, "coordinator2"), ca.Pool()))

	info, err := asAdmin.Lookup(ctx, alice, certvault.CurrentUser, "MY", sum(mine.SHA1))
	if err != nil || info.SHA1 != mine.SHA1 || info.Location != certvault.CurrentUser || info.Store != "MY" {
		t.Fatalf("alice's own certificate: %+v, %v", info, err)
	}
	for _, c := range []struct {
		name   string
		l      *VaultLookup
		owner  certvault.Caller
		loc    certvault.Location
		store  string
		sha1   string
		code   job.Code
		detail string
	}{
		{"another user's CURRENT_USER is theirs", asAdmin, bob, certvault.CurrentUser, "MY", mine.SHA1, job.CRYPT_E_NOT_FOUND, ""},
		{"a user may not address USERS", asAdmin, alice, certvault.Users, bob.Principal + `\MY`, mine.SHA1, job.E_ACCESSDENIED, "for admins"},
		{"a user has no CURRENT_SERVICE", asAdmin, alice, certvault.CurrentService, "MY", mine.SHA1, job.E_ACCESSDENIED, "CURRENT_SERVICE"},
		{"name checked first", asAdmin, alice, certvault.CurrentUser, "", mine.SHA1, job.RPC_X_NULL_REF_POINTER, ""},
		{"coordinator not admin in certvault", plain, alice, certvault.CurrentUser, "MY", mine.SHA1, job.ERROR_SERVICE_UNAVAILABLE, "admin role"},
	} {
		_, err := c.l.Lookup(ctx, c.owner, c.loc, c.store, sum(c.sha1))
		if job.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.detail) {
			t.Errorf("%s: %v, want %s", c.name, err, c.code.Symbol)
		}
	}
	// Shared stores need no admin.
	if info, err := plain.Lookup(ctx, alice, certvault.LocalMachine, "MY", sum(shared.SHA1)); err != nil || info.SHA1 != shared.SHA1 {
		t.Fatalf("LOCAL_MACHINE through a non-admin coordinator: %+v %v", info, err)
	}
	if info, err := asAdmin.Lookup(ctx, admin, certvault.Users, alice.Principal+`\MY`, sum(mine.SHA1)); err != nil || info.Store != alice.Principal+`\MY` {
		t.Fatalf("an admin owner naming USERS: %+v %v", info, err)
	}
	if _, err := asAdmin.LookupBySubject(ctx, alice, certvault.CurrentUser, "MY", "alice"); job.CodeOf(err) != job.E_NOTIMPL {
		t.Fatalf("by subject: %v, want E_NOTIMPL", err)
	}
	gone := NewVaultLookup("https://127.0.0.1:1", identity.ClientTLSConfig(issue(t, ca, identity.RoleService, "coordinator"), ca.Pool()))
	if _, err := gone.Lookup(ctx, alice, certvault.LocalMachine, "MY", sum(shared.SHA1)); job.CodeOf(err) != job.ERROR_SERVICE_UNAVAILABLE {
		t.Fatalf("certvault unreachable: %v", err)
	}
}

// TestHealth: 503 until NATS is connected and the role runs; metrics in the
// text format.
func TestHealth(t *testing.T) {
	_, nc, _ := eventstest.StartServer(t)
	h := NewHealth("coordinator", "c1")
	srv := httptest.NewServer(h.Handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "not connected to NATS") {
		t.Fatalf("before NATS: %d %s", code, body)
	}
	h.SetConn(nc)
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "not running") {
		t.Fatalf("before running: %d %s", code, body)
	}
	h.SetRunning(true)
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, `"status":"ok"`) {
		t.Fatalf("running: %d %s", code, body)
	}
	api := httptest.NewServer(h.CountRequests(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	})))
	defer api.Close()
	if resp, err := http.Get(api.URL); err == nil {
		resp.Body.Close()
	}
	_, metrics := get("/metrics")
	for _, want := range []string{
		`ferry_up{role="coordinator",id="c1"} 1`,
		`ferry_nats_connected{role="coordinator",id="c1"} 1`,
		"# TYPE ferry_nats_reconnects_total counter",
		`ferry_http_responses_total{role="coordinator",id="c1",code="4xx"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, metrics)
		}
	}
	nc.Close()
	if code, _ := get("/healthz"); code != 503 {
		t.Fatalf("after the connection closed: %d", code)
	}
}

// TestConnectNATSUnreachable: a clear error within the connect timeout.
func TestConnectNATSUnreachable(t *testing.T) {
	start := time.Now()
	_, err := ConnectNATS(context.Background(), NATSConfig{URL: "nats://127.0.0.1:1", ConnectTimeout: Duration(300 * time.Millisecond)}, "test/x", true, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "could be reached within 300ms") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s", d)
	}
}

// TestReplicatedJS: an owner (coordinator, certvault) brings ferry's
// streams to their configuration; an agent uses them as they are.
func TestReplicatedJS(t *testing.T) {
	ctx := context.Background()
	ns, _, js := eventstest.StartServer(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: dispatch.StreamName, Subjects: []string{"ferry.cmd.>"},
		Retention: jetstream.WorkQueuePolicy, MaxMsgSize: 1234}); err != nil {
		t.Fatal(err)
	}
	maxSize := func() int32 {
		s, err := js.Stream(ctx, dispatch.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.MaxMsgSize
	}
	for _, owner := range []bool{false, true} {
		n, err := ConnectNATS(ctx, NATSConfig{URL: ns.ClientURL(), ConnectTimeout: Duration(5 * time.Second)}, "test/x", owner, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dispatch.EnsureStream(ctx, n.JS, dispatch.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		n.Close()
		if got := maxSize(); owner != (got != 1234) {
			t.Fatalf("owner %v: stream max message size %d after EnsureStream", owner, got)
		}
	}
	// The event stream was made by ConnectNATS.
	if _, err := js.Stream(ctx, events.StreamName); err != nil {
		t.Fatalf("event stream: %v", err)
	}
}

// recordingJS records the configurations ferry's packages ask JetStream
// for, answering as if nothing existed.
type recordingJS struct {
	jetstream.JetStream
	streams map[string]int
	buckets map[string]int
}

func (r *recordingJS) Stream(context.Context, string) (jetstream.Stream, error) {
	return nil, jetstream.ErrStreamNotFound
}

func (r *recordingJS) KeyValue(context.Context, string) (jetstream.KeyValue, error) {
	return nil, jetstream.ErrBucketNotFound
}

func (r *recordingJS) CreateOrUpdateStream(_ context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	r.streams[cfg.Name] = cfg.Replicas
	return nil, nil
}

func (r *recordingJS) CreateOrUpdateKeyValue(_ context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	r.buckets[cfg.Bucket] = cfg.Replicas
	return nil, nil
}

// TestReplicasReachEveryResource: with replicas 3 (a 3-node cluster), the
// event log, the command stream and the buckets are all asked for R3,
// whatever the packages that create them ask for.
func TestReplicasReachEveryResource(t *testing.T) {
	ctx := context.Background()
	for _, adopt := range []bool{false, true} {
		rec := &recordingJS{streams: map[string]int{}, buckets: map[string]int{}}
		js := &replicatedJS{JetStream: rec, replicas: 3, adopt: adopt}
		if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := dispatch.EnsureStream(ctx, js, dispatch.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := dispatch.EnsureSettingsBucket(ctx, js); err != nil {
			t.Fatal(err)
		}
		if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "ferry_jobs", Replicas: 1}); err != nil {
			t.Fatal(err)
		}
		for name, n := range rec.streams {
			if n != 3 {
				t.Errorf("adopt %v: stream %s asked with %d replicas", adopt, name, n)
			}
		}
		for name, n := range rec.buckets {
			if n != 3 {
				t.Errorf("adopt %v: bucket %s asked with %d replicas", adopt, name, n)
			}
		}
		if len(rec.streams) != 2 || len(rec.buckets) != 2 {
			t.Errorf("adopt %v: recorded %v %v", adopt, rec.streams, rec.buckets)
		}
	}
}
