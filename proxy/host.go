package proxy

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	estats "google.golang.org/grpc/experimental/stats"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/ballast-dev/ballast/balancer/priority"
	"github.com/ballast-dev/ballast/internal/serializer"
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
	work   *serializer.Serializer
	// conns owns the goroutines of upstream connections.
	conns sync.WaitGroup

	// bal (balancer/priority) and the name and config of its child
	// policy are touched only on work.
	bal     balancer.Balancer
	balName string
	balCfg  serviceconfig.LoadBalancingConfig

	picker atomic.Pointer[pickerState]
	// hashHeader is the request header the balancer hashes (ring_hash's
	// requestHashHeader; empty for other policies): a pick carries its
	// value, as grpc-go's ring_hash reads it from the call's metadata.
	hashHeader atomic.Pointer[string]

	// mu is the lock of its upstream (upstream.parkMu), shared by the
	// hosts of every Cluster the upstream's route names: a call waiting
	// for a route or a picker is guarded by the one lock whichever host
	// it ends up on.
	mu  *sync.Mutex
	gen uint64
	// balancerPicker is the balancer's last picker, and maxRequests its
	// circuit breaker's bound (circuitbreaker.go); inFlight counts the
	// streams picked and not done while it has one.
	balancerPicker balancer.Picker
	maxRequests    uint32
	inFlight       atomic.Int64
	// parked are the streams waiting for a picker that can place them
	// (while the Cluster has no connection ready); maxPending bounds how
	// many (circuitBreaker.maxPendingRequests; 0: no bound).
	parked     []*stream
	maxPending uint32
	closed     bool
	// live are the upstream connections, closed when the host closes.
	live map[*h2conn]struct{}
}

type pickerState struct {
	p   balancer.Picker
	gen uint64
}

// newHost makes the host of target (an upstream's target, or a Cluster
// its route names), locked by mu.
func newHost(target string, mu *sync.Mutex, log *slog.Logger) *host {
	ctx, stop := context.WithCancel(context.Background())
	h := &host{target: target, mu: mu, log: log, ctx: ctx, stop: stop, live: map[*h2conn]struct{}{}}
	h.work = serializer.New()
	return h
}

// update hands the balancer a new endpoint list and config for the child
// policy named name. The balancer is always balancer/priority over that
// policy: endpoints carry their xDS locality priority, and calls fail over
// to the next priority when a priority's connections all fail, before the
// control plane says so (with one priority, the channel sees the child's
// own picker). A new name changes the child policy in place.
func (h *host) update(name string, cfg serviceconfig.LoadBalancingConfig, state resolver.State) {
	if len(state.Endpoints) == 0 {
		for _, a := range state.Addresses {
			state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{a}})
		}
	}
	h.work.Schedule(func() {
		if h.ctx.Err() != nil {
			return
		}
		if balancer.Get(name) == nil {
			h.log.Error("no such balancer; keeping the current one", "target", h.target, "balancer", name)
			if h.bal == nil {
				return
			}
			name, cfg = h.balName, h.balCfg
		}
		if h.bal == nil {
			h.bal = balancer.Get(priority.Name).Build(h, balancer.BuildOptions{Target: resolver.Target{}})
		}
		h.balName, h.balCfg = name, cfg
		if err := h.bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: state, BalancerConfig: &priority.Config{ChildName: name, Child: cfg}}); err != nil {
			h.log.Debug("balancer rejected the endpoints", "target", h.target, "err", err)
		}
	})
}

// resolverError tells the balancer resolution failed.
func (h *host) resolverError(err error) {
	h.work.Schedule(func() {
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
	h.balancerPicker = st.Picker
	h.storePickerLocked()
	parked := len(h.parked) > 0
	h.mu.Unlock()
	if parked {
		h.work.Schedule(h.routeParked)
	}
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

// close stops the balancer and every upstream connection, and fails the
// parked streams.
func (h *host) close() {
	h.closeLive()
	h.retire("ballast proxy: stopping")
}

// retire stops a host no route sends calls to any more: its parked
// streams fail with msg, its balancer closes (so its SubConns shut down and
// each connection closes once its last stream ends), and retire returns
// when every connection has closed. closeLive, from any goroutine, ends
// the wait at once.
func (h *host) retire(msg string) {
	h.mu.Lock()
	h.closed = true
	parked := h.parked
	h.parked = nil
	h.mu.Unlock()
	var b batch
	for _, s := range parked {
		s.fail(codes.Unavailable, msg, &b)
	}
	b.flush()
	done := make(chan struct{})
	h.work.Schedule(func() {
		if h.bal != nil {
			h.bal.Close()
		}
		close(done)
	})
	<-done
	h.stop()
	h.work.Close()
	h.conns.Wait()
}

// closeLive closes every upstream connection of h, and any it makes from
// now on.
func (h *host) closeLive() {
	h.mu.Lock()
	h.closed = true
	for c := range h.live {
		c.closeConn()
	}
	h.mu.Unlock()
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
