// Package proxy is Ballast's sidecar data path: it takes the gRPC
// connections an unmodified client opens to a Service and balances every
// call (every HTTP/2 stream) across the Service's endpoints.
//
// The upstream side of each destination Service is a grpc-go ClientConn
// dialled with the Service's xds:/// target, so the proxy's per-call decision
// is the proxyless client's: the same xDS resources, the same balancers. The
// downstream side is a grpc.Server that knows no services: every call goes
// to one handler that forwards messages as opaque bytes, with metadata,
// deadlines, cancellation and status passing through.
//
// Connections reach it either through explicit listeners, one per upstream
// target, or through one transparent listener fed by iptables REDIRECT,
// where the original destination picks the Service and anything that is not
// gRPC to a known Service passes through as plain TCP.
package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // accept gzip-compressed calls
	"google.golang.org/grpc/keepalive"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxMessageBytes = 64 << 20
	DefaultSniffTimeout    = 200 * time.Millisecond
	DefaultDrainTimeout    = 30 * time.Second
)

// Outbound is an explicit listener: every call accepted on Listener goes to
// Target, any grpc-go target (xds:///name.ns:port, dns:///host:port, ...).
type Outbound struct {
	Listener net.Listener
	Target   string
}

// Destinations maps the original destination of an intercepted connection
// to the gRPC target that serves it.
type Destinations interface {
	Target(dst netip.AddrPort) (target string, ok bool)
}

// Options configure a Proxy. Listeners are opened by the caller, so a bad
// address fails before anything starts and tests can use port 0.
type Options struct {
	// Outbound are the explicit listeners.
	Outbound []Outbound
	// Transparent, if set, accepts connections redirected by iptables;
	// Destinations says which of them are calls to a known Service.
	Transparent  net.Listener
	Destinations Destinations
	// OriginalDst reads where an intercepted connection was going; nil
	// means SO_ORIGINAL_DST, which only exists for REDIRECTed connections.
	OriginalDst func(net.Conn) (netip.AddrPort, error)

	// DialOptions are added to every upstream ClientConn's options, after
	// the proxy's own (insecure transport, round_robin default, sizes).
	DialOptions []grpc.DialOption
	// MaxMessageBytes bounds one message in either direction; zero means
	// DefaultMaxMessageBytes. The proxy holds at most one message per
	// direction per call.
	MaxMessageBytes int
	// SniffTimeout bounds the wait for an HTTP/2 preface on a connection
	// to a known Service; a client that says nothing by then (a
	// server-speaks-first protocol) is passed through.
	SniffTimeout time.Duration
	// DrainTimeout bounds how long in-flight calls and passthrough
	// connections may run after shutdown begins.
	DrainTimeout time.Duration

	// Synced, if set, must also report true before the proxy is ready: say
	// the discovery source behind Destinations has filled its cache, so
	// that the app's first calls are balanced, not passed through.
	Synced func() bool

	// Metrics receives the proxy's series; nil means a new registry, which
	// the admin handler serves either way.
	Metrics *prometheus.Registry
	Log     *slog.Logger
}

// Proxy is a running sidecar data path. Create it with New, run it with
// Serve, and expose AdminHandler for readiness and metrics.
type Proxy struct {
	opts      Options
	log       *slog.Logger
	registry  *prometheus.Registry
	metrics   *metrics
	server    *grpc.Server
	upstreams *upstreams
	outbound  []*routedListener
	// intercepted feeds the grpc.Server the transparent listener's
	// connections that turned out to be gRPC to a known Service.
	intercepted *connQueue
	passthrough *connSet

	ready atomic.Bool
	// streams tracks request-copying goroutines; conns tracks transparent
	// connection handlers. Serve waits for both.
	streams sync.WaitGroup
	conns   sync.WaitGroup
}

