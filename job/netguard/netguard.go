// Package netguard owns ferry's rule for outbound connections made on a
// user's behalf (agents fetching a job's URL, the coordinator posting a
// job's notifications): never to link-local addresses or cloud instance
// metadata endpoints, whose answers are the host's own credentials. It is
// shared by agent/download and coordinator/notify; it imports nothing of
// ferry's.
package netguard

import "net/netip"

// Well-known instance metadata endpoints outside link-local space.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	netip.MustParseAddr("168.63.129.16"),   // Azure WireServer
}

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Blocked reports whether a must not be connected to: link-local unicast
// and multicast (169.254.0.0/16 with the usual metadata address, fe80::/10,
// ff02::/16, 224.0.0.0/24) or a metadata endpoint. IPv4-mapped and NAT64
// (64:ff9b::/96) forms of IPv4 addresses are judged by the IPv4 address they
// carry. Loopback and private addresses are allowed: origins and webhooks
// are often internal services.
func Blocked(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	if nat64.Contains(a) {
		b := a.As16()
		a = netip.AddrFrom4([4]byte(b[12:16]))
	}
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
		return true
	}
	for _, m := range metadataAddrs {
		if a == m {
			return true
		}
	}
	return false
}
