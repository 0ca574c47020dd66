package download

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/agent/download/origintest"
	"github.com/ferry-dev/ferry/job"
)

func TestRedirectPolicy(t *testing.T) {
	s := origintest.New(t, origintest.Options{})
	c := origintest.Content{Seed: 8, Size: 10_000}
	s.SetFile("/real.bin", origintest.File{Content: c, ETag: `"r"`})
	ca := newCA(t, "redirector CA")
	redir := tlsServer(t, http.RedirectHandler(s.URL+"/real.bin?sig=secret", http.StatusFound), ca.localhost(t), nil, false)
	pool := s.CAPool.Clone()
	pool.AddCert(ca.cert)
	for _, tc := range []struct {
		policy   RedirectPolicy
		finalURL string
		fail     bool
	}{
		{RedirectAllowSilent, "", false},
		{RedirectAllowReport, s.URL + "/real.bin?…", false},
		{RedirectDisallow, "", true},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			root, _ := testRoot(t)
			res, err := Fetch(t.Context(), Request{URL: redir.URL + "/start?token=s3cr3t", Root: root, TempName: tempName,
				Client: testClient(t, ClientOptions{RootCAs: pool, RedirectPolicy: tc.policy})})
			if tc.fail {
				checkFailure(t, err, wantFailure{"ERROR_WINHTTP_REDIRECT_FAILED", 0x80072F7A, false, job.ContextRemoteFile, 0})
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkStaged(t, root, res, c.SHA256(), c.Size)
			if res.FinalURL != tc.finalURL {
				t.Errorf("FinalURL %q, want %q", res.FinalURL, tc.finalURL)
			}
			again, err := Fetch(t.Context(), Request{URL: redir.URL + "/start?token=s3cr3t", Root: root, TempName: tempName,
				Client: testClient(t, ClientOptions{RootCAs: pool, RedirectPolicy: tc.policy})})
			if err != nil || again.FinalURL != tc.finalURL {
				t.Errorf("from the complete sidecar: FinalURL %q, %v", again.FinalURL, err)
			}
		})
	}
}

// forwardProxy is a plain HTTP forward proxy that counts what it forwards.
func forwardProxy(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.Out.URL = r.In.URL },
		Transport: tr,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		hits.Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestProxyOverride(t *testing.T) {
	s := origintest.New(t, origintest.Options{Plain: true})
	c := origintest.Content{Seed: 9, Size: 50_000}
	s.SetFile("/f", origintest.File{Content: c})
	proxy, hits := forwardProxy(t)
	phost := strings.TrimPrefix(proxy.URL, "http://")
	ohost, _, _ := net.SplitHostPort(strings.TrimPrefix(s.URL, "http://"))
	for _, tc := range []struct {
		name    string
		p       ProxySettings
		proxied bool
	}{
		{"direct", ProxySettings{}, false},
		{"override", ProxySettings{Usage: ProxyOverride, List: phost}, true},
		{"override for http", ProxySettings{Usage: ProxyOverride, List: "https=192.0.2.1:9 http=" + phost}, true},
		{"override only for https", ProxySettings{Usage: ProxyOverride, List: "https=" + phost}, false},
		{"with proxy scheme", ProxySettings{Usage: ProxyOverride, List: "http://" + phost}, true},
		{"bypassed", ProxySettings{Usage: ProxyOverride, List: phost, Bypass: "example.com;" + ohost}, false},
		{"bypassed by wildcard", ProxySettings{Usage: ProxyOverride, List: phost, Bypass: "*.0.0.1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := hits.Load()
			root, _ := testRoot(t)
			res, err := Fetch(t.Context(), Request{URL: s.URL + "/f", Root: root, TempName: tempName,
				Client: testClient(t, ClientOptions{Proxy: tc.p})})
			if err != nil {
				t.Fatal(err)
			}
			checkStaged(t, root, res, c.SHA256(), c.Size)
			if got := hits.Load() - before; (got > 0) != tc.proxied {
				t.Errorf("%d requests through the proxy; proxied want %v", got, tc.proxied)
			}
		})
	}
	// A literal metadata address is refused before reaching the proxy.
	before := hits.Load()
	root, _ := testRoot(t)
	_, err := Fetch(t.Context(), Request{URL: "http://169.254.169.254/latest/meta-data/", Root: root, TempName: tempName,
		Client: testClient(t, ClientOptions{Proxy: ProxySettings{Usage: ProxyOverride, List: phost}})})
	checkFailure(t, err, wantFailure{"E_ACCESSDENIED", 0x80070005, false, job.ContextGeneralTransport, 0})
	if hits.Load() != before {
		t.Error("the metadata request reached the proxy")
	}
}

