package notify

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestBlockedAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"169.254.169.254":        true,
		"169.254.0.1":            true,
		"fe80::1":                true,
		"fe80::1%eth0":           true,
		"febf::1":                true,
		"fd00:ec2::254":          true,
		"::ffff:169.254.169.254": true,
		"64:ff9b::a9fe:a9fe":     true, // NAT64 169.254.169.254
		"100.100.100.200":        true,
		"168.63.129.16":          true,
		"224.0.0.251":            true, // 224.0.0.0/24 is link-local multicast
		"239.1.1.1":              false,
		"ff02::1":                true, // link-local multicast
		"127.0.0.1":              false,
		"::1":                    false,
		"10.0.0.1":               false,
		"192.168.1.1":            false,
		"fd00:ec2::253":          false,
		"93.184.216.34":          false,
		"2001:db8::1":            false,
	} {
		if got := blockedAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("blockedAddr(%s) = %v, want %v", addr, got, want)
		}
	}
}

// TestClientRefusesMetadata: the notifier's HTTP client never connects to a
// metadata address, and does not follow redirects.
func TestClientRefusesMetadata(t *testing.T) {
	cfg, err := Config{Secret: testSecret, Timeout: 5 * time.Second}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	client, tr := newClient(&cfg)
	defer tr.CloseIdleConnections()
	for _, u := range []string{"https://169.254.169.254/latest/meta-data/", "https://168.63.129.16/"} {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, u, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: connected", u)
		}
		if !isBlocked(err) || !strings.Contains(err.Error(), "never notified") {
			t.Errorf("%s: %v, want a refusal", u, err)
		}
	}
	if err := refuseMetadata(context.Background(), "tcp6", "[fe80::1%lo]:443", nil); !isBlocked(err) {
		t.Errorf("fe80::1: %v", err)
	}
	if err := refuseMetadata(context.Background(), "tcp6", "[fd00:ec2::254]:443", nil); !isBlocked(err) {
		t.Errorf("fd00:ec2::254: %v", err)
	}
	if err := refuseMetadata(context.Background(), "tcp", "127.0.0.1:443", nil); err != nil {
		t.Errorf("loopback refused: %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	if got := redactURL("https://hooks.example/x/y?token=s3cret"); got != "https://hooks.example/x/y" {
		t.Errorf("redactURL = %q", got)
	}
}
