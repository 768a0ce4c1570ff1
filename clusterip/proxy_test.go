package clusterip

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"testing"
)

// nameServer answers every line it reads with its own name.
func nameServer(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewScanner(c)
				for r.Scan() {
					if _, err := c.Write([]byte(name + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(lis.Addr().String())
}

func startProxy(t *testing.T, eps []netip.AddrPort) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Proxy{Endpoints: func() []netip.AddrPort { return eps }}).Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func ask(t *testing.T, c net.Conn, r *bufio.Reader) string {
	t.Helper()
	if _, err := c.Write([]byte("who\n")); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return line[:len(line)-1]
}

func TestOneConnectionStaysOnOneEndpoint(t *testing.T) {
	eps := []netip.AddrPort{nameServer(t, "a"), nameServer(t, "b"), nameServer(t, "c")}
	addr := startProxy(t, eps)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	first := ask(t, c, r)
	for i := 0; i < 50; i++ {
		if got := ask(t, c, r); got != first {
			t.Fatalf("request %d on one connection answered by %q, first by %q", i, got, first)
		}
	}
}

func TestNewConnectionsSpreadAcrossEndpoints(t *testing.T) {
	eps := []netip.AddrPort{nameServer(t, "a"), nameServer(t, "b"), nameServer(t, "c")}
	addr := startProxy(t, eps)
	seen := map[string]int{}
	for i := 0; i < 60; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		seen[ask(t, c, bufio.NewReader(c))]++
		c.Close()
	}
	// 60 random picks among 3 miss one endpoint with probability ~3*(2/3)^60 ≈ 1e-10.
	if len(seen) != 3 {
		t.Fatalf("60 connections reached %v, want all of a, b, c", seen)
	}
}

func TestNoEndpointsClosesConnection(t *testing.T) {
	addr := startProxy(t, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Fatal("read succeeded on a connection with no endpoints; want it closed")
	}
}
