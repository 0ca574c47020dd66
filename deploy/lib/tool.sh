# shellcheck shell=bash
# Sourced by build-images.sh. build_tool OUT builds ferry-deploy-tool, a
# small static program the deploy scripts need besides ferry and
# nats-server:
#
#   origin     ferry's demo origin (services.DemoOrigin, the one `ferry dev`
#              serves) over HTTPS on two ports: one requires a client
#              certificate of --client-ca (mutual TLS), one asks for none.
#              ferry has no standalone origin role, so this wraps the handler.
#   natscheck  connects to NATS as one user and checks what it may and may
#              not do (publish, request, subscribe), e.g. that an agent
#              cannot publish a command.
#   events     prints the events of jobs as NDJSON, read straight from the
#              event log FERRY_EVENTS (as a read-only consumer would).
#   bcrypt     prints the bcrypt hash of the password on stdin (nats-server
#              users keep hashes, never the passwords).
#
# It is written to a temporary directory and built as a command-line
# package of the ferry module, so it uses exactly the module's pinned
# dependencies (nats.go, x/crypto) from the module cache. deploy/ holds no Go
# package of its own.

build_tool() {
  local out src
  out=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  src=$(mktemp -d)
  cat >"$src/main.go" <<'GO'
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/services"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ferry-deploy-tool origin|natscheck|events|bcrypt [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "origin":
		err = origin(os.Args[2:])
	case "natscheck":
		err = natscheck(os.Args[2:])
	case "events":
		err = jobEvents(os.Args[2:])
	case "bcrypt":
		err = hash()
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-deploy-tool:", err)
		os.Exit(1)
	}
}

func hash() error {
	b, err := io.ReadAll(io.LimitReader(os.Stdin, 1024))
	if err != nil {
		return err
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return errors.New("bcrypt: empty password on stdin")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), 11)
	if err != nil {
		return err
	}
	fmt.Println(string(h))
	return nil
}

func pool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate", file)
	}
	return p, nil
}

type logged struct{ h http.Handler }

func (l logged) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	client := "-"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		client = r.TLS.PeerCertificates[0].Subject.String()
	}
	log.Printf("%s %s %s range=%q client=%q", r.RemoteAddr, r.Method, r.URL.Path, r.Header.Get("Range"), client)
	l.h.ServeHTTP(w, r)
}

func origin(args []string) error {
	fs := flag.NewFlagSet("origin", flag.ExitOnError)
	mtlsAddr := fs.String("mtls-addr", ":8443", "address that requires a client certificate")
	tlsAddr := fs.String("tls-addr", ":8444", "address that asks for no client certificate (\"\" for none)")
	certFile := fs.String("cert", "", "server certificate (PEM)")
	keyFile := fs.String("key", "", "server key (PEM)")
	clientCA := fs.String("client-ca", "", "CA (PEM) that verifies client certificates")
	_ = fs.Parse(args)
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	cas, err := pool(*clientCA)
	if err != nil {
		return err
	}
	h := logged{services.DemoOrigin()}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var servers []*http.Server
	listen := func(addr string, auth tls.ClientAuthType) {
		if addr == "" {
			return
		}
		servers = append(servers, &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second,
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: auth, ClientCAs: cas, MinVersion: tls.VersionTLS12}})
	}
	listen(*mtlsAddr, tls.RequireAndVerifyClientCert)
	listen(*tlsAddr, tls.NoClientCert)
	errc := make(chan error, len(servers))
	for _, s := range servers {
		log.Printf("demo origin listening on %s (client certificate: %v)", s.Addr, s.TLSConfig.ClientAuth == tls.RequireAndVerifyClientCert)
		go func() { errc <- s.ListenAndServeTLS("", "") }()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	return nil
}

type natsFlags struct {
	url, caFile, certFile, keyFile, user, pwFile *string
}

func addNATSFlags(fs *flag.FlagSet) natsFlags {
	return natsFlags{
		url:      fs.String("url", "", "NATS URL (tls://host:port)"),
		caFile:   fs.String("ca", "", "CA (PEM) of the servers"),
		certFile: fs.String("cert", "", "client certificate (PEM)"),
		keyFile:  fs.String("key", "", "client key (PEM)"),
		user:     fs.String("user", "", "NATS user"),
		pwFile:   fs.String("password-file", "", "file holding the user's password"),
	}
}

