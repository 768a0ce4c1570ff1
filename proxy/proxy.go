// Package proxy is Ballast's sidecar data path: it takes the gRPC
// connections an unmodified client opens to a Service and balances every
// call (every HTTP/2 stream) across the Service's endpoints.
//
// It forwards HTTP/2 frames, not messages: each stream the client opens is
// routed by the Service's route (route.go: the rule its :path and headers
// match, one of the rule's backend Clusters by weight, the rule's header
// filters) and placed by a grpc-go balancer (the one that Cluster names,
// the implementation a proxyless client runs) on a long-lived, multiplexed
// HTTP/2 connection to the picked endpoint; its HEADERS, DATA, trailers and
// RST_STREAM are forwarded both ways with stream ids remapped and header
// blocks re-encoded. Metadata, deadlines (grpc-timeout), cancellation,
// status, compression and message bytes pass through untouched. Flow
// control is end to end: a window update goes back to the sender only once
// its bytes were written to the other side.
//
// A rule with a call policy (call.go) also bounds its calls in time (the
// call's timeout, each try's) and retries tries that fail before any of
// their response reached the client, replaying a bounded copy of the
// request to a new pick; calls of rules without one keep no copy and no
// timer.
//
// Connections reach it either through explicit listeners, one per upstream
// target, or through one transparent listener fed by iptables REDIRECT,
// where the original destination picks the Service and anything that is not
// gRPC to a known Service passes through as plain TCP.
package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
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
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/internal/callpolicy"
	"github.com/ballast-dev/ballast/internal/connset"
	"github.com/ballast-dev/ballast/xds/client"
)

// Defaults for Options fields left zero.
const (
	DefaultMaxMessageBytes = 64 << 20
	DefaultSniffTimeout    = 200 * time.Millisecond
	DefaultDrainTimeout    = 30 * time.Second
)

// Outbound is an explicit listener: every call accepted on Listener goes to
// Target: xds:///name.ns:port (resolved with the control plane), or any
// target a grpc-go resolver understands (dns:///host:port, host:port, ...).
type Outbound struct {
	Listener net.Listener
	Target   string
	// TLS, if set, terminates TLS on every connection Listener accepts
	// (the gateway's HTTPS listeners), the handshake in the connection's
	// own goroutine. The proxy layers TLS over the socket itself rather
	// than taking a TLS listener, so that the records are read and
	// written with the raw system calls of its cleartext connections
	// (socketIO).
	TLS *tls.Config
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
	// Inbound, if set, accepts connections redirected on their way into
	// the pod (`ballast proxy init --inbound-ports`): each goes on to the
	// app at its original destination, its calls counted and drained.
	Inbound net.Listener
	// OriginalDst reads where an intercepted connection was going; nil
	// means SO_ORIGINAL_DST, which only exists for REDIRECTed connections.
	OriginalDst func(net.Conn) (netip.AddrPort, error)

	// XDS, if set, resolves xds:/// targets with the control plane: their
	// endpoints and the balancer their Cluster names.
	XDS XDS
	// Resolvers resolve targets of their schemes, before grpc-go's
	// registry (passthrough, dns, and any registered by imports).
	Resolvers []resolver.Builder
	// MaxMessageBytes bounds one message in either direction; zero means
	// DefaultMaxMessageBytes. Messages are never held whole: the limit is
	// checked from each message's length prefix as its bytes pass.
	MaxMessageBytes int
	// SniffTimeout bounds the wait for an HTTP/2 preface on a connection
	// to a known Service; a client that says nothing by then (a
	// server-speaks-first protocol) is passed through.
	SniffTimeout time.Duration
	// DrainTimeout bounds how long in-flight calls and passthrough
	// connections may run after shutdown begins.
	DrainTimeout time.Duration
	// Limits bound each client connection; zero fields take defaults.
	Limits Limits

	// Synced, if set, must also report true before the proxy is ready: say
	// the discovery source behind Destinations has filled its cache, so
	// that the app's first calls are balanced, not passed through.
	Synced func() bool

	// Metrics receives the proxy's series; nil means a new registry, which
	// the admin handler serves either way.
	Metrics *prometheus.Registry
	Log     *slog.Logger
}

