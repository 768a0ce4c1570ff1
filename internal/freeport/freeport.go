// Package freeport picks ports for listeners that a child process (or
// code that takes a port number, not a listener) binds later.
//
// A port the kernel picks for "port 0" comes from its ephemeral range, the
// range it also gives every outgoing connection its local port from. On a
// machine busy with loopback connections (tests, benchmarks) such a port
// is often in use as a connection's local port by the time the child binds
// it, and the child fails with "address already in use". Ports below the
// ephemeral range are only ever taken by explicit binds, so a port picked
// there and found free stays free unless another process picks the same
// one at random.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// lowest is the lowest port picked: well above the ports services are
// configured on.
const lowest = 10000

// tries bounds the ports tried before giving up.
const tries = 64

// rangeFile holds the kernel's ephemeral port range, "low high".
const rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// N returns n distinct TCP ports on ip that nothing is bound to now,
// below the kernel's ephemeral port range.
func N(ip netip.Addr, n int) ([]netip.AddrPort, error) {
	high := ephemeralLow()
	var out []netip.AddrPort
	var open []net.Listener
	defer func() {
		for _, l := range open {
			l.Close()
		}
	}()
	for range tries {
		if len(out) == n {
			break
		}
		ap := netip.AddrPortFrom(ip, uint16(lowest+rand.IntN(high-lowest)))
		l, err := net.Listen("tcp", ap.String())
		if err != nil {
			continue // taken; another
		}
		open = append(open, l) // held until all n are found, so none repeats
		out = append(out, ap)
	}
	if len(out) < n {
		return nil, fmt.Errorf("no %d free ports on %s in [%d, %d) after %d tries", n, ip, lowest, high, tries)
	}
	return out, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range
// (Linux's default, 32768, where the kernel does not say).
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile(rangeFile); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	if low <= lowest+1000 {
		// A range reaching this low leaves no ports outside it; pick
		// among the high ports rather than none.
		return 65536
	}
	return low
}

// Loopback returns n port numbers free on 127.0.0.1, as N does, for code
// that takes a number.
func Loopback(n int) ([]int, error) {
	ports, err := N(netip.AddrFrom4([4]byte{127, 0, 0, 1}), n)
	if err != nil {
		return nil, err
	}
	out := make([]int, n)
	for i, ap := range ports {
		out[i] = int(ap.Port())
	}
	return out, nil
}
