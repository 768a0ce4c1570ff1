// Package gateway is Ballast's Gateway API gateway for gRPC (north-south):
// for each Gateway of a GatewayClass whose controllerName is
// ballast.dev/gateway it serves the listeners (HTTP as h2c, HTTPS with TLS
// terminated from the listener's certificate, chosen by SNI), attaches
// GRPCRoutes to them, and forwards every call on the sidecar's data path
// (package proxy: the strict HTTP/2 edge, the route's per-call decision,
// grpc-go's balancers), and says what came of each object in Status.
//
// The seam with the sidecar is the proxy's explicit listener: each port of
// a Gateway is one proxy.Proxy with one outbound listener whose target is
// the port, and the gateway stands in for the control plane (proxy.XDS):
// it hands that listener the port's route (its listeners' GRPCRoute rules,
// hostnames as :authority matches) and the Clusters and endpoints of the
// Services the route names, computed from the discovery Registry as the
// control plane computes them. A certificate change swaps what the TLS
// listener presents to new handshakes; connections keep theirs.
//
// Everything is level-triggered: any change in the registry makes the
// gateway compute what it serves anew (config.go) and move its listeners
// there.
package gateway

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/proxy"
	"github.com/ballast-dev/ballast/xds"
	"github.com/ballast-dev/ballast/xds/client"
)

// ControllerName is the GatewayClass controllerName Ballast's gateway
// serves.
const ControllerName gatewayv1.GatewayController = "ballast.dev/gateway"

// Options configure a Gateway.
type Options struct {
	// Registry is where the Gateways, routes, Services and Secrets are
	// read from; a discovery source fills it.
	Registry *discovery.Registry
	// Controller is the controllerName served; empty means
	// ControllerName.
	Controller gatewayv1.GatewayController
	// Gateway, if set, is the one Gateway served; else every Gateway of
	// the controller's classes is (their ports must differ).
	Gateway *discovery.Key
	// Host is the address listeners bind, with the listener's port;
	// empty means every interface.
	Host string
	// Addresses are the Gateway's addresses in status, until
	// SetAddresses gives others.
	Addresses []gatewayv1.GatewayStatusAddress
	// XDS names Clusters as the control plane does.
	XDS xds.Options
	// MaxMessageBytes, DrainTimeout and Limits are the proxy's (zero:
	// its defaults).
	MaxMessageBytes int
	DrainTimeout    time.Duration
	Limits          proxy.Limits
	// Status, if set, is called with what the gateway says of its
	// objects whenever that changes.
	Status func(Status)
	Log    *slog.Logger
}

// Gateway serves the listeners of Gateways. Create it with New and run it
// with Run.
type Gateway struct {
	opts Options
	log  *slog.Logger

	// mu guards what the proxies' watches read.
	mu      sync.Mutex
	updates map[string]client.Update
	watches map[string]map[*watch]struct{}

	// Owned by Run.
	servers    map[int32]*server
	lastStatus *Status
	ready      atomic.Bool

	// noRoute is the address of the server answering the calls no rule
	// matches (set by Run).
	noRoute netip.AddrPort
	// addresses are the Gateway's addresses in status; addressesSet
	// tells Run they changed.
	addresses    atomic.Pointer[[]gatewayv1.GatewayStatusAddress]
	addressesSet chan struct{}
}

// New checks opts and returns a Gateway; nothing runs until Run.
func New(opts Options) (*Gateway, error) {
	if opts.Registry == nil {
		return nil, errors.New("gateway: no registry")
	}
	opts.Controller = cmp.Or(opts.Controller, ControllerName)
	g := &Gateway{
		opts:         opts,
		log:          cmp.Or(opts.Log, slog.Default()).With("component", "gateway"),
		updates:      map[string]client.Update{},
		watches:      map[string]map[*watch]struct{}{},
		servers:      map[int32]*server{},
		addressesSet: make(chan struct{}, 1),
	}
	g.addresses.Store(&opts.Addresses)
	return g, nil
}

