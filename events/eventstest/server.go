package eventstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StartServer starts a nats-server with JetStream that stores in
// t.TempDir(), fsyncs every write (SyncAlways, as ferry runs in production)
// and listens on a random port of 127.0.0.1 (see Server.ClientURL), and
// connects to it in-process. Cleanup drains the connection, then shuts the
// server down and waits for it.
func StartServer(t testing.TB) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts := &server.Options{
		ServerName: "ferry-test",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		SyncAlways: true,
		NoLog:      true,
		NoSigs:     true,

		JetStreamMaxMemory: 64 << 20,
		JetStreamMaxStore:  1 << 30,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("eventstest: new server: %v", err)
	}
	ns.Start() // returns once started; the server owns its goroutines
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("eventstest: server not ready for connections")
	}

	closed := make(chan struct{})
	nc, err := nats.Connect(ns.ClientURL(),
		nats.InProcessServer(ns),
		nats.Name(t.Name()),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
	)
	if err != nil {
		t.Fatalf("eventstest: connect: %v", err)
	}
	// Registered after the server's cleanup, so it runs before it.
	t.Cleanup(func() {
		if err := nc.Drain(); err != nil {
			nc.Close()
		}
		<-closed
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("eventstest: jetstream: %v", err)
	}
	return ns, nc, js
}