func TestProxySettingsValidate(t *testing.T) {
	long := strings.Repeat("p", MaxProxyListLen+1)
	for _, tc := range []struct {
		p    ProxySettings
		want string
	}{
		{ProxySettings{}, ""},
		{ProxySettings{Usage: ProxyPreconfig}, ""},
		{ProxySettings{Usage: ProxyAutodetect}, ""},
		{ProxySettings{Usage: ProxyOverride, List: "proxy:8080 https=https://p2:443", Bypass: "<local> *.corp"}, ""},
		{ProxySettings{Usage: ProxyOverride, List: long}, "BG_E_PROXY_LIST_TOO_LARGE"},
		{ProxySettings{Usage: ProxyOverride, List: "p:1", Bypass: long}, "BG_E_PROXY_BYPASS_LIST_TOO_LARGE"},
		{ProxySettings{Usage: ProxyOverride}, "E_INVALIDARG"},
		{ProxySettings{Usage: ProxyPreconfig, List: "p:1"}, "E_INVALIDARG"},
		{ProxySettings{Usage: ProxyOverride, List: "ftp=p:1"}, "E_INVALIDARG"},
		{ProxySettings{Usage: ProxyOverride, List: "gopher://p:1"}, "E_INVALIDARG"},
		{ProxySettings{Usage: ProxyOverride, List: "http://u:pw@p:1"}, "E_INVALIDARG"},
		{ProxySettings{Usage: 9}, "E_INVALIDARG"},
	} {
		err := tc.p.Validate()
		got := ""
		if err != nil {
			got = asFailure(t, err).Code.Symbol
		}
		if got != tc.want {
			t.Errorf("%+v: %v, want %s", tc.p, err, tc.want)
		}
	}
	// Invalid settings fail every request of the client.
	root, _ := testRoot(t)
	_, err := Fetch(t.Context(), Request{URL: "http://127.0.0.1:1/f", Root: root, TempName: tempName,
		Client: testClient(t, ClientOptions{Proxy: ProxySettings{Usage: ProxyOverride}})})
	checkFailure(t, err, wantFailure{"E_INVALIDARG", 0x80070057, false, job.ContextGeneralTransport, 0})
	if !bypassed("intranet", []string{"<local>"}) || bypassed("a.b", []string{"<local>"}) || !bypassed("X.Corp.", []string{"*.corp"}) {
		t.Error("bypass patterns")
	}
}