// SetAddresses replaces the Gateway's addresses in status: a load
// balancer's, which may come after the gateway started.
func (g *Gateway) SetAddresses(addrs []gatewayv1.GatewayStatusAddress) {
	g.addresses.Store(&addrs)
	select {
	case g.addressesSet <- struct{}{}:
	default:
	}
}

// Ready reports whether the gateway has configured its listeners once.
func (g *Gateway) Ready() bool { return g.ready.Load() }

// Run serves until ctx ends, then drains every listener.
func (g *Gateway) Run(ctx context.Context) error {
	stopNoRoute, err := g.serveNoRoute()
	if err != nil {
		return err
	}
	defer stopNoRoute()
	sub := g.opts.Registry.SubscribeGateways()
	defer sub.Close()
	defer g.stopAll()
	for {
		sub.Drain()
		g.reconcile(ctx)
		g.ready.Store(true)
		select {
		case <-ctx.Done():
			return nil
		case <-sub.C():
		case <-g.addressesSet:
		}
	}
}

// reconcile computes what to serve and moves the listeners there; a port
// that cannot be bound is reported in status and tried again at the next
// change.
func (g *Gateway) reconcile(ctx context.Context) {
	opts := configOptions{controller: g.opts.Controller, only: g.opts.Gateway, addresses: *g.addresses.Load(), xds: g.opts.XDS, noRoute: g.noRoute}
	cfg := configure(g.opts.Registry, opts)
	for port, pc := range cfg.ports {
		if err := g.serve(ctx, pc); err != nil {
			g.log.Error("cannot serve a Gateway's port", "gateway", pc.gateway, "port", port, "err", err)
			if opts.unbindable == nil {
				opts.unbindable = map[int32]string{}
			}
			opts.unbindable[port] = fmt.Sprintf("cannot listen on port %d: %v", port, err)
		}
	}
	if opts.unbindable != nil {
		cfg = configure(g.opts.Registry, opts)
	}
	for port, s := range g.servers {
		if cfg.ports[port] == nil {
			g.log.Info("stop listening", "port", port)
			s.stop()
			delete(g.servers, port)
		}
	}
	g.publish(cfg)
	g.report(cfg.status)
}

// publish hands each port's route and Clusters to its proxy's watch.
func (g *Gateway) publish(cfg *config) {
	g.mu.Lock()
	defer g.mu.Unlock()
	next := map[string]client.Update{}
	for _, pc := range cfg.ports {
		next[pc.target()] = pc.update
	}
	for target, u := range next {
		if old, ok := g.updates[target]; ok && reflect.DeepEqual(old, u) {
			continue
		}
		for w := range g.watches[target] {
			w.fn(u)
		}
	}
	g.updates = next
}

// report passes status on when it changed.
func (g *Gateway) report(s Status) {
	if g.lastStatus != nil && reflect.DeepEqual(*g.lastStatus, s) {
		return
	}
	g.lastStatus = &s
	for _, gs := range s.Gateways {
		for _, l := range gs.Status.Listeners {
			for _, c := range l.Conditions {
				if c.Status != "True" && c.Type != string(gatewayv1.ListenerConditionConflicted) {
					g.log.Warn("listener not served", "gateway", gs.Gateway.Namespace+"/"+gs.Gateway.Name, "listener", l.Name,
						"condition", c.Type, "reason", c.Reason, "message", c.Message)
				}
			}
		}
	}
	if g.opts.Status != nil {
		g.opts.Status(s)
	}
}

// watch is one proxy upstream following a port's route.
type watch struct{ fn func(client.Update) }

// Watch implements proxy.XDS: the proxy of a port follows the port's
// route and Clusters.
func (g *Gateway) Watch(target string, fn func(client.Update)) (cancel func()) {
	w := &watch{fn: fn}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.watches[target] == nil {
		g.watches[target] = map[*watch]struct{}{}
	}
	g.watches[target][w] = struct{}{}
	if u, ok := g.updates[target]; ok {
		fn(u)
	}
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		delete(g.watches[target], w)
	}
}