// XDS follows xds:/// targets: the process's one xDS client
// (xds/client.Client), which the caller runs.
type XDS interface {
	Watch(target string, fn func(client.Update)) (cancel func())
}

// Proxy is a running sidecar data path. Create it with New, run it with
// Serve, and expose AdminHandler for readiness and metrics.
type Proxy struct {
	opts        Options
	log         *slog.Logger
	registry    *prometheus.Registry
	metrics     *metrics
	upstreams   *upstreams
	outbound    []*routedListener
	inbound     *inbound
	passthrough *connset.Set

	ready atomic.Bool
	// conns tracks downstream connection handlers; Serve waits for them.
	conns sync.WaitGroup

	downMu   sync.Mutex
	down     map[*h2conn]struct{}
	draining bool
}

// routedListener binds every connection it accepts to one upstream.
type routedListener struct {
	net.Listener
	up  *upstream
	tls *tls.Config
}

// New validates opts and builds a Proxy; nothing runs until Serve.
func New(opts Options) (*Proxy, error) {
	if len(opts.Outbound) == 0 && opts.Transparent == nil && opts.Inbound == nil {
		return nil, errors.New("proxy: no listeners: give an outbound listener, a transparent one or an inbound one")
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
	limits, err := opts.Limits.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	opts.Limits = limits
	if opts.OriginalDst == nil {
		opts.OriginalDst = originalDst
	}
	p := &Proxy{
		opts:        opts,
		log:         cmp.Or(opts.Log, slog.Default()).With("component", "proxy"),
		registry:    cmp.Or(opts.Metrics, prometheus.NewRegistry()),
		passthrough: connset.New(),
		down:        map[*h2conn]struct{}{},
	}
	p.metrics = newMetrics(p.registry)
	p.upstreams = &upstreams{
		resolvers:  opts.Resolvers,
		metrics:    p.metrics,
		maxMessage: uint32(min(opts.MaxMessageBytes, 1<<32-1)),
		log:        p.log,
		byName:     map[string]*upstream{},
		replay:     &replayPool{},
		buckets:    &callpolicy.Buckets{},
	}
	p.upstreams.xds = opts.XDS
	if opts.Inbound != nil {
		p.inbound = newInbound(opts.Inbound, p.registry, p.upstreams.maxMessage, p.log)
	}
	for _, o := range opts.Outbound {
		up, err := p.upstreams.get(o.Target)
		if err != nil {
			p.upstreams.close()
			return nil, fmt.Errorf("proxy: outbound %s: %w", o.Listener.Addr(), err)
		}
		p.outbound = append(p.outbound, &routedListener{Listener: o.Listener, up: up, tls: o.TLS})
	}
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
	serve := func(lis net.Listener, conn func(net.Conn)) {
		serving.Go(func() {
			if err := p.accept(ctx, lis, conn); err != nil {
				failed <- err
			}
		})
	}
	for _, lis := range p.outbound {
		serve(lis, func(c net.Conn) { p.serveDownstream(c, lis.up, lis.tls) })
	}
	if p.opts.Transparent != nil {
		serve(p.opts.Transparent, func(c net.Conn) { p.serveTransparent(ctx, c) })
	}
	if p.inbound != nil {
		serve(p.inbound.lis, func(c net.Conn) { p.serveInbound(ctx, c) })
	}
	p.ready.Store(true)
	p.log.Debug("serving", "outbound", len(p.outbound), "transparent", p.opts.Transparent != nil, "inbound", p.inbound != nil)

	var err error
	select {
	case <-ctx.Done():
	case err = <-failed:
	}
	p.ready.Store(false)
	p.drain(&serving)
	p.conns.Wait()
	p.upstreams.close()
	if p.inbound != nil {
		p.inbound.upstreams.close()
	}
	return err
}

// accept serves each connection lis accepts in its own goroutine, until
// lis is closed.
func (p *Proxy) accept(ctx context.Context, lis net.Listener, serve func(net.Conn)) error {
	for {
		c, err := lis.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("proxy: accept on %s: %w", lis.Addr(), err)
		}
		p.conns.Go(func() { serve(c) })
	}
}

