package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	estats "google.golang.org/grpc/experimental/stats"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"
)

// host runs a grpc-go balancer (looked up by name in grpc-go's registry:
// round_robin, least_request_experimental, ballast_p2c, ballast_peak_ewma,
// ...) for one upstream target, in the place of a grpc.ClientConn. Its
// SubConns are the proxy's own HTTP/2 connections, so the balancer's
// picker places each proxied stream, and the pick's Done hears how the
// call ended: the same decision a proxyless client makes, on the proxy's
// frame-level data path.
//
// As in grpc-go, every call into the balancer runs on one goroutine (work);
// Pick runs on the goroutine reading the stream's HEADERS.
type host struct {
	// ClientConn is embedded, as grpc-go asks, for methods it may add.
	balancer.ClientConn
	target string
	log    *slog.Logger
	ctx    context.Context
	stop   context.CancelFunc
	work   *serializer
	// conns owns the goroutines of upstream connections.
	conns sync.WaitGroup

	// bal and balName are touched only on work.
	bal     balancer.Balancer
	balName string

	picker atomic.Pointer[pickerState]

	mu     sync.Mutex
	gen    uint64
	parked []*stream
	closed bool
	// live are the upstream connections, closed when the host closes.
	live map[*h2conn]struct{}
}

type pickerState struct {
	p   balancer.Picker
	gen uint64
}

func newHost(target string, log *slog.Logger) *host {
	ctx, stop := context.WithCancel(context.Background())
	h := &host{target: target, log: log, ctx: ctx, stop: stop, live: map[*h2conn]struct{}{}}
	h.work = newSerializer()
	return h
}

// update hands the balancer a new endpoint list and config, building
// (or replacing) the balancer named name first.
func (h *host) update(name string, cfg serviceconfig.LoadBalancingConfig, state resolver.State) {
	if len(state.Endpoints) == 0 {
		for _, a := range state.Addresses {
			state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{a}})
		}
	}
	h.work.schedule(func() {
		if h.ctx.Err() != nil {
			return
		}
		if h.bal == nil || h.balName != name {
			b := balancer.Get(name)
			if b == nil {
				h.log.Error("no such balancer; keeping the current one", "target", h.target, "balancer", name)
				if h.bal == nil {
					return
				}
			} else {
				if h.bal != nil {
					h.bal.Close()
				}
				h.bal = b.Build(h, balancer.BuildOptions{Target: resolver.Target{}})
				h.balName = name
			}
		}
		if err := h.bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: state, BalancerConfig: cfg}); err != nil {
			h.log.Debug("balancer rejected the endpoints", "target", h.target, "err", err)
		}
	})
}

// resolverError tells the balancer resolution failed.
func (h *host) resolverError(err error) {
	h.work.schedule(func() {
		if h.bal != nil && h.ctx.Err() == nil {
			h.bal.ResolverError(err)
		}
	})
}

// NewSubConn implements balancer.ClientConn: a SubConn is an HTTP/2
// connection to one endpoint address, made on Connect.
func (h *host) NewSubConn(addrs []resolver.Address, opts balancer.NewSubConnOptions) (balancer.SubConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("proxy: NewSubConn with no address")
	}
	return &subConn{h: h, addrs: addrs, listener: opts.StateListener, state: connectivity.Idle}, nil
}

// RemoveSubConn implements balancer.ClientConn (deprecated in grpc-go).
func (h *host) RemoveSubConn(sc balancer.SubConn) { sc.Shutdown() }

// UpdateAddresses implements balancer.ClientConn (deprecated in grpc-go).
func (h *host) UpdateAddresses(sc balancer.SubConn, addrs []resolver.Address) {
	sc.UpdateAddresses(addrs)
}

// UpdateState implements balancer.ClientConn: the new picker places new
// streams at once, and the streams parked waiting for one soon after.
// Not during this call: a balancer may hold its own lock while it calls
// UpdateState, and a Pick may take that lock (pickfirst's idle picker
// asks its balancer to exit idle), which would deadlock. As in grpc-go,
// picks run outside the balancer's calls: on work, once this one returns.
func (h *host) UpdateState(st balancer.State) {
	h.mu.Lock()
	h.gen++
	h.picker.Store(&pickerState{p: st.Picker, gen: h.gen})
	parked := len(h.parked) > 0
	h.mu.Unlock()
	if parked {
		h.work.schedule(h.routeParked)
	}
}