var _ proxy.XDS = (*Gateway)(nil)

// server is the proxy serving one port.
type server struct {
	port  int32
	tls   bool
	addr  net.Addr
	certs atomic.Pointer[[]hostCert]
	stop  func()
}

// serve makes the port's server current: started if new, restarted if
// its protocol changed, its certificates swapped otherwise.
func (g *Gateway) serve(ctx context.Context, pc *portConfig) error {
	isTLS := len(pc.tls) > 0
	if s := g.servers[pc.port]; s != nil {
		if s.tls == isTLS {
			s.certs.Store(&pc.tls)
			return nil
		}
		s.stop()
		delete(g.servers, pc.port)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(g.opts.Host, strconv.Itoa(int(pc.port))))
	if err != nil {
		return err
	}
	s := &server{port: pc.port, tls: isTLS, addr: lis.Addr()}
	s.certs.Store(&pc.tls)
	var tlsConfig *tls.Config
	if isTLS {
		tlsConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{"h2"},
			GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
				return pickCert(*s.certs.Load(), hello.ServerName)
			},
		}
	}
	p, err := proxy.New(proxy.Options{
		Outbound:        []proxy.Outbound{{Listener: lis, Target: "xds:///" + pc.target(), TLS: tlsConfig}},
		XDS:             g,
		MaxMessageBytes: g.opts.MaxMessageBytes,
		DrainTimeout:    g.opts.DrainTimeout,
		Limits:          g.opts.Limits,
		Metrics:         prometheus.NewRegistry(),
		Log:             g.log.With("port", pc.port),
	})
	if err != nil {
		lis.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.Serve(ctx); err != nil {
			g.log.Error("listener failed", "port", pc.port, "err", err)
		}
	}()
	s.stop = func() { cancel(); <-done }
	g.servers[pc.port] = s
	g.log.Info("listening", "gateway", pc.gateway, "port", pc.port, "address", s.addr, "tls", isTLS)
	return nil
}

func (g *Gateway) stopAll() {
	var wg sync.WaitGroup
	for _, s := range g.servers {
		wg.Go(s.stop)
	}
	wg.Wait()
	clear(g.servers)
}

// pickCert is the certificate for a TLS handshake that asks for
// serverName (SNI): the listener's of that hostname, else of the longest
// wildcard that matches it, else of the listener without a hostname.
func pickCert(certs []hostCert, serverName string) (*tls.Certificate, error) {
	name := strings.ToLower(serverName)
	best, bestLen := -1, -1
	for i, c := range certs {
		switch {
		case c.hostname == name && name != "":
			return c.cert, nil
		case strings.HasPrefix(c.hostname, "*.") && strings.HasSuffix(name, c.hostname[1:]) && len(name) > len(c.hostname)-1:
			if len(c.hostname) > bestLen {
				best, bestLen = i, len(c.hostname)
			}
		case c.hostname == "" && bestLen < 0:
			best, bestLen = i, 0
		}
	}
	if best < 0 {
		return nil, fmt.Errorf("no listener serves %q", serverName)
	}
	return certs[best].cert, nil
}

// noRouteCluster is the Cluster of the calls no rule of a port matches.
const noRouteCluster = "ballast-gateway-no-route"

// serveNoRoute serves, on loopback, the answer to calls no rule matches:
// UNIMPLEMENTED, as the Gateway API asks of gRPC listeners.
func (g *Gateway) serveNoRoute() (stop func(), err error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("gateway: no-route server: %w", err)
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(stream)
		return status.Errorf(codes.Unimplemented, "ballast gateway: no route of this listener matches %s", method)
	}))
	g.noRoute = netip.MustParseAddrPort(lis.Addr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	return func() { srv.Stop(); <-done }, nil
}