func TestSecurityFlags(t *testing.T) {
	ca := newCA(t, "origin CA")
	other := newCA(t, "unknown CA")
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	wrongHost := ca.issue(t, leafOpts{dns: []string{"elsewhere.test"}})
	expired := ca.issue(t, leafOpts{ips: ips, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)})
	clientUsage := ca.issue(t, leafOpts{ips: ips, client: true})
	foreign := other.issue(t, leafOpts{ips: ips})
	foreignWrongHost := other.issue(t, leafOpts{dns: []string{"elsewhere.test"}})
	foreignExpired := other.issue(t, leafOpts{ips: ips, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-24 * time.Hour)})
	var (
		cn      = "ERROR_WINHTTP_SECURE_CERT_CN_INVALID"
		date    = "ERROR_WINHTTP_SECURE_CERT_DATE_INVALID"
		unknown = "ERROR_WINHTTP_SECURE_INVALID_CA"
		secure  = "ERROR_WINHTTP_SECURE_FAILURE"
	)
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		opts ClientOptions
		want string // "" = success
	}{
		{"wrong host, not ignored", wrongHost, ClientOptions{IgnoreCertDateInvalid: true}, cn},
		{"wrong host, ignored", wrongHost, ClientOptions{IgnoreCertCNInvalid: true}, ""},
		{"expired, not ignored", expired, ClientOptions{IgnoreCertCNInvalid: true}, date},
		{"expired, ignored", expired, ClientOptions{IgnoreCertDateInvalid: true}, ""},
		{"client usage, not ignored", clientUsage, ClientOptions{IgnoreCertCNInvalid: true}, secure},
		{"client usage, ignored", clientUsage, ClientOptions{IgnoreWrongUsage: true}, ""},
		{"unknown CA, not ignored", foreign, ClientOptions{IgnoreCertCNInvalid: true, IgnoreCertDateInvalid: true}, unknown},
		{"unknown CA, ignored", foreign, ClientOptions{IgnoreUnknownCA: true}, ""},
		{"unknown CA ignored, host still checked", foreignWrongHost, ClientOptions{IgnoreUnknownCA: true}, cn},
		{"unknown CA ignored, dates still checked", foreignExpired, ClientOptions{IgnoreUnknownCA: true}, date},
		{"unknown CA and dates ignored", foreignExpired, ClientOptions{IgnoreUnknownCA: true, IgnoreCertDateInvalid: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tlsServer(t, h, tc.cert, nil, false)
			srv.Config.ErrorLog = quietLog()
			root, _ := testRoot(t)
			tc.opts.RootCAs = ca.pool
			res, err := Fetch(t.Context(), Request{URL: srv.URL, Root: root, TempName: tempName, Client: testClient(t, tc.opts)})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				checkStaged(t, root, res, sha256Hex([]byte("hello")), 5)
				return
			}
			fl := asFailure(t, err)
			if fl.Code.Symbol != tc.want || fl.Transient {
				t.Errorf("got %s (%s), want %s", fl.Code.Symbol, fl.Description, tc.want)
			}
		})
	}
}

// TestRedirectToAnotherHostDropsCustomHeaders: a job's custom headers reach
// the origin it names, and not the host a redirect sends it to.
func TestRedirectToAnotherHostDropsCustomHeaders(t *testing.T) {
	s := origintest.New(t, origintest.Options{})
	c := origintest.Content{Seed: 9, Size: 5_000}
	s.SetFile("/real.bin", origintest.File{Content: c, ETag: `"r"`})
	ca := newCA(t, "redirector CA")
	var seen http.Header
	redir := tlsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		http.Redirect(w, r, s.URL+"/real.bin", http.StatusFound)
	}), ca.localhost(t), nil, false)
	pool := s.CAPool.Clone()
	pool.AddCert(ca.cert)
	root, _ := testRoot(t)
	h := http.Header{"X-Api-Key": {"k-123"}, "X-Trace": {"t"}}
	if _, err := Fetch(t.Context(), Request{URL: redir.URL + "/start", Root: root, TempName: tempName, Header: h,
		Client: testClient(t, ClientOptions{RootCAs: pool})}); err != nil {
		t.Fatal(err)
	}
	if seen.Get("X-Api-Key") != "k-123" {
		t.Fatalf("the named origin did not get the custom header: %v", seen)
	}
	reqs := s.Requests()
	if len(reqs) != 1 || reqs[0].Header.Get("X-Api-Key") != "" || reqs[0].Header.Get("X-Trace") != "" {
		t.Fatalf("the redirect target got the job's custom headers: %+v", reqs)
	}
}
