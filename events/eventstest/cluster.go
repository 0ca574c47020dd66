package eventstest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// clusterWait bounds every wait for the cluster to form or elect.
const clusterWait = 30 * time.Second

// StartCluster starts n nats-servers with JetStream in one cluster on
// loopback ports, each storing in a t.TempDir() of its own and fsyncing
// every write (SyncAlways: ferry's clusters run R3 with sync always), waits
// until the JetStream meta leader is elected and sees all n servers, and
// connects a client to each: conns[i] prefers servers[i] and knows every
// server, reconnecting without limit, so that shutting down a server (the
// point of a cluster test) moves its clients to the others.
//
// Cleanup closes the connections, then shuts down every server still
// running and waits for it.
func StartCluster(t testing.TB, n int) ([]*server.Server, []*nats.Conn) {
	t.Helper()
	if n < 1 {
		t.Fatalf("eventstest: cluster of %d servers", n)
	}
	var servers []*server.Server
	// The cluster ports are picked before the servers start (every server
	// lists every route, so the meta group knows its size from the
	// start); another process may take one in between, then try again.
	for attempt := 1; ; attempt++ {
		var err error
		if servers, err = startCluster(t, n); err == nil {
			break
		} else if attempt == 3 {
			t.Fatalf("eventstest: start cluster: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})

	WaitFor(t, clusterWait, "JetStream meta leader that sees every server", func() bool {
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				return len(s.JetStreamClusterPeers()) == n
			}
		}
		return false
	})

	urls := make([]string, n)
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	conns := make([]*nats.Conn, n)
	for i := range servers {
		// Server i first, then the others in order.
		order := append(append([]string{}, urls[i:]...), urls[:i]...)
		closed := make(chan struct{})
		nc, err := nats.Connect(strings.Join(order, ","),
			nats.Name(fmt.Sprintf("%s/%d", t.Name(), i)),
			nats.DontRandomize(),
			nats.MaxReconnects(-1),
			nats.ReconnectWait(20*time.Millisecond),
			nats.ReconnectJitter(0, 0),
			nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
		)
		if err != nil {
			t.Fatalf("eventstest: connect to %s: %v", urls[i], err)
		}
		conns[i] = nc
		// Registered after the servers' cleanup, so it runs before it.
		// Close, not Drain: a drain waits for servers that may be gone.
		t.Cleanup(func() {
			nc.Close()
			<-closed
		})
	}
	return servers, conns
}

// startCluster starts n clustered servers and waits until each accepts
// connections. On failure it shuts down what it started.
func startCluster(t testing.TB, n int) ([]*server.Server, error) {
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	routes := make([]string, n)
	for i, p := range ports {
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", p)
	}
	var servers []*server.Server
	fail := func(err error) ([]*server.Server, error) {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
		return nil, err
	}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("ferry-test-%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			SyncAlways: true,
			NoLog:      true,
			NoSigs:     true,
			Cluster: server.ClusterOpts{
				Name: "ferry-test",
				Host: "127.0.0.1",
				Port: ports[i],
			},
			Routes: server.RoutesFromStr(strings.Join(routes, ",")),

			JetStreamMaxMemory: 64 << 20,
			JetStreamMaxStore:  1 << 30,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			return fail(fmt.Errorf("new server %s: %w", opts.ServerName, err))
		}
		s.Start()
		servers = append(servers, s)
	}
	for _, s := range servers {
		// Ready also means the cluster port was bound.
		if !s.ReadyForConnections(10 * time.Second) {
			return fail(fmt.Errorf("server %s not ready for connections", s.Name()))
		}
	}
	return servers, nil
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// StreamLeader returns the running server that leads stream (in the global
// account), or nil while there is none.
func StreamLeader(servers []*server.Server, stream string) *server.Server {
	for _, s := range servers {
		if s.Running() && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return s
		}
	}
	return nil
}

// WaitStreamCurrent waits until a running server leads stream and every
// running server is current on it (its replica has applied what the leader
// committed), and returns the leader. After it, reads from any replica,
// direct gets included, see every acknowledged write.
func WaitStreamCurrent(t testing.TB, servers []*server.Server, stream string) *server.Server {
	t.Helper()
	var leader *server.Server
	WaitFor(t, clusterWait, "leader of stream "+stream+" with every replica current", func() bool {
		if leader = StreamLeader(servers, stream); leader == nil {
			return false
		}
		for _, s := range servers {
			if s.Running() && !s.JetStreamIsStreamCurrent(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
				return false
			}
		}
		return true
	})
	return leader
}

// WaitFor checks cond every few milliseconds until it holds, and fails t
// if it does not within timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("eventstest: no %s after %v", what, timeout)
		}
		<-tick.C
	}
}
