package devcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// relayTCP accepts connections on l (inside the router namespace) and
// joins each to a new connection to upstream on host loopback, until ctx
// ends. limit > 0 bounds each connection's life.
func relayTCP(ctx context.Context, l net.Listener, upstream string, limit time.Duration) {
	relayDial(ctx, l, limit, func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", upstream)
	})
}

// relayDial accepts connections on l and joins each to a connection made
// by dial, until ctx ends. limit > 0 bounds each connection's life.
func relayDial(ctx context.Context, l net.Listener, limit time.Duration, dial func(context.Context) (net.Conn, error)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); l.Close() }()
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			up, err := dial(ctx)
			if err != nil {
				return
			}
			defer up.Close()
			if limit > 0 {
				deadline := time.Now().Add(limit)
				conn.SetDeadline(deadline)
				up.SetDeadline(deadline)
			}
			done := make(chan struct{}, 2)
			go func() { io.Copy(up, conn); done <- struct{}{} }()
			go func() { io.Copy(conn, up); done <- struct{}{} }()
			select {
			case <-done:
			case <-ctx.Done():
			}
		}()
	}
}

// ForwardToHost makes a server on host loopback reachable from pods: it
// returns the address pods dial (the router's gateway address, same port
// when free), relaying each connection to hostAddr. hostAddr must be a
// 127.0.0.0/8 address. The relay lives until Stop. This is how a test
// serves, say, an xDS control plane in-process to clients in pods.
func (c *Cluster) ForwardToHost(hostAddr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(hostAddr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("forward to host %q: %w", hostAddr, err)
	}
	if !ap.Addr().IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("forward to host %q: only loopback addresses", hostAddr)
	}
	gw := c.net.gateway.String()
	l, err := listenInNetns(c.net.routerNetns(), "tcp", net.JoinHostPort(gw, strconv.Itoa(int(ap.Port()))))
	if err != nil {
		if l, err = listenInNetns(c.net.routerNetns(), "tcp", net.JoinHostPort(gw, "0")); err != nil {
			return netip.AddrPort{}, fmt.Errorf("forward to host %s: %w", hostAddr, err)
		}
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); relayTCP(c.runCtx, l, hostAddr, 0) }()
	return netip.MustParseAddrPort(l.Addr().String()), nil
}

// exposeAPIServer puts the API server at the kubernetes Service's
// ClusterIP:443 for pods, as in a real cluster: the address is made local
// to the router and relayed to the API server on host loopback.
func (c *Cluster) exposeAPIServer(ctx context.Context, apiHostPort string) (netip.AddrPort, error) {
	ip := c.ServiceCIDR.Addr().Next() // the apiserver allocates the first address to "kubernetes"
	if err := ipCmd(ctx, "-n", c.net.routerNetns(), "addr", "add", ip.String()+"/32", "dev", "lo"); err != nil {
		return netip.AddrPort{}, err
	}
	addr := netip.AddrPortFrom(ip, 443)
	l, err := listenInNetns(c.net.routerNetns(), "tcp", addr.String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("expose API server to pods: %w", err)
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); relayTCP(c.runCtx, l, apiHostPort, 0) }()
	return addr, nil
}