// New validates opts and builds a Proxy; nothing runs until Serve.
func New(opts Options) (*Proxy, error) {
	if len(opts.Outbound) == 0 && opts.Transparent == nil {
		return nil, errors.New("proxy: no listeners: give an outbound listener or a transparent one")
	}
	if opts.Transparent != nil && opts.Destinations == nil {
		return nil, errors.New("proxy: transparent listener needs Destinations to map original destinations to Services")
	}
	if opts.MaxMessageBytes < 0 {
		return nil, fmt.Errorf("proxy: max message bytes %d is negative", opts.MaxMessageBytes)
	}
	opts.MaxMessageBytes = cmp.Or(opts.MaxMessageBytes, DefaultMaxMessageBytes)
	opts.SniffTimeout = cmp.Or(opts.SniffTimeout, DefaultSniffTimeout)
	opts.DrainTimeout = cmp.Or(opts.DrainTimeout, DefaultDrainTimeout)
	if opts.OriginalDst == nil {
		opts.OriginalDst = originalDst
	}
	p := &Proxy{
		opts:        opts,
		log:         cmp.Or(opts.Log, slog.Default()).With("component", "proxy"),
		registry:    cmp.Or(opts.Metrics, prometheus.NewRegistry()),
		passthrough: &connSet{m: map[net.Conn]struct{}{}},
	}
	p.metrics = newMetrics(p.registry)
	p.upstreams = newUpstreams(dialOptions(opts.MaxMessageBytes, opts.DialOptions), callOptions(), p.metrics)
	for _, o := range opts.Outbound {
		up, err := p.upstreams.get(o.Target)
		if err != nil {
			p.upstreams.close()
			return nil, fmt.Errorf("proxy: outbound %s: %w", o.Listener.Addr(), err)
		}
		p.outbound = append(p.outbound, &routedListener{Listener: o.Listener, up: up})
	}
	if opts.Transparent != nil {
		p.intercepted = newConnQueue(opts.Transparent.Addr())
	}
	p.server = grpc.NewServer(
		grpc.UnknownServiceHandler(p.handle),
		grpc.ForceServerCodecV2(rawCodec{}),
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.MaxSendMsgSize(opts.MaxMessageBytes),
		// The app's keepalive pings must not get it disconnected: the
		// proxy accepts them as often as any sane client sends them.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	return p, nil
}

// Ready reports whether the listeners are serving, Destinations are synced
// and shutdown has not begun.
func (p *Proxy) Ready() bool {
	return p.ready.Load() && (p.opts.Synced == nil || p.opts.Synced())
}

// AdminHandler serves /ready (200 when Ready, else 503) and /metrics.
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !p.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{}))
	return mux
}

// Serve runs the proxy until ctx ends or a listener fails. Then it drains:
// it stops accepting, sends GOAWAY on every client connection so no new
// call starts, lets in-flight calls and passthrough connections finish for
// up to DrainTimeout, closes what is left and returns.
func (p *Proxy) Serve(ctx context.Context) error {
	failed := make(chan error, len(p.outbound)+2)
	var serving sync.WaitGroup
	serve := func(lis net.Listener) {
		serving.Go(func() {
			if err := p.server.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				failed <- fmt.Errorf("proxy: serve %s: %w", lis.Addr(), err)
			}
		})
	}
	for _, lis := range p.outbound {
		serve(lis)
	}
	if p.opts.Transparent != nil {
		serve(p.intercepted)
		serving.Go(func() {
			if err := p.acceptTransparent(ctx); err != nil {
				failed <- err
			}
		})
	}
	p.ready.Store(true)
	p.log.Debug("serving", "outbound", len(p.outbound), "transparent", p.opts.Transparent != nil)

	var err error
	select {
	case <-ctx.Done():
	case err = <-failed:
	}
	p.ready.Store(false)
	p.drain()
	serving.Wait()
	p.conns.Wait()
	p.streams.Wait()
	p.upstreams.close()
	return err
}

// drain stops the downstream side: GracefulStop closes the listeners and
// sends GOAWAY, then waits for in-flight calls; after DrainTimeout it stops
// hard. Passthrough connections get the same deadline.
func (p *Proxy) drain() {
	deadline := time.NewTimer(p.opts.DrainTimeout)
	defer deadline.Stop()
	if p.opts.Transparent != nil {
		p.opts.Transparent.Close()
	}
	stopped := make(chan struct{})
	go func() {
		p.server.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-deadline.C:
		p.log.Warn("drain timeout: cancelling in-flight calls", "timeout", p.opts.DrainTimeout)
		p.server.Stop()
		<-stopped
	}
	if !p.passthrough.waitEmpty(deadline.C) {
		p.log.Warn("drain timeout: closing passthrough connections", "timeout", p.opts.DrainTimeout)
	}
	p.passthrough.closeAll()
}

// routedListener binds every connection it accepts to one upstream.
type routedListener struct {
	net.Listener
	up *upstream
}

func (l *routedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return route(c, c.LocalAddr(), l.up), nil
}
