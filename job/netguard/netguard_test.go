package netguard

import (
	"net/netip"
	"testing"
)

func TestBlocked(t *testing.T) {
	for addr, want := range map[string]bool{
		"169.254.169.254":        true,
		"169.254.0.1":            true,
		"fe80::1":                true,
		"fe80::1%eth0":           true,
		"ff02::1":                true,
		"224.0.0.1":              true,
		"::ffff:169.254.169.254": true,
		"64:ff9b::a9fe:a9fe":     true, // NAT64 of 169.254.169.254
		"fd00:ec2::254":          true,
		"100.100.100.200":        true,
		"168.63.129.16":          true,
		"127.0.0.1":              false,
		"::1":                    false,
		"10.0.0.1":               false,
		"192.168.1.1":            false,
		"fd00::1":                false,
		"fd00:ec2::253":          false,
		"100.100.100.201":        false,
		"239.1.1.1":              false,
		"8.8.8.8":                false,
		"2001:db8::1":            false,
	} {
		if got := Blocked(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Blocked(%s) = %v, want %v", addr, got, want)
		}
	}
}

func FuzzBlocked(f *testing.F) {
	for _, s := range []string{"169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "8.8.8.8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		// The mapped and NAT64 spellings of an IPv4 address are judged alike.
		if a.Is4() {
			b := a.As4()
			nat := netip.AddrFrom16([16]byte{0: 0x00, 1: 0x64, 2: 0xff, 3: 0x9b, 12: b[0], 13: b[1], 14: b[2], 15: b[3]})
			if Blocked(a) != Blocked(netip.AddrFrom16(a.As16())) || Blocked(a) != Blocked(nat) {
				t.Fatalf("%s judged differently by spelling", a)
			}
		}
	})
}