// routeParked places the parked streams with the current picker (those it
// cannot place park again). Streams stay parked until it runs, so a host
// closed meanwhile fails them.
func (h *host) routeParked() {
	h.mu.Lock()
	parked := h.parked
	h.parked = nil
	h.mu.Unlock()
	if len(parked) == 0 {
		return
	}
	var b batch
	for _, s := range parked {
		h.route(s, &b)
	}
	b.flush()
}

// ResolveNow implements balancer.ClientConn; resolvers here push updates
// themselves.
func (h *host) ResolveNow(resolver.ResolveNowOptions) {}

// Target implements balancer.ClientConn.
func (h *host) Target() string { return h.target }

// MetricsRecorder implements balancer.ClientConn; the proxy exports its
// own metrics, not the balancers'.
func (h *host) MetricsRecorder() estats.MetricsRecorder { return noMetrics{} }

type noMetrics struct{ estats.MetricsRecorder }

func (noMetrics) RecordInt64Count(*estats.Int64CountHandle, int64, ...string)             {}
func (noMetrics) RecordFloat64Count(*estats.Float64CountHandle, float64, ...string)       {}
func (noMetrics) RecordInt64Histo(*estats.Int64HistoHandle, int64, ...string)             {}
func (noMetrics) RecordFloat64Histo(*estats.Float64HistoHandle, float64, ...string)       {}
func (noMetrics) RecordInt64Gauge(*estats.Int64GaugeHandle, int64, ...string)             {}
func (noMetrics) RecordInt64UpDownCount(*estats.Int64UpDownCountHandle, int64, ...string) {}
func (noMetrics) RegisterAsyncReporter(estats.AsyncMetricReporter, ...estats.AsyncMetric) func() {
	return func() {}
}

var errNotReady = status.Error(codes.Unavailable, "ballast proxy: picked connection is not ready")

// route places a new or parked stream: Pick, then open the stream on the
// picked connection. With no connection to pick yet, the stream parks
// until the next picker, as grpc-go's calls wait for one.
func (h *host) route(s *stream, b *batch) {
	for {
		ps := h.picker.Load()
		var gen uint64
		if ps != nil {
			gen = ps.gen
			res, err := ps.p.Pick(balancer.PickInfo{FullMethodName: s.path, Ctx: context.Background()})
			if err == nil {
				if h.place(s, res, b) {
					return
				}
			} else if !errors.Is(err, balancer.ErrNoSubConnAvailable) {
				st, ok := status.FromError(err)
				if !ok {
					st = status.New(codes.Unavailable, err.Error())
				}
				s.up.metrics.newStreamErrors.Inc()
				if s.up.refuseUnplaced {
					s.refuse(b)
					return
				}
				s.fail(st.Code(), st.Message(), b)
				return
			}
		}
		if h.park(s, gen, b) {
			return
		}
	}
}

// place opens s on the connection of the picked SubConn. It reports false
// when that connection is not (or no longer) usable.
func (h *host) place(s *stream, res balancer.PickResult, b *batch) bool {
	sc, _ := res.SubConn.(*subConn)
	var c *h2conn
	if sc != nil {
		c = sc.conn.Load()
	}
	h.mu.Lock()
	if s.upl.closed { // cancelled while parked
		h.mu.Unlock()
		if res.Done != nil {
			res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")})
		}
		return true
	}
	s.done = res.Done
	result := errConnGone
	if c != nil {
		result = s.attach(c, b)
	}
	if result != nil {
		s.done = nil
	}
	h.mu.Unlock()
	if result != nil && res.Done != nil {
		res.Done(balancer.DoneInfo{Err: errNotReady})
	}
	if result == errConnFull {
		// Waiting would need another stream to end on that connection;
		// the client is better served by an answer now.
		s.up.metrics.newStreamErrors.Inc()
		s.fail(codes.Unavailable, "ballast proxy: upstream connection is at its peer's maximum of concurrent streams", b)
		return true
	}
	return result == nil
}

var (
	errConnGone = errors.New("connection closed or going away")
	errConnFull = errors.New("connection at its maximum of concurrent streams")
)

// park queues s for the next picker; false means a newer picker than gen
// exists, so the caller should pick again.
func (h *host) park(s *stream, gen uint64, b *batch) bool {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		s.fail(codes.Unavailable, "ballast proxy: stopping", b)
		return true
	}
	if s.upl.closed {
		h.mu.Unlock()
		return true
	}
	if ps := h.picker.Load(); ps != nil && ps.gen != gen {
		h.mu.Unlock()
		return false
	}
	// The request headers may still borrow the read loop's buffer.
	for i, it := range s.upl.pending {
		s.upl.pending[i] = it.own()
	}
	h.parked = append(h.parked, s)
	h.mu.Unlock()
	return true
}

