// Package clusterip stands in for kube-proxy's ClusterIP where there is no
// cluster: a TCP listener that sends each new connection to one endpoint,
// chosen at random, and then copies bytes. It balances connections, not
// calls, which is exactly why one long-lived gRPC connection through a
// Service lands on one pod. (kube-proxy's iptables mode makes the same
// per-connection random choice in the kernel.)
package clusterip

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"

	"github.com/ballast-dev/ballast/internal/connset"
)

// Proxy forwards connections accepted on a listener to endpoints.
type Proxy struct {
	// Endpoints returns the addresses to choose from for a new connection,
	// read at every accept so changes apply to the next connection.
	Endpoints func() []netip.AddrPort
	Log       *slog.Logger
}

// Serve accepts on lis until ctx ends, then closes the listener and every
// open connection and returns once all copying has stopped.
func (p *Proxy) Serve(ctx context.Context, lis net.Listener) error {
	var wg sync.WaitGroup
	conns := connset.New()
	stop := context.AfterFunc(ctx, func() {
		lis.Close()
		conns.CloseAll()
	})
	defer stop()
	var err error
	for {
		var c net.Conn
		c, err = lis.Accept()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.forward(ctx, c, conns)
		}()
	}
	lis.Close()
	conns.CloseAll()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("clusterip accept on %s: %w", lis.Addr(), err)
}

func (p *Proxy) forward(ctx context.Context, down net.Conn, conns *connset.Set) {
	if !conns.Add(down) {
		return
	}
	defer conns.Remove(down)
	eps := p.Endpoints()
	if len(eps) == 0 {
		p.log().Warn("no endpoints; closing connection", "client", down.RemoteAddr())
		return
	}
	target := eps[rand.IntN(len(eps))]
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		p.log().Warn("dial endpoint", "endpoint", target, "err", err)
		return
	}
	if !conns.Add(up) {
		return
	}
	defer conns.Remove(up)
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(up, down)
	}()
	copyHalf(down, up)
	<-done
}

// copyHalf copies one direction and passes the end of stream on, so a
// client's half-close reaches the endpoint.
func copyHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok && err == nil {
		tc.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}

func (p *Proxy) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}
