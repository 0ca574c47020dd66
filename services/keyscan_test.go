package services_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"software.sslmate.com/src/go-pkcs12"
)

// TestNoKeyBytesAnywhere runs the whole stack with its log at trace level
// into a buffer: client certificates imported with their keys (PEM, and
// PKCS#12 with a password), jobs that present them to an origin that
// requires a client certificate (so the agent gets the keys released),
// and a key-encryption key rotation. Then every log line, every message of
// FERRY_EVENTS and the JSON of the API reads are scanned for the private
// keys (DER, its base64 and hex, the PEM body lines), the PKCS#12 file and
// password, and the key-encryption keys (raw, base64, hex). Any hit fails.
func TestNoKeyBytesAnywhere(t *testing.T) {
	// The scanner must be able to fail: planted secrets are found in lines
	// written the way the stack writes its log.
	t.Run("scanner finds planted secrets", testScannerFindsPlanted)

	ctx := context.Background()
	logs := &lineBuffer{}
	log := zerolog.New(logs).Level(zerolog.TraceLevel).With().Timestamp().Logger()
	clientCA := servicestest.NewCA(t, "keyscan client CA")
	origin := newMTLSOrigin(t, clientCA)
	st := startStackWith(t, stackOptions{caFiles: []string{origin.caFile}, log: &log})
	d, root := st.dev, st.root
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stack log (last lines):\n%s", logs.tail(60))
		}
	})
	api, err := services.Discover(services.ClientConfig{Addr: d.Info().CoordinatorURL, DataDir: d.Info().DataDir})
	if err != nil {
		t.Fatal(err)
	}
	vault, err := services.Discover(services.ClientConfig{Service: "certvault", Addr: d.Info().CertvaultURL, DataDir: d.Info().DataDir})
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{t: t, dev: d, client: api, root: root}
	kekFile := filepath.Join(d.Info().DataDir, services.DevKeyringFile)
	secrets := newSecrets()
	secrets.addKEKs(t, kekFile)

	// The two certificates: ECDSA as PEM, RSA as PKCS#12 with a password.
	pemCert := clientCA.Issue(t, "keyscan-pem", x509.ExtKeyUsageClientAuth)
	pfxCert := rsaClientCert(t, clientCA, "keyscan-pfx")
	password := "pfx-pw-" + hex.EncodeToString(randomBytes(t, 12))
	pfxFile, err := pkcs12.Modern2023.Encode(pfxCert.PrivateKey, pfxCert.Leaf, nil, password)
	if err != nil {
		t.Fatal(err)
	}
	secrets.addKey(t, "pem key", pemCert.PrivateKey.(crypto.Signer))
	secrets.addKey(t, "pfx key", pfxCert.PrivateKey.(crypto.Signer))
	secrets.addBytes("pkcs12 file", pfxFile)
	secrets.addBytes("pkcs12 password", []byte(password))

	var reads [][2]string // API answers: what, JSON
	bundle := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pemCert.Certificate[0]})) + secrets.pemText["pem key"]
	info, err := vault.ImportCert(ctx, "CURRENT_USER", "MY", services.CertImport{PEM: &bundle})
	if err != nil {
		t.Fatal(err)
	}
	pemSHA1 := info.SHA1
	info, err = vault.ImportCert(ctx, "CURRENT_USER", "MY", services.CertImport{PFX: pfxFile, Password: &password})
	if err != nil {
		t.Fatal(err)
	}
	pfxSHA1 := info.SHA1

	// Jobs that present them: the agent gets each key released.
	var jobs []string
	run := func(name, sha string) {
		t.Helper()
		j, err := api.Create(ctx, coordinator.CreateRequest{DisplayName: name,
			Files: []events.FileSpec{{RemoteURL: origin.srv.URL + "/file.bin", LocalName: filepath.ToSlash(filepath.Join(root, name+".bin"))}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := api.SetClientCertificate(ctx, j.ID, services.CertSpec{Location: "CURRENT_USER", Store: "MY", Thumbprint: sha}); err != nil {
			t.Fatal(err)
		}
		s.action(j.ID, "resume")
		got := s.until(j.ID, "TRANSFERRED or ERROR", func(j *job.Job) bool { return j.State == job.Transferred || j.State == job.Errored })
		if got.State != job.Transferred {
			t.Fatalf("job %s: %s %+v", name, got.State, got.Error)
		}
		s.action(j.ID, "complete")
		s.until(j.ID, "ACKNOWLEDGED", state(job.Acknowledged))
		if !origin.saw(sha) {
			t.Fatalf("the origin did not see the certificate %s", sha)
		}
		jobs = append(jobs, j.ID)
	}
	run("pem-before", pemSHA1)
	run("pfx-before", pfxSHA1)

	// Rotate the key-encryption key (and retire the old one); the keys
	// still go out after it.
	rot, err := vault.RotateKey(ctx, certvault.RotateKeyOptions{Retire: true})
	if err != nil {
		t.Fatal(err)
	}
	if rot.ActiveVersion != 2 || rot.Rewrapped != 2 || !slices.Equal(rot.Retired, []int{1}) {
		t.Fatalf("rotate-key: %+v", rot)
	}
	secrets.addKEKs(t, kekFile)
	run("pfx-after", pfxSHA1)

	// The API reads, as the wire carries them.
	get := func(c *services.Client, path string) {
		t.Helper()
		resp, err := c.HTTP.Get(c.BaseURL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		reads = append(reads, [2]string{"GET " + path, string(b)})
	}
	for _, id := range jobs {
		get(api, "/v1/jobs/"+id)
		get(api, "/v1/jobs/"+id+"/client-certificate")
	}
	get(api, "/v1/jobs?all=true")
	get(vault, "/v1/stores/CURRENT_USER/MY/certificates")
	get(vault, "/v1/stores/CURRENT_USER/MY/certificates/"+pfxSHA1)
	resp, err := vault.HTTP.Post(vault.BaseURL+certvault.RotateKeyPath, "application/json", strings.NewReader(`{"finish": true}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	reads = append(reads, [2]string{"POST " + certvault.RotateKeyPath, string(b)})

	// The scan. Each source must hold what it is supposed to, or the scan
	// proves nothing.
	evs := streamMessages(t, d.NATS().JS, events.StreamName)
	lines := logs.lines()
	wantIn(t, "the log", strings.Join(lines, "\n"), `"message":"key released"`, `"level":"debug"`, "key-encryption key rotation")
	wantIn(t, "the event stream", strings.Join(evs, "\n"), events.TypeCertificateImported, events.TypeKeyReleased, events.TypeVaultKeysRewrapped)
	for _, l := range secrets.scan(lines, evs, reads) {
		t.Error(l)
	}
	t.Logf("scanned %d log lines, %d events and %d API answers for %d forms of secrets", len(lines), len(evs), len(reads), len(secrets.forms))
}

// testScannerFindsPlanted: each kind of secret, written into a log line
// the way zerolog writes one, is found.
func testScannerFindsPlanted(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec := newSecrets()
	sec.addKey(t, "key", key)
	kek := randomBytes(t, 32)
	sec.addBytes("KEK 1", kek)
	sec.addBytes("pkcs12 password", []byte("pfx-pw-planted"))
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	pemLines := strings.Split(sec.pemText["key"], "\n")
	for name, value := range map[string]string{
		"key base64":        base64.StdEncoding.EncodeToString(der),
		"key base64 inside": "xy" + base64.StdEncoding.EncodeToString(append([]byte{7}, der...)),
		"key base64url":     base64.RawURLEncoding.EncodeToString(der),
		"key hex":           hex.EncodeToString(der),
		"key HEX":           strings.ToUpper(hex.EncodeToString(der)),
		"key PEM line":      pemLines[2],
		"key PEM block":     sec.pemText["key"],
		"KEK base64":        base64.StdEncoding.EncodeToString(kek),
		"KEK base64url":     base64.URLEncoding.EncodeToString(kek),
		"KEK hex":           hex.EncodeToString(kek),
		"the pfx password":  "pfx-pw-planted",
		"password in a URL": "https://u:pfx-pw-planted@origin/",
	} {
		var buf bytes.Buffer
		l := zerolog.New(&buf)
		l.Info().Str("value", value).Msg("planted")
		if hits := sec.find("planted line", buf.Bytes()); len(hits) == 0 {
			t.Errorf("the scanner missed %s in %s", name, buf.String())
		}
	}
	// And finds nothing in an honest line.
	var buf bytes.Buffer
	l := zerolog.New(&buf)
	l.Info().Str("sha1", strings.Repeat("ab", 20)).Int("active", 2).Msg("key released")
	if hits := sec.find("honest line", buf.Bytes()); len(hits) != 0 {
		t.Errorf("false positives: %v", hits)
	}
}

// secrets are the byte strings that must appear nowhere, in every form
// they could take in text.
type secrets struct {
	forms   map[string][]byte
	pemText map[string]string // PEM of each key, for importing
}

func newSecrets() *secrets {
	return &secrets{forms: map[string][]byte{}, pemText: map[string]string{}}
}

// addBytes adds b raw, in hex (both cases) and in base64 (standard and URL
// alphabets, with or without padding): base64 of b inside a longer value
// depends on b's offset modulo 3, so each of the three alignments is
// added, without its last quantum, which depends on what follows.
func (s *secrets) addBytes(name string, b []byte) {
	s.forms[name] = bytes.Clone(b)
	s.forms[name+" hex"] = []byte(hex.EncodeToString(b))
	s.forms[name+" HEX"] = []byte(strings.ToUpper(hex.EncodeToString(b)))
	for off := range 3 {
		for alpha, enc := range map[string]*base64.Encoding{"std": base64.StdEncoding, "url": base64.URLEncoding} {
			e := enc.EncodeToString(b[off:])
			if len(e) > 12 {
				s.forms[fmt.Sprintf("%s base64 %s@%d", name, alpha, off)] = []byte(e[:len(e)-4])
			}
		}
	}
}

// addKey adds a private key: its PKCS#8 DER, its algorithm-specific DER
// (SEC1, PKCS#1), and each body line of its PEM.
func (s *secrets) addKey(t *testing.T, name string, key crypto.Signer) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	s.addBytes(name+" PKCS#8 DER", der)
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		sec1, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		s.addBytes(name+" SEC1 DER", sec1)
	case *rsa.PrivateKey:
		s.addBytes(name+" PKCS#1 DER", x509.MarshalPKCS1PrivateKey(k))
	}
	p := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	s.pemText[name] = p
	for i, line := range strings.Split(strings.TrimSpace(p), "\n") {
		if !strings.HasPrefix(line, "-----") && len(line) >= 16 {
			s.forms[fmt.Sprintf("%s PEM line %d", name, i)] = []byte(line)
		}
	}
}

// addKEKs adds every key of the keyring file.
func (s *secrets) addKEKs(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, k, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.HasPrefix(v, "#") {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(raw) != certvault.KEKSize {
			t.Fatalf("keyring file %s: version %s is not a base64 key", path, v)
		}
		s.addBytes("KEK "+v, raw)
	}
}

// find names every form of a secret that data holds.
// scan looks for the secrets in every log line, event message and API
// answer (what, JSON) and returns one line per leak found.
func (s *secrets) scan(lines, evs []string, reads [][2]string) []string {
	var leaks []string
	for i, l := range lines {
		leaks = append(leaks, s.find(fmt.Sprintf("log line %d", i+1), []byte(l))...)
	}
	for i, m := range evs {
		leaks = append(leaks, s.find(fmt.Sprintf("event message %d", i+1), []byte(m))...)
	}
	for _, r := range reads {
		leaks = append(leaks, s.find("the answer to "+r[0], []byte(r[1]))...)
	}
	return leaks
}

func (s *secrets) find(where string, data []byte) []string {
	var hits []string
	for name, f := range s.forms {
		if bytes.Contains(data, f) {
			hits = append(hits, fmt.Sprintf("%s holds the %s", where, name))
		}
	}
	slices.Sort(hits)
	return hits
}

func wantIn(t *testing.T, where, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Fatalf("%s has no %q: the scan would not cover what it should", where, w)
		}
	}
}

// streamMessages returns each message of a stream as its subject, headers
// and body.
func streamMessages(t *testing.T, js jetstream.JetStream, name string) []string {
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
	var out []string
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		b.WriteString(m.Subject + "\n")
		for k, vs := range m.Header {
			b.WriteString(k + ": " + strings.Join(vs, ", ") + "\n")
		}
		b.Write(m.Data)
		out = append(out, b.String())
	}
	return out
}

// lineBuffer is the stack's log sink.
type lineBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lineBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimRight(l.b.String(), "\n"), "\n")
}

func (l *lineBuffer) tail(n int) string {
	ls := l.lines()
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// mtlsOrigin is an HTTPS origin that requires a client certificate of one
// CA and records the SHA-1 of each it verified.
type mtlsOrigin struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	seen   []string
}

func newMTLSOrigin(t *testing.T, clients *servicestest.CA) *mtlsOrigin {
	t.Helper()
	serverCA := servicestest.NewCA(t, "keyscan origin CA")
	o := &mtlsOrigin{caFile: serverCA.File}
	body := bytes.Repeat([]byte("ferry keyscan "), 300)
	o.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "client certificate required", http.StatusForbidden)
			return
		}
		sum := sha1.Sum(r.TLS.VerifiedChains[0][0].Raw)
		o.mu.Lock()
		o.seen = append(o.seen, hex.EncodeToString(sum[:]))
		o.mu.Unlock()
		http.ServeContent(w, r, "file.bin", time.Unix(1700000000, 0), bytes.NewReader(body))
	}))
	o.srv.EnableHTTP2 = false
	o.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCA.Issue(t, "localhost", x509.ExtKeyUsageServerAuth)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clients.Pool,
		MinVersion:   tls.VersionTLS12,
	}
	o.srv.StartTLS()
	t.Cleanup(o.srv.Close)
	return o
}

func (o *mtlsOrigin) saw(sha string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Contains(o.seen, sha)
}

// rsaClientCert issues an RSA-2048 client certificate from ca.
func rsaClientCert(t *testing.T, ca *servicestest.CA, cn string) tls.Certificate {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
