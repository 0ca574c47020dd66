package certvault

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/eventstest"
	"github.com/ferry-dev/ferry/job"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"software.sslmate.com/src/go-pkcs12"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wantCode fails unless err carries the code sym with HRESULT hr.
func wantCode(t testing.TB, err error, sym, hr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s (%s)", sym, hr)
	}
	var je *job.Error
	if !errors.As(err, &je) {
		t.Fatalf("error %v carries no code, want %s", err, sym)
	}
	if je.Code.Symbol != sym || je.Code.HResultString() != hr {
		t.Fatalf("error %v: code %s (%s), want %s (%s)", err, je.Code.Symbol, je.Code.HResultString(), sym, hr)
	}
}

// Codes as the tests expect them, symbol and HRESULT spelled out.
const (
	hrAccessDenied = "0x80070005"
	hrNotImpl      = "0x80004001"
	hrFileNotFound = "0x80070002"
	hrCryptNotFnd  = "0x80092004"
	hrNullRef      = "0x800706F4"
	hrBadStub      = "0x800706F7"
	hrTooLong      = "0x80200021"
	hrInvalidArg   = "0x80070057"
	hrUnavailable  = "0x80070426"
)

// testPKI is a throwaway CA that issues leaves.
type testPKI struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

var serialCounter atomic.Int64

func serial() *big.Int { return big.NewInt(time.Now().UnixNano() + serialCounter.Add(1)) }

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "Test Root CA", Organization: []string{"ferry tests"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testPKI{key: k, cert: c}
}

// leafOpts describes a leaf; the zero value is a P-256 client certificate
// for CN=client valid now.
type leafOpts struct {
	subject   pkix.Name
	eku       []x509.ExtKeyUsage
	noEKU     bool
	keyUsage  x509.KeyUsage
	key       crypto.Signer
	notBefore time.Time
	notAfter  time.Time
}

func (p *testPKI) issue(t testing.TB, o leafOpts) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	if o.key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		o.key = k
	}
	if len(o.subject.Names) == 0 && o.subject.CommonName == "" && len(o.subject.ExtraNames) == 0 {
		o.subject = pkix.Name{CommonName: "client"}
	}
	if o.eku == nil && !o.noEKU {
		o.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if o.keyUsage == 0 {
		o.keyUsage = x509.KeyUsageDigitalSignature
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(12 * time.Hour)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: o.subject,
		NotBefore: o.notBefore, NotAfter: o.notAfter, KeyUsage: o.keyUsage, ExtKeyUsage: o.eku}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, o.key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, o.key
}

