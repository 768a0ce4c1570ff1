package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
)

// reasonInboundNotHTTP2 labels inbound connections passed through to the
// app as plain TCP (HTTP/1, TLS, anything but cleartext HTTP/2).
const reasonInboundNotHTTP2 = "inbound_not_http2"

// inbound is the proxy's side facing the pod's callers: connections
// iptables redirected on their way into the pod arrive on lis and go on to
// the app at their original destination. The app is one upstream per
// port, placed with the same frame-level forwarding as outbound calls, so
// each inbound call is counted (status code, duration) and, on shutdown,
// drained with the same two-phase GOAWAY: callers move their new calls to
// other pods while the calls already here finish.
type inbound struct {
	lis       net.Listener
	upstreams *upstreams
	metrics   *inboundMetrics
}

func newInbound(lis net.Listener, reg prometheus.Registerer, maxMessage uint32, log *slog.Logger) *inbound {
	m := newInboundMetrics(reg)
	return &inbound{
		lis: lis,
		upstreams: &upstreams{
			forService: m.forTarget,
			// The app is the only place for a call; one it cannot take
			// (say it is shutting down, its listener closed) never
			// reached it, so the caller may safely retry elsewhere.
			refuseUnplaced: true,
			maxMessage:     maxMessage,
			log:            log.With("side", "inbound"),
			byName:         map[string]*upstream{},
		},
		metrics: m,
	}
}

// serveInbound sends one inbound connection to the app: HTTP/2 through the
// call-level path, anything else as plain TCP.
func (p *Proxy) serveInbound(ctx context.Context, c net.Conn) {
	dst, err := p.opts.OriginalDst(c)
	if err == nil && !redirected(c, dst) {
		err = errors.New("connection was made to the inbound listener itself")
	}
	if err != nil {
		// Forwarding a connection that was not redirected would loop.
		p.log.Debug("inbound: no original destination; closing", "client", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	prefix, isHTTP2, err := sniff(c, p.opts.SniffTimeout)
	if err != nil {
		p.log.Debug("inbound: reading connection preface", "client", c.RemoteAddr(), "destination", dst, "err", err)
		c.Close()
		return
	}
	if !isHTTP2 {
		p.passThrough(ctx, c, dst, prefix, reasonInboundNotHTTP2)
		return
	}
	// A caller must not find this pod ready when its app is not: the app
	// may have got SIGTERM before the proxy and closed its listener while
	// callers still pick this pod. Then the caller's connection is closed
	// before the HTTP/2 handshake, as a refused connection would be, so
	// its balancer stops picking this pod instead of retrying here. One
	// dial per caller connection, not per call.
	if err := probeApp(ctx, dst); err != nil {
		p.log.Debug("inbound: app not accepting; closing", "client", c.RemoteAddr(), "destination", dst, "err", err)
		c.Close()
		return
	}
	up, err := p.inbound.upstreams.get(appTarget(dst))
	if err != nil {
		p.log.Debug("inbound: no upstream; passing through", "destination", dst, "err", err)
		p.passThrough(ctx, c, dst, prefix, reasonNoUpstream)
		return
	}
	p.serveDownstream(&prefixConn{Conn: c, prefix: prefix}, up, nil)
}

// refuse ends a call that never reached the upstream with RST_STREAM
// REFUSED_STREAM, which gRPC clients retry transparently, rather than with
// a status they would return to the application. The app not taking calls
// means it is gone or going (say it got the same SIGTERM as the proxy and
// closed its listener first), so the caller's connection is drained
// first: a client reads the GOAWAY before the reset, and retries on
// another connection, to another pod, instead of here again.
func (s *stream) refuse(b *batch) {
	c := s.down.c
	c.mu.Lock()
	c.startDrainLocked()
	c.mu.Unlock()
	s.setCode(codes.Unavailable)
	s.sendReset(&s.upl, http2.ErrCodeCancel, b)
	s.sendReset(&s.down, http2.ErrCodeRefusedStream, b)
}

// probeApp checks that the app accepts connections at dst.
func probeApp(ctx context.Context, dst netip.AddrPort) error {
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return err
	}
	return c.Close()
}

// redirected reports whether dst differs from where the connection
// actually arrived, as it does for a connection iptables redirected.
func redirected(c net.Conn, dst netip.AddrPort) bool {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return true
	}
	return local.AddrPort() != dst
}

// appTarget is the grpc target of the app behind an inbound connection:
// its original destination, the pod's own address. The proxy dials it as
// its own uid, which the outbound rules leave alone.
func appTarget(dst netip.AddrPort) string { return "passthrough:///" + dst.String() }

// inboundMetrics are the series of calls into the pod, by the app's port.
type inboundMetrics struct {
	requests  *prometheus.CounterVec
	inFlight  *prometheus.GaugeVec
	appErrors *prometheus.CounterVec
	duration  *prometheus.HistogramVec
}

func newInboundMetrics(reg prometheus.Registerer) *inboundMetrics {
	m := &inboundMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_inbound_requests_total",
			Help: "Calls (HTTP/2 streams) into the pod, by the app's port and final gRPC status code.",
		}, []string{"port", "code"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ballast_proxy_inbound_requests_in_flight",
			Help: "Calls into the pod being served now, by the app's port.",
		}, []string{"port"}),
		appErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_inbound_app_errors_total",
			Help: "Calls into the pod that could not reach the app (not listening, connection failure), by port.",
		}, []string{"port"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ballast_proxy_inbound_request_duration_seconds",
			Help: "Duration of calls into the pod, from their request headers to their end, by the app's port.",
			// 0.5 ms to about 16 s: unary calls to long streams.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"port"}),
	}
	reg.MustRegister(m.requests, m.inFlight, m.appErrors, m.duration)
	return m
}

// forTarget makes the metrics of one app port; target is an appTarget.
func (m *inboundMetrics) forTarget(target string) upstreamMetrics {
	port := target[strings.LastIndexByte(target, ':')+1:]
	um := upstreamMetrics{
		inFlight:        m.inFlight.WithLabelValues(port),
		newStreamErrors: m.appErrors.WithLabelValues(port),
		duration:        m.duration.WithLabelValues(port),
	}
	for c := codes.OK; c <= maxCode; c++ {
		um.streams[c] = m.requests.WithLabelValues(port, c.String())
	}
	return um
}
