package freeport

import (
	"net"
	"net/netip"
	"testing"
)

// The ports are distinct, below the ephemeral range, and free: a listener
// can bind each.
func TestN(t *testing.T) {
	ip := netip.MustParseAddr("127.0.0.1")
	high := ephemeralLow()
	for _, n := range []int{1, 3, 16} {
		ports, err := N(ip, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(ports) != n {
			t.Fatalf("N(%d) = %d ports", n, len(ports))
		}
		seen := map[netip.AddrPort]bool{}
		for _, ap := range ports {
			if seen[ap] {
				t.Fatalf("N(%d) repeats %s: %v", n, ap, ports)
			}
			seen[ap] = true
			if ap.Addr() != ip || int(ap.Port()) < lowest || int(ap.Port()) >= high {
				t.Fatalf("port %s outside %s:[%d, %d)", ap, ip, lowest, high)
			}
			l, err := net.Listen("tcp", ap.String())
			if err != nil {
				t.Fatalf("port %s from N(%d) is not free: %v", ap, n, err)
			}
			l.Close()
		}
	}
}