// rsaKey is one 2048-bit RSA key per test binary: generating them is slow.
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func ed25519Key(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func certPEM(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// keyPEM encodes key as PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY")
// or SEC1 ("EC PRIVATE KEY").
func keyPEM(t testing.TB, key crypto.Signer, typ string) []byte {
	t.Helper()
	var der []byte
	var err error
	switch typ {
	case "PRIVATE KEY":
		der, err = x509.MarshalPKCS8PrivateKey(key)
	case "RSA PRIVATE KEY":
		der = x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))
	case "EC PRIVATE KEY":
		der, err = x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	default:
		t.Fatalf("key type %s", typ)
	}
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pfx(t testing.TB, enc *pkcs12.Encoder, key crypto.Signer, leaf *x509.Certificate, cas []*x509.Certificate, password string) []byte {
	t.Helper()
	b, err := enc.Encode(key, leaf, cas, password)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// secretForms returns the forms in which key material could show up if it
// leaked: the PKCS#8 DER, the other DER encodings, PEM text, base64 and hex
// of each, and the raw private scalar.
func secretForms(t testing.TB, key crypto.Signer) map[string][]byte {
	t.Helper()
	forms := map[string][]byte{}
	add := func(name string, b []byte) {
		if len(b) == 0 {
			return
		}
		forms[name] = b
		forms[name+" hex"] = []byte(hex.EncodeToString(b))
		// Base64 of b inside a longer value is aligned to b's offset
		// modulo 3: look for all three alignments, without the last
		// quantum, which depends on what follows.
		for k := range 3 {
			if enc := base64.StdEncoding.EncodeToString(b[k:]); len(enc) > 8 {
				forms[fmt.Sprintf("%s base64@%d", name, k)] = []byte(enc[:len(enc)-4])
			}
		}
	}
	add("pkcs8", pkcs8(t, key))
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		sec1, _ := x509.MarshalECPrivateKey(k)
		add("sec1", sec1)
		d, _ := k.Bytes()
		add("scalar", d)
	case *rsa.PrivateKey:
		add("pkcs1", x509.MarshalPKCS1PrivateKey(k))
		add("prime", k.Primes[0].Bytes())
	case ed25519.PrivateKey:
		add("seed", k.Seed())
	}
	pemText := keyPEM(t, key, "PRIVATE KEY")
	// The body of the PEM block (its base64 lines) without the armour.
	lines := strings.Split(strings.TrimSpace(string(pemText)), "\n")
	forms["pem body line"] = []byte(lines[1])
	return forms
}

// scanFor fails if any form appears in b.
func scanFor(t testing.TB, where string, b []byte, forms map[string][]byte) {
	t.Helper()
	for name, f := range forms {
		if bytes.Contains(b, f) {
			t.Errorf("%s contains the key's %s", where, name)
		}
	}
}

// streamBytes returns the subjects, headers and bodies of every message of
// a stream, concatenated: what is on disk.
func streamBytes(t testing.TB, js jetstream.JetStream, name string) []byte {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString(m.Subject)
		for k, vs := range m.Header {
			out.WriteString(k + ":" + strings.Join(vs, ",") + "\n")
		}
		out.Write(m.Data)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func testKEK(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, KEKSize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func testKeyring(t testing.TB, keys map[int][]byte) *Keyring {
	t.Helper()
	k, err := NewKeyring(keys)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// env is a vault on an embedded JetStream.
type env struct {
	t     *testing.T
	js    jetstream.JetStream
	store *auditStore
	v     *Vault
	kek   []byte
	log   *syncBuffer
	now   time.Time
}

// auditStore is the real event store with a switch that makes Append fail,
// as an unavailable audit log would. It is not a NATS mock: reads and
// successful appends go to JetStream.
type auditStore struct {
	events.Store
	fail atomic.Bool
}

func (s *auditStore) Append(ctx context.Context, subject string, expectedLast uint64, evs []events.Event) (uint64, error) {
	if s.fail.Load() {
		return 0, errors.New("audit log unavailable")
	}
	return s.Store.Append(ctx, subject, expectedLast, evs)
}

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func newEnv(t *testing.T) *env {
	t.Helper()
	_, _, js := eventstest.StartServer(t)
	ctx := context.Background()
	if err := events.EnsureStream(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := events.NewJetStreamStore(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, js: js, store: &auditStore{Store: st}, kek: testKEK(t), log: &syncBuffer{}}
	e.v = e.open(testKeyring(t, map[int][]byte{1: e.kek}))
	return e
}

// open makes another vault on the same bucket and event log.
func (e *env) open(k *Keyring) *Vault {
	e.t.Helper()
	v, err := New(context.Background(), e.js, e.store, k, zerolog.New(e.log))
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// vaultEvents returns the vault events in the log, in order.
func (e *env) vaultEvents() []events.Event {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	last, err := e.lastSeq(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []events.Event
	if last == 0 {
		return nil
	}
	err = e.store.Subscribe(ctx, events.SubjectPrefix+events.KindVault+".>", 0, func(ev events.Event) error {
		out = append(out, ev)
		if ev.Seq >= last {
			cancel()
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		e.t.Fatal(err)
	}
	return out
}

// lastSeq is the last sequence of the event stream.
func (e *env) lastSeq(ctx context.Context) (uint64, error) {
	st, err := e.js.Stream(ctx, events.StreamName)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

var (
	alice   = Caller{Principal: "spiffe://ferry.test/user/alice", Role: RoleUser}
	bob     = Caller{Principal: "spiffe://ferry.test/user/bob", Role: RoleUser}
	admin   = Caller{Principal: "x509:CN=Ada Admin,O=ferry", Role: RoleAdmin}
	agent   = Caller{Principal: "spiffe://ferry.test/agent/host1", Role: RoleAgent}
	service = Caller{Principal: "spiffe://ferry.test/service/coordinator", Role: RoleService}
)

// pemImport is a P-256 client certificate with its PKCS#8 key as PEM.
func pemImport(t testing.TB, p *testPKI, o leafOpts) (ImportRequest, *x509.Certificate, crypto.Signer) {
	t.Helper()
	c, k := p.issue(t, o)
	return ImportRequest{PEM: append(certPEM(c), keyPEM(t, k, "PRIVATE KEY")...)}, c, k
}

func sha1Of(c *x509.Certificate) [20]byte { return sha1.Sum(c.Raw) }

// subjectOf is O=o, OU=ous…, CN=cn: encoded in that order, so its BITS
// name is "o, ous…, cn".
func subjectOf(o string, ous []string, cn string) pkix.Name {
	n := pkix.Name{CommonName: cn, OrganizationalUnit: ous}
	if o != "" {
		n.Organization = []string{o}
	}
	return n
}