func (f natsFlags) connect(opts ...nats.Option) (*nats.Conn, error) {
	pw, err := os.ReadFile(*f.pwFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if tc.RootCAs, err = pool(*f.caFile); err != nil {
		return nil, err
	}
	if *f.certFile != "" {
		c, err := tls.LoadX509KeyPair(*f.certFile, *f.keyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{c}
	}
	opts = append([]nats.Option{nats.Secure(tc), nats.UserInfo(*f.user, strings.TrimRight(string(pw), "\r\n")),
		nats.Name("ferry-deploy-tool/" + *f.user)}, opts...)
	nc, err := nats.Connect(*f.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect as %s: %w", *f.user, err)
	}
	return nc, nil
}

// jobEvents prints every event of each job given, in order, as
// {"job": ID, "seq": N, "event": {...}} lines, read from FERRY_EVENTS with
// an ordered consumer up to the job's last event at the time of the call.
func jobEvents(args []string) error {
	fs := flag.NewFlagSet("events", flag.ExitOnError)
	nf := addNATSFlags(fs)
	_ = fs.Parse(args)
	nc, err := nf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	out := json.NewEncoder(os.Stdout)
	for _, id := range fs.Args() {
		subj := "ferry.evt.job." + id
		// The job's last sequence from the stream leader (STREAM.MSG.GET;
		// a direct get may be answered by a replica that lags behind).
		last, err := lastSeq(nc, "FERRY_EVENTS", subj)
		if err != nil {
			return fmt.Errorf("job %s: last event: %w", id, err)
		}
		c, err := js.OrderedConsumer(ctx, "FERRY_EVENTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
		if err != nil {
			return fmt.Errorf("job %s: %w", id, err)
		}
		for tries := 0; ; {
			m, err := c.Next(jetstream.FetchMaxWait(10 * time.Second))
			if errors.Is(err, nats.ErrNoResponders) && tries < 40 {
				// The consumer is not serving yet (just created, or its
				// server changed): ask again.
				tries++
				time.Sleep(250 * time.Millisecond)
				continue
			}
			if err != nil {
				return fmt.Errorf("job %s: %w", id, err)
			}
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			if err := out.Encode(map[string]any{"job": id, "seq": md.Sequence.Stream, "event": json.RawMessage(m.Data())}); err != nil {
				return err
			}
			if md.Sequence.Stream >= last {
				break
			}
		}
	}
	return nil
}

// lastSeq asks the stream's leader for the sequence of the last message on
// subj, retrying for a while when the stream is between leaders.
func lastSeq(nc *nats.Conn, stream, subj string) (uint64, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": subj})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var r struct {
			Message *struct {
				Seq uint64 `json:"seq"`
			} `json:"message"`
			Error *struct {
				Code        int    `json:"code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		m, err := nc.Request("$JS.API.STREAM.MSG.GET."+stream, req, 5*time.Second)
		if err == nil {
			err = json.Unmarshal(m.Data, &r)
		}
		switch {
		case err == nil && r.Message != nil:
			return r.Message.Seq, nil
		case err == nil && r.Error != nil && r.Error.Code == 404:
			return 0, fmt.Errorf("no message on %s", subj)
		case err == nil && r.Error != nil:
			err = fmt.Errorf("%d %s", r.Error.Code, r.Error.Description)
		}
		if time.Now().After(deadline) {
			return 0, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

// natscheck runs checks as one NATS user. Each check is KIND:ARG:
//
//	deny-pub:SUBJ    publishing on SUBJ is refused (permissions violation)
//	deny-req:SUBJ    a request on SUBJ is refused
//	deny-sub:SUBJ    subscribing to SUBJ is refused
//	allow-req:SUBJ   a request on SUBJ (empty body) gets an answer
//	absent:STREAM:SUBJ   STREAM holds no message on SUBJ (a JetStream
//	                 last-by-subject get answers "no message found")
//	replicas:STREAM:N    STREAM has N replicas, a leader, and every other
//	                 replica is current
func natscheck(args []string) error {
	fs := flag.NewFlagSet("natscheck", flag.ExitOnError)
	nf := addNATSFlags(fs)
	user := nf.user
	var checks multi
	fs.Var(&checks, "check", "a check KIND:ARG (repeatable)")
	_ = fs.Parse(args)
	var mu sync.Mutex
	var violations []string
	nc, err := nf.connect(nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		mu.Lock()
		violations = append(violations, err.Error())
		mu.Unlock()
	}))
	if err != nil {
		return err
	}
	defer nc.Close()
	// violated waits up to 2 s for a permissions violation naming subj.
	violated := func(subj string) (string, bool) {
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			for _, v := range violations {
				if strings.Contains(strings.ToLower(v), "permissions violation") && strings.Contains(v, subj) {
					mu.Unlock()
					return v, true
				}
			}
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
		return "", false
	}
	failed := 0
	report := func(ok bool, check, detail string) {
		word := "ok  "
		if !ok {
			word = "FAIL"
			failed++
		}
		fmt.Printf("%s %s (%s) %s\n", word, check, *user, detail)
	}
	for _, c := range checks {
		kind, arg, _ := strings.Cut(c, ":")
		switch kind {
		case "deny-pub":
			err := nc.Publish(arg, []byte(`{"natscheck":"must never arrive"}`))
			if err == nil {
				err = nc.FlushTimeout(5 * time.Second)
			}
			v, ok := violated(arg)
			report(ok, c, firstNonEmpty(v, fmt.Sprint("the server accepted the publish; err=", err)))
		case "deny-req":
			_, err := nc.Request(arg, nil, 2*time.Second)
			v, ok := violated(arg)
			report(ok, c, firstNonEmpty(v, fmt.Sprint("no permissions violation; request err=", err)))
		case "deny-sub":
			sub, err := nc.SubscribeSync(arg)
			if err == nil {
				err = nc.FlushTimeout(5 * time.Second)
			}
			v, ok := violated(arg)
			report(ok, c, firstNonEmpty(v, fmt.Sprint("the server accepted the subscription; err=", err)))
			if sub != nil {
				_ = sub.Unsubscribe()
			}
		case "allow-req":
			m, err := nc.Request(arg, nil, 5*time.Second)
			if err != nil {
				report(false, c, err.Error())
				break
			}
			var r struct {
				Error *struct {
					Code        int    `json:"code"`
					Description string `json:"description"`
				} `json:"error"`
			}
			_ = json.Unmarshal(m.Data, &r)
			if r.Error != nil {
				report(false, c, fmt.Sprintf("answered with error %d %s", r.Error.Code, r.Error.Description))
				break
			}
			report(true, c, fmt.Sprintf("answered (%d bytes)", len(m.Data)))
		case "absent":
			stream, subj, _ := strings.Cut(arg, ":")
			req, _ := json.Marshal(map[string]string{"last_by_subj": subj})
			m, err := nc.Request("$JS.API.STREAM.MSG.GET."+stream, req, 5*time.Second)
			if err != nil {
				report(false, c, err.Error())
				break
			}
			var r struct {
				Error *struct {
					Code    int `json:"code"`
					ErrCode int `json:"err_code"`
				} `json:"error"`
			}
			_ = json.Unmarshal(m.Data, &r)
			ok := r.Error != nil && r.Error.Code == 404
			report(ok, c, strings.TrimSpace(string(m.Data)))
		case "replicas":
			stream, n, _ := strings.Cut(arg, ":")
			m, err := nc.Request("$JS.API.STREAM.INFO."+stream, nil, 5*time.Second)
			if err != nil {
				report(false, c, err.Error())
				break
			}
			var r struct {
				Config struct {
					Replicas int `json:"num_replicas"`
				} `json:"config"`
				Cluster struct {
					Leader   string `json:"leader"`
					Replicas []struct {
						Name    string `json:"name"`
						Current bool   `json:"current"`
						Offline bool   `json:"offline"`
					} `json:"replicas"`
				} `json:"cluster"`
			}
			if err := json.Unmarshal(m.Data, &r); err != nil {
				report(false, c, err.Error())
				break
			}
			ok := fmt.Sprint(r.Config.Replicas) == n && r.Cluster.Leader != "" && len(r.Cluster.Replicas)+1 == r.Config.Replicas
			peers := []string{r.Cluster.Leader + "(leader)"}
			for _, p := range r.Cluster.Replicas {
				ok = ok && p.Current && !p.Offline
				peers = append(peers, fmt.Sprintf("%s(current=%v)", p.Name, p.Current))
			}
			report(ok, c, fmt.Sprintf("R%d: %s", r.Config.Replicas, strings.Join(peers, " ")))
		default:
			return fmt.Errorf("unknown check %q", c)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
GO
  (cd "$REPO_DIR" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false "$(go_bin)" build -trimpath -o "$out" "$src/main.go")
  local rc=$?
  rm -rf "$src"
  return $rc
}
