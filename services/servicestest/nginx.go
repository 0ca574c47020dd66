package servicestest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CA is a throwaway ECDSA P-256 certificate authority for tests.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// File is a PEM file holding Cert.
	File string
	Pool *x509.CertPool
}

var caSerial struct {
	sync.Mutex
	n int64
}

func nextCASerial() *big.Int {
	caSerial.Lock()
	defer caSerial.Unlock()
	caSerial.n++
	return big.NewInt(time.Now().UnixNano() + caSerial.n)
}

// NewCA creates a CA and writes its certificate to a PEM file in a
// temporary directory.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextCASerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key, File: file, Pool: pool}
}

// Issue signs a leaf for the given use (x509.ExtKeyUsageServerAuth or
// ExtKeyUsageClientAuth) with the given common name; server leaves are
// valid for localhost, 127.0.0.1 and ::1.
func (ca *CA) Issue(t testing.TB, cn string, use x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextCASerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{use},
	}
	if use == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
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

// writeKeyPair writes cert and key as PEM files.
func writeKeyPair(t testing.TB, c tls.Certificate, certFile, keyFile string) {
	t.Helper()
	var certPEM bytes.Buffer
	for _, der := range c.Certificate {
		pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, certPEM.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// NginxOptions configures StartNginx.
type NginxOptions struct {
	// Root is the directory tree served (required).
	Root string
	// ClientCAFile is the PEM file of the CA whose client certificates
	// nginx accepts (ssl_client_certificate; required).
	ClientCAFile string
}

// Nginx is an nginx process serving Root over TLS as a third-party origin
// with client authentication, on two loopback ports.
type Nginx struct {
	// OnURL is the base URL (no trailing slash) of the server with
	// "ssl_verify_client on"; OptionalURL of the one with
	// "ssl_verify_client optional".
	OnURL, OptionalURL string
	// CAFile is the PEM file of the throwaway CA of nginx's server
	// certificate (valid for 127.0.0.1 and localhost).
	CAFile string
	// CA signed the server certificate.
	CA *CA

	dir      string
	onPort   int
	optPort  int
	cmd      *exec.Cmd
	exited   chan struct{}
	waitErr  error
	stderr   *bytes.Buffer
	stopOnce sync.Once
}

// NginxRequest is one line of the access log.
type NginxRequest struct {
	Port        int
	Status      int
	Verify      string // $ssl_client_verify: SUCCESS, FAILED:<reason>, NONE
	Fingerprint string // $ssl_client_fingerprint: lowercase hex SHA-1 of the DER, "" without one
	Request     string // $request
}

// On reports whether the request came to the "ssl_verify_client on" server.
func (n *Nginx) On(r NginxRequest) bool { return r.Port == n.onPort }

// StartNginx starts nginx for the test and stops it (waiting for it) in
// t.Cleanup. Everything it writes (config, pid, logs, temporary files) is
// under a t.TempDir(). It skips the test when nginx is not installed (.ci/run
// installs it).
func StartNginx(t testing.TB, o NginxOptions) *Nginx {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		t.Skip("nginx is not installed (apt-get install -y nginx; .ci/run installs it): skipping the third-party mTLS origin test")
	}
	if o.Root == "" || o.ClientCAFile == "" {
		t.Fatal("StartNginx: Root and ClientCAFile are required")
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		t.Fatal(err)
	}
	clientCA, err := filepath.Abs(o.ClientCAFile)
	if err != nil {
		t.Fatal(err)
	}
	ca := NewCA(t, "nginx origin test CA")
	var lastErr error
	// Free ports are found by binding :0 and closing; another process may
	// take one in between, so a failed start is retried.
	for range 3 {
		n, err := startNginx(t, bin, root, clientCA, ca)
		if err == nil {
			return n
		}
		lastErr = err
	}
	t.Fatalf("nginx did not start: %v", lastErr)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func nginxQuote(s string) string {
	return `"` + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `"`, `\"`) + `"`
}

func startNginx(t testing.TB, bin, root, clientCA string, ca *CA) (*Nginx, error) {
	dir := t.TempDir()
	for _, d := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeKeyPair(t, ca.Issue(t, "localhost", x509.ExtKeyUsageServerAuth), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	onPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	optPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	var userLine string
	if os.Geteuid() == 0 {
		// Root's workers would otherwise switch to "nobody", which cannot
		// read the test's 0700 temporary directories.
		u, uerr := user.Current()
		g, gerr := user.LookupGroupId(strconv.Itoa(os.Getegid()))
		if uerr == nil && gerr == nil {
			userLine = fmt.Sprintf("user %s %s;", u.Username, g.Name)
		}
	}
	q := func(name string) string { return nginxQuote(filepath.Join(dir, name)) }
	server := func(port int, verify string) string {
		return fmt.Sprintf(`
    server {
        listen 127.0.0.1:%d ssl;
        server_name localhost;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate %s;
        ssl_verify_client %s;
        root %s;
    }
`, port, q("server.pem"), q("server.key"), nginxQuote(clientCA), verify, nginxQuote(root))
	}
	conf := fmt.Sprintf(`# written by servicestest.StartNginx
daemon off;
master_process on;
worker_processes 1;
%s
pid %s;
error_log %s info;
events { worker_connections 64; }
http {
    default_type application/octet-stream;
    log_format ferry '$server_port $status "$ssl_client_verify" "$ssl_client_fingerprint" "$request"';
    access_log %s ferry;
    client_body_temp_path %s;
    proxy_temp_path %s;
    fastcgi_temp_path %s;
    uwsgi_temp_path %s;
    scgi_temp_path %s;
%s%s}
`, userLine, q("nginx.pid"), q("logs/error.log"), q("logs/access.log"),
		q("tmp/body"), q("tmp/proxy"), q("tmp/fastcgi"), q("tmp/uwsgi"), q("tmp/scgi"),
		server(onPort, "on"), server(optPort, "optional"))
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	n := &Nginx{
		OnURL:       fmt.Sprintf("https://127.0.0.1:%d", onPort),
		OptionalURL: fmt.Sprintf("https://127.0.0.1:%d", optPort),
		CAFile:      ca.File, CA: ca,
		dir: dir, onPort: onPort, optPort: optPort,
		exited: make(chan struct{}), stderr: &bytes.Buffer{},
	}
	// -e: the error log before the config is read (default is /var/log).
	n.cmd = exec.Command(bin, "-p", dir, "-c", confFile, "-e", filepath.Join(dir, "logs/startup.log"))
	n.cmd.Stdout = n.stderr
	n.cmd.Stderr = n.stderr
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	go func() {
		n.waitErr = n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(n.stop)

	deadline := time.Now().Add(15 * time.Second)
	for _, port := range []int{onPort, optPort} {
		for {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-n.exited:
				return nil, fmt.Errorf("nginx exited (%v): %s %s", n.waitErr, n.stderr.String(), n.readLog("logs/error.log"))
			default:
			}
			if time.Now().After(deadline) {
				n.stop()
				return nil, fmt.Errorf("nginx is not listening on %d: %s", port, n.readLog("logs/error.log"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n, nil
}

func (n *Nginx) readLog(name string) string {
	b, _ := os.ReadFile(filepath.Join(n.dir, name))
	return string(b)
}

// stop ends nginx (fast shutdown, then SIGKILL to its process group after
// 10 s) and waits for it.
func (n *Nginx) stop() {
	n.stopOnce.Do(func() {
		select {
		case <-n.exited:
			return
		default:
		}
		_ = n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-n.exited
		}
	})
}

// ErrorLog is nginx's error log so far (for test failure messages).
func (n *Nginx) ErrorLog() string { return n.readLog("logs/error.log") }

// Requests parses the access log: every request nginx answered so far, in
// order.
func (n *Nginx) Requests(t testing.TB) []NginxRequest {
	t.Helper()
	f, err := os.Open(filepath.Join(n.dir, "logs/access.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []NginxRequest
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		// <port> <status> "<verify>" "<fingerprint>" "<request>"
		var r NginxRequest
		head, rest, ok := strings.Cut(line, ` "`)
		fields := strings.Fields(head)
		if !ok || len(fields) != 2 {
			t.Fatalf("unexpected access log line %q", line)
		}
		r.Port, _ = strconv.Atoi(fields[0])
		r.Status, _ = strconv.Atoi(fields[1])
		parts := strings.Split(strings.TrimSuffix(rest, `"`), `" "`)
		if len(parts) != 3 {
			t.Fatalf("unexpected access log line %q", line)
		}
		r.Verify, r.Fingerprint, r.Request = parts[0], parts[1], parts[2]
		if r.Fingerprint == "-" {
			r.Fingerprint = ""
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Fingerprints are the client-certificate fingerprints nginx logged, one per
// request ("" for a request without a certificate).
func (n *Nginx) Fingerprints(t testing.TB) []string {
	var out []string
	for _, r := range n.Requests(t) {
		out = append(out, r.Fingerprint)
	}
	return out
}
