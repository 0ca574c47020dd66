// Command eventconsumer is an example of a program that follows ferry's
// event log: it connects to the NATS server of a ferry deployment, keeps a
// durable consumer on the FERRY_EVENTS stream with package events/consume,
// and prints one line per event. Stopped and started again, it carries on
// after the last event it printed.
//
//	go run ./examples/eventconsumer --nats-url nats://127.0.0.1:4222
//	go run ./examples/eventconsumer --nats-url tls://nats-1:4222 --tls-ca ca.pem \
//	    --tls-cert reader.pem --tls-key reader-key.pem --filter 'ferry.evt.job.>'
//
// Its NATS user needs read access to the stream and the JetStream API for
// its consumer only (the "consumers read only" permissions of DESIGN.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/events/consume"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "eventconsumer:", err)
		os.Exit(1)
	}
}

type options struct {
	url, creds, ca, cert, key string
	durable                   string
	filters                   []string
	fromSeq                   uint64
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("eventconsumer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defURL := os.Getenv("NATS_URL")
	if defURL == "" {
		defURL = nats.DefaultURL
	}
	fs.StringVar(&o.url, "nats-url", defURL, "NATS server URL(s), comma-separated (default $NATS_URL)")
	fs.StringVar(&o.creds, "creds", "", "NATS credentials file (JWT and NKey seed)")
	fs.StringVar(&o.ca, "tls-ca", "", "CA certificate (PEM) that signs the NATS servers")
	fs.StringVar(&o.cert, "tls-cert", "", "client certificate (PEM) for TLS client authentication")
	fs.StringVar(&o.key, "tls-key", "", "private key (PEM) of --tls-cert")
	fs.StringVar(&o.durable, "durable", "eventconsumer", "durable consumer name: the position survives restarts under this name")
	fs.Func("filter", "subject filter, repeatable (default ferry.evt.>: every event)", func(s string) error {
		o.filters = append(o.filters, s)
		return nil
	})
	fs.Uint64Var(&o.fromSeq, "from-seq", 0, "stream sequence a new durable consumer starts at (default: the beginning)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if (o.cert == "") != (o.key == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}

	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly}).With().Timestamp().Logger()
	nopts := []nats.Option{nats.Name("ferry-eventconsumer"), nats.MaxReconnects(-1)}
	if o.creds != "" {
		nopts = append(nopts, nats.UserCredentials(o.creds))
	}
	if o.ca != "" {
		nopts = append(nopts, nats.RootCAs(o.ca))
	}
	if o.cert != "" {
		nopts = append(nopts, nats.ClientCert(o.cert, o.key))
	}
	nc, err := nats.Connect(o.url, nopts...)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", o.url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c, err := consume.New(ctx, js, o.durable, o.filters, func(_ context.Context, ev events.Event) error {
		_, err := fmt.Fprintln(stdout, line(&ev))
		return err // a closed stdout: the event stays unacknowledged
	}, consume.Options{StartSeq: o.fromSeq, Log: log, Unknown: consume.UnknownDeliver})
	if err != nil {
		return err
	}
	log.Info().Str("url", nc.ConnectedUrlRedacted()).Str("durable", o.durable).Msg("following the event log")
	return c.Run(ctx)
}

// line is one event for people: sequence, time, aggregate, type and
// version, actor, and a few fields of the typed payload.
func line(ev *events.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s %s/%s %s v%d", ev.Seq, ev.Time.UTC().Format(time.RFC3339Nano), ev.Kind, ev.AggregateID, ev.Type, ev.Version)
	if ev.Actor != "" {
		fmt.Fprintf(&b, " actor=%s", ev.Actor)
	}
	p, err := ev.Payload()
	if err != nil {
		// A type or version newer than this program: the envelope is all
		// it can show.
		fmt.Fprintf(&b, " (payload not decoded: %v)", err)
		return b.String()
	}
	// The payload is the type's current version whatever version the event
	// was written in: JobTransientError v1 reads with attempt 0, "not
	// recorded".
	switch p := p.(type) {
	case *events.JobCreated:
		fmt.Fprintf(&b, " owner=%s name=%q priority=%s", p.Owner, p.DisplayName, p.Priority)
	case *events.FilesAdded:
		fmt.Fprintf(&b, " files=%d", len(p.Files))
	case *events.JobLeased:
		fmt.Fprintf(&b, " agent=%s attempt=%d", p.Agent, p.Attempt)
	case *events.FileProgressed:
		fmt.Fprintf(&b, " file=%d bytes=%d/%d", p.FileIndex, p.BytesTransferred, p.BytesTotal)
	case *events.FileTransferred:
		fmt.Fprintf(&b, " file=%d bytes=%d sha256=%s", p.FileIndex, p.Bytes, p.SHA256)
	case *events.JobTransientError:
		fmt.Fprintf(&b, " code=%s attempt=%d retry_at=%s", p.Error.Code, p.Attempt, p.RetryAt.UTC().Format(time.RFC3339))
	case *events.JobFailed:
		fmt.Fprintf(&b, " code=%s", p.Error.Code)
	case *events.AgentJoined:
		fmt.Fprintf(&b, " pool=%s slots=%d", p.Pool, p.Slots)
	case *events.AgentLeft:
		fmt.Fprintf(&b, " reason=%s", p.Reason)
	}
	return b.String()
}