// serveDownstream runs one client connection: every stream on it goes to
// up. With tlsConfig it terminates TLS first.
func (p *Proxy) serveDownstream(nc net.Conn, up *upstream, tlsConfig *tls.Config) {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if tlsConfig != nil {
		nc = tls.Server(socketConn(nc), tlsConfig)
	}
	c := newServerConn(nc, &p.opts.Limits, p.metrics.clientErrors)
	defer c.stopTimers()
	p.downMu.Lock()
	if p.draining {
		p.downMu.Unlock()
		nc.Close()
		return
	}
	p.down[c] = struct{}{}
	p.downMu.Unlock()
	defer func() {
		p.downMu.Lock()
		delete(p.down, c)
		p.downMu.Unlock()
	}()
	if err := c.readPreface(); err != nil {
		p.log.Debug("client connection", "client", nc.RemoteAddr(), "err", err)
		c.linger()
		nc.Close()
		return
	}
	if err := c.start(); err != nil {
		nc.Close()
		return
	}
	err := c.readLoop(&downstream{up: up})
	p.log.Debug("client connection ended", "client", nc.RemoteAddr(), "err", err)
}

// drain stops the downstream side: it closes the listeners, drains every
// client connection with GOAWAY (each closes when its last stream ends), and
// after DrainTimeout closes what is left. Passthrough connections get the
// same deadline.
func (p *Proxy) drain(serving *sync.WaitGroup) {
	deadline := time.NewTimer(p.opts.DrainTimeout)
	defer deadline.Stop()
	for _, lis := range p.outbound {
		lis.Close()
	}
	if p.opts.Transparent != nil {
		p.opts.Transparent.Close()
	}
	if p.inbound != nil {
		p.inbound.lis.Close()
	}
	serving.Wait()
	p.downMu.Lock()
	p.draining = true
	for c := range p.down {
		c.mu.Lock()
		c.startDrainLocked()
		c.mu.Unlock()
	}
	p.downMu.Unlock()
	done := make(chan struct{})
	go func() { p.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-deadline.C:
		p.log.Warn("drain timeout: closing client connections", "timeout", p.opts.DrainTimeout)
		p.downMu.Lock()
		for c := range p.down {
			c.closeConn()
		}
		p.downMu.Unlock()
		p.passthrough.CloseAll()
		<-done
	}
	p.passthrough.CloseAll()
}

// downstream handles the connection-level frames of a client connection.
type downstream struct {
	up *upstream
}

func (d *downstream) settings(*h2conn) {}

func (d *downstream) goAway(*h2conn, *http2.GoAwayFrame, *batch) {}

// newStream starts a call: it registers the client's stream, and has the
// balancer place it.
func (d *downstream) newStream(c *h2conn, id uint32, fields []hpack.HeaderField, end bool, b *batch) {
	c.mu.Lock()
	if c.goingAway || uint32(len(c.legs)) >= c.limits.MaxConcurrentStreams {
		c.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
		b.markDirty(c)
		c.mu.Unlock()
		return
	}
	if len(c.legs) == 0 && c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	s := newStream(d.up, c.head.path)
	s.down.c, s.down.id = c, id
	s.down.contentLength = c.head.contentLength
	s.down.sendWindow = c.peerWindow
	s.down.recvDone = end
	s.down.headersRecv = true
	s.down.ready.Store(true)
	c.legs[id] = &s.down
	c.mu.Unlock()
	d.up.metrics.inFlight.Inc()
	s.upl.pending = append(s.firstPending[:0:1], item{fields: fields, end: end})
	s.req = fields
	d.up.dispatch(s, b)
}