// attach opens the upstream leg of s on c and writes what waits for it
// (the request headers, and anything that arrived while parked).
func (s *stream) attach(c *h2conn, b *batch) error {
	up := &s.upl
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goingAway {
		return errConnGone
	}
	if uint32(len(c.legs)) >= c.peerMaxStreams {
		return errConnFull
	}
	up.c, up.id = c, c.nextID
	c.nextID += 2
	up.sendWindow = c.peerWindow
	c.legs[up.id] = up
	up.ready.Store(true)
	if c.nextID >= maxClientStreamID {
		c.retireLocked()
	}
	c.drainLocked(up, b)
	b.markDirty(c)
	return nil
}

// retireLocked stops new streams on an upstream connection; its SubConn
// then reports IDLE and the balancer has it reconnect.
func (c *h2conn) retireLocked() {
	if c.goingAway {
		return
	}
	c.goingAway = true
	if c.onGoingAway != nil {
		c.onGoingAway()
	}
	c.idleCheckLocked()
}

// close stops the balancer and every upstream connection, and fails the
// parked streams.
func (h *host) close() {
	h.mu.Lock()
	h.closed = true
	parked := h.parked
	h.parked = nil
	h.mu.Unlock()
	var b batch
	for _, s := range parked {
		s.fail(codes.Unavailable, "ballast proxy: stopping", &b)
	}
	b.flush()
	done := make(chan struct{})
	h.work.schedule(func() {
		if h.bal != nil {
			h.bal.Close()
		}
		close(done)
	})
	<-done
	h.stop()
	h.work.close()
	h.mu.Lock()
	for c := range h.live {
		c.nc.Close()
	}
	h.mu.Unlock()
	h.conns.Wait()
}

// track adds c to the live connections, or reports false once closed.
func (h *host) track(c *h2conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.live[c] = struct{}{}
	return true
}

func (h *host) untrack(c *h2conn) {
	h.mu.Lock()
	delete(h.live, c)
	h.mu.Unlock()
}

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
	sc.h.work.schedule(func() { sc.listener(balancer.SubConnState{ConnectivityState: st, ConnectionError: err}) })
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
// grpc-go without a health-check config.
func (sc *subConn) RegisterHealthListener(f func(balancer.SubConnState)) {
	sc.h.work.schedule(func() {
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

// upstreamConn handles the connection-level frames of an upstream
// connection.
type upstreamConn struct {
	sc    *subConn
	ready chan struct{}
	once  sync.Once
}

func (u *upstreamConn) newStream(*h2conn, uint32, []hpack.HeaderField, bool, *batch) {}

func (u *upstreamConn) settings(*h2conn) { u.once.Do(func() { close(u.ready) }) }

// goAway: streams the server will not process are refused downstream, so
// clients retry them (gRPC retries REFUSED_STREAM transparently); the
// rest finish, and the connection closes after them.
func (u *upstreamConn) goAway(c *h2conn, f *http2.GoAwayFrame, b *batch) {
	c.mu.Lock()
	var refused []*leg
	for id, l := range c.legs {
		if id > f.LastStreamID {
			refused = append(refused, l)
		}
	}
	c.mu.Unlock()
	for _, l := range refused {
		l.s.reset(l, http2.ErrCodeRefusedStream, b)
	}
	c.mu.Lock()
	c.retireLocked()
	c.mu.Unlock()
}

// serializer runs functions one at a time, in order, on its own goroutine:
// grpc-go's guarantee to balancers that calls into them never overlap.
type serializer struct {
	mu     sync.Mutex
	queue  []func()
	wake   chan struct{}
	closed bool
	done   chan struct{}
}

func newSerializer() *serializer {
	s := &serializer{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.run()
	return s
}

func (s *serializer) schedule(f func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, f)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *serializer) run() {
	defer close(s.done)
	for range s.wake {
		for {
			s.mu.Lock()
			if len(s.queue) == 0 {
				closed := s.closed
				s.mu.Unlock()
				if closed {
					return
				}
				break
			}
			f := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			s.mu.Unlock()
			f()
		}
	}
}

// close runs what is queued, then stops.
func (s *serializer) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.done
}
