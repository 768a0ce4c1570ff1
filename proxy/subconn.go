package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
)

// subConn is a balancer.SubConn backed by one HTTP/2 connection at a time
// to its address, reconnected (on the balancer's Connect) after it is
// lost, with backoff after failures.
type subConn struct {
	balancer.SubConn // embedded, as grpc-go asks
	h                *host
	listener         func(balancer.SubConnState)

	// conn is the connection streams may be opened on, nil unless READY.
	conn atomic.Pointer[h2conn]

	mu       sync.Mutex
	addrs    []resolver.Address
	state    connectivity.State
	backoff  time.Duration
	retry    *time.Timer
	shutdown bool
}

const (
	dialTimeout = 20 * time.Second
	minBackoff  = time.Second
	maxBackoff  = 30 * time.Second
)

// setStateLocked records and reports a state change, in order, on the
// balancer's goroutine.
func (sc *subConn) setStateLocked(st connectivity.State, err error) {
	sc.state = st
	if sc.listener == nil {
		return
	}
	sc.h.work.Schedule(func() { sc.listener(balancer.SubConnState{ConnectivityState: st, ConnectionError: err}) })
}

// Connect implements balancer.SubConn.
func (sc *subConn) Connect() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.shutdown || sc.state != connectivity.Idle {
		return
	}
	sc.setStateLocked(connectivity.Connecting, nil)
	addrs := sc.addrs
	sc.h.conns.Go(func() { sc.dial(addrs) })
}

func (sc *subConn) dial(addrs []resolver.Address) {
	var err error
	for _, a := range addrs {
		var c *h2conn
		if c, err = sc.connect(a.Addr); err == nil {
			sc.mu.Lock()
			if sc.shutdown {
				sc.mu.Unlock()
				c.mu.Lock()
				c.retireLocked()
				c.mu.Unlock()
				return
			}
			sc.backoff = 0
			sc.conn.Store(c)
			sc.setStateLocked(connectivity.Ready, nil)
			sc.mu.Unlock()
			return
		}
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.shutdown {
		return
	}
	sc.setStateLocked(connectivity.TransientFailure, err)
	sc.backoff = min(max(2*sc.backoff, minBackoff), maxBackoff)
	sc.retry = time.AfterFunc(sc.backoff, func() {
		sc.mu.Lock()
		defer sc.mu.Unlock()
		if !sc.shutdown && sc.state == connectivity.TransientFailure {
			sc.setStateLocked(connectivity.Idle, nil)
		}
	})
}

// connect dials addr and runs the connection until the peer's SETTINGS
// arrive (the connection is then READY) or it fails.
func (sc *subConn) connect(addr string) (*h2conn, error) {
	ctx, cancel := context.WithTimeout(sc.h.ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c := newH2Conn(nc, nc, true)
	c.onGoingAway = func() { sc.lost(c) }
	if !sc.h.track(c) {
		nc.Close()
		return nil, fmt.Errorf("%s: proxy is stopping", addr)
	}
	if err := c.start(); err != nil {
		nc.Close()
		sc.h.untrack(c)
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	h := &upstreamConn{sc: sc, ready: make(chan struct{})}
	ended := make(chan error, 1)
	sc.h.conns.Go(func() {
		err := c.readLoop(h)
		if ce := (connError{}); errors.As(err, &ce) {
			sc.h.log.Warn("upstream broke HTTP/2; its connection is closed", "target", sc.h.target, "addr", addr, "err", ce)
		}
		sc.lost(c)
		sc.h.untrack(c)
		ended <- err
	})
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	select {
	case <-h.ready:
		return c, nil
	case err := <-ended:
		return nil, fmt.Errorf("%s: HTTP/2 handshake: %w", addr, err)
	}
}

// lost reports that c no longer takes new streams: the SubConn goes IDLE,
// and the balancer decides when to reconnect.
func (sc *subConn) lost(c *h2conn) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.conn.Load() != c {
		return
	}
	sc.conn.Store(nil)
	if !sc.shutdown {
		sc.setStateLocked(connectivity.Idle, nil)
	}
}

// Shutdown implements balancer.SubConn: no new streams; the connection
// closes once its streams end.
func (sc *subConn) Shutdown() {
	sc.mu.Lock()
	if sc.shutdown {
		sc.mu.Unlock()
		return
	}
	sc.shutdown = true
	if sc.retry != nil {
		sc.retry.Stop()
	}
	sc.setStateLocked(connectivity.Shutdown, nil)
	c := sc.conn.Swap(nil)
	sc.mu.Unlock()
	if c != nil {
		c.mu.Lock()
		c.retireLocked()
		c.mu.Unlock()
	}
}

// UpdateAddresses implements balancer.SubConn (deprecated in grpc-go): new
// addresses apply to the next connection.
func (sc *subConn) UpdateAddresses(addrs []resolver.Address) {
	sc.mu.Lock()
	sc.addrs = addrs
	sc.mu.Unlock()
}

// RegisterHealthListener implements balancer.SubConn. The proxy runs no
// health checks of its own, so a READY connection is healthy, as in
// grpc-go without a health-check config. A nil f (grpc-go's outlier
// detection balancer unregisters so) asks for nothing.
func (sc *subConn) RegisterHealthListener(f func(balancer.SubConnState)) {
	if f == nil {
		return
	}
	sc.h.work.Schedule(func() {
		sc.mu.Lock()
		st := sc.state
		sc.mu.Unlock()
		if st == connectivity.Ready {
			f(balancer.SubConnState{ConnectivityState: connectivity.Ready})
		}
	})
}

// GetOrBuildProducer implements balancer.SubConn. No policy the proxy runs
// uses producers (ORCA load reports, health): none is built.
func (sc *subConn) GetOrBuildProducer(balancer.ProducerBuilder) (balancer.Producer, func()) {
	return nil, func() {}
}
