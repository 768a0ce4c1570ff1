package proxy

import (
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/ballast-dev/ballast/balancer/ejection"
	"github.com/ballast-dev/ballast/internal/callpolicy"
	"github.com/ballast-dev/ballast/policy"

	// The balancers a Cluster may name, registered with grpc-go: the proxy
	// runs the very implementations a proxyless Go client runs.
	_ "github.com/ballast-dev/ballast/balancer/p2c"
	_ "github.com/ballast-dev/ballast/balancer/peakewma"
	_ "google.golang.org/grpc/balancer/leastrequest"
	_ "google.golang.org/grpc/balancer/ringhash"
	_ "google.golang.org/grpc/balancer/roundrobin"
)

// upstream is one destination Service as the proxy's client side sees it:
// how its calls are routed (for xds:/// targets, the route the control
// plane gives and one balancer host per Cluster the route names; for
// other targets, one host fed by the target's resolver), and the
// Service's metrics.
type upstream struct {
	target string
	// service names the upstream in metrics: the target without its
	// "xds:///" scheme.
	service    string
	metrics    upstreamMetrics
	maxMessage uint32
	log        *slog.Logger
	// stopResolver stops what feeds the routes and hosts.
	stopResolver func()
	// refuseUnplaced answers a call that cannot be placed with
	// REFUSED_STREAM instead of a status (see stream.refuse).
	refuseUnplaced bool
	// replay holds the proxy's copies of requests to retry; nil where
	// calls are not retried (inbound).
	replay *replayPool
	// buckets are the proxy's rate limits' buckets, shared by every
	// upstream: a TrafficPolicy's bucket is per client, the sidecar.
	buckets *callpolicy.Buckets

	// routing is what calls are routed by now, replaced whole when the
	// route or its Clusters change.
	routing atomic.Pointer[routing]

	// parkMu is the lock of every host of the upstream (host.mu) and of
	// waiting: the calls that came before the upstream's first route,
	// routed once it arrives.
	parkMu  sync.Mutex
	waiting []*stream
	stopped bool // no call waits any more

	// mu orders route updates and guards what they change.
	mu    sync.Mutex
	hosts map[string]*host // by Cluster; "" for a target without routes
	// retiring are hosts no route names any more, closing once their
	// calls end; work owns the goroutines that retire them and route the
	// calls that waited.
	retiring map[*host]struct{}
	work     sync.WaitGroup
	closed   bool
	// routeErrors is what was last logged of the route's errors.
	routeErrors string
}

// upstreams holds one upstream per target, created on first use and kept
// until the proxy stops, so every connection to a Service shares one
// balancer (and its load statistics).
type upstreams struct {
	resolvers  []resolver.Builder
	xds        XDS
	metrics    *metrics
	maxMessage uint32
	log        *slog.Logger
	// forService, if set, makes an upstream's metrics instead of
	// metrics.forService (the inbound side has its own series).
	forService func(service string) upstreamMetrics
	// refuseUnplaced is given to every upstream.
	refuseUnplaced bool
	// replay and buckets are given to every upstream.
	replay  *replayPool
	buckets *callpolicy.Buckets

	mu     sync.Mutex
	byName map[string]*upstream
	closed bool
}

// get returns the upstream for target, starting its resolution (which
// connects lazily) the first time.
func (u *upstreams) get(target string) (*upstream, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if up, ok := u.byName[target]; ok {
		return up, nil
	}
	if u.closed {
		return nil, fmt.Errorf("upstream %s: proxy is stopping", target)
	}
	service := serviceLabel(target)
	forService := u.forService
	if forService == nil {
		forService = u.metrics.forService
	}
	up := &upstream{
		target:     target,
		service:    service,
		metrics:    forService(service),
		maxMessage: u.maxMessage,
		log:        u.log,
		hosts:      map[string]*host{},
		retiring:   map[*host]struct{}{},

		refuseUnplaced: u.refuseUnplaced,
		replay:         u.replay,
		buckets:        u.buckets,
	}
	if name, ok := strings.CutPrefix(target, "xds:///"); ok && u.xds != nil {
		// Calls wait in up.waiting for the first route.
		up.routing.Store(&routing{})
		up.stopResolver = u.xds.Watch(name, up.updateXDS)
	} else {
		h := newHost(target, &up.parkMu, u.log)
		up.hosts[""] = h
		up.routing.Store(&routing{def: h})
		stop, err := u.resolve(target, h)
		if err != nil {
			h.close()
			return nil, fmt.Errorf("upstream %s: %w", target, err)
		}
		up.stopResolver = stop
	}
	u.byName[target] = up
	return up, nil
}

// resolve starts feeding h the endpoints of target (one without xDS
// routes) from the grpc-go resolver registered for the target's scheme
// (passthrough for a bare host:port, as grpc.NewClient does).
func (u *upstreams) resolve(target string, h *host) (func(), error) {
	parsed, err := url.Parse(target)
	var builder resolver.Builder
	if err == nil {
		builder = u.builder(parsed.Scheme)
	}
	if builder == nil {
		parsed, err = url.Parse("passthrough:///" + target)
		if err != nil {
			return nil, fmt.Errorf("parsing target: %w", err)
		}
		builder = u.builder("passthrough")
	}
	if builder == nil {
		return nil, fmt.Errorf("no resolver for scheme %q", parsed.Scheme)
	}
	r, err := builder.Build(resolver.Target{URL: *parsed}, &resolverConn{h: h}, resolver.BuildOptions{})
	if err != nil {
		return nil, fmt.Errorf("resolver %s: %w", parsed.Scheme, err)
	}
	return r.Close, nil
}

func (u *upstreams) builder(scheme string) resolver.Builder {
	for _, b := range u.resolvers {
		if b.Scheme() == scheme {
			return b
		}
	}
	return resolver.Get(scheme)
}

// close stops every upstream; later gets fail.
func (u *upstreams) close() {
	u.mu.Lock()
	u.closed = true
	ups := make([]*upstream, 0, len(u.byName))
	for _, up := range u.byName {
		ups = append(ups, up)
	}
	u.mu.Unlock()
	for _, up := range ups {
		up.stopResolver()
		up.close()
	}
}

// resolverConn is the resolver.ClientConn a grpc-go resolver reports to.
type resolverConn struct {
	resolver.ClientConn // embedded for methods grpc-go may add
	h                   *host
	last                policy.LB // the policy last given to h
}

func (r *resolverConn) UpdateState(s resolver.State) error {
	lb := policy.RoundRobin
	if sc := s.ServiceConfig; sc != nil {
		if c, ok := sc.Config.(*lbChoice); ok && sc.Err == nil {
			lb = c.lb
		} else if r.last != "" {
			lb = r.last // a bad config keeps the last good one
		}
	}
	r.last = lb
	r.h.updatePolicy(policy.Cluster{LB: lb}, s)
	return nil
}

func (r *resolverConn) ReportError(err error) { r.h.resolverError(err) }

func (r *resolverConn) NewAddress(addrs []resolver.Address) {
	r.UpdateState(resolver.State{Addresses: addrs})
}

// ParseServiceConfig reads the policy of a service config (the
// kubernetes:/// resolver sends one for Services annotated
// ballast.dev/lb-policy, so the registry-only proxy honours the annotation
// as the control plane's Clusters do).
func (r *resolverConn) ParseServiceConfig(js string) *serviceconfig.ParseResult {
	lb, err := policy.ParseServiceConfig(js)
	if err != nil {
		return &serviceconfig.ParseResult{Err: err}
	}
	return &serviceconfig.ParseResult{Config: &lbChoice{lb: lb}}
}

// lbChoice is a parsed service config: its policy.
type lbChoice struct {
	serviceconfig.Config // for its marker method; never called
	lb                   policy.LB
}

// updatePolicy hands h endpoints, the balancer of the Cluster's policy
// (under balancer/ejection's outlier detection if it has some) and its circuit breaker's bounds.
func (h *host) updatePolicy(cl policy.Cluster, state resolver.State) {
	name, cfg, err := ejection.Balancer(cl, cl.Outlier)
	if err != nil {
		h.log.Error("keeping the current balancer", "target", h.target, "err", err)
		return
	}
	h.setMaxRequests(cl.CircuitBreaker.MaxRequests)
	h.setMaxPending(cl.CircuitBreaker.MaxPendingRequests)
	var hash string
	if cl.LB == policy.RingHash {
		hash = cl.HashHeader
	}
	if old := h.hashHeader.Load(); (old == nil) != (hash == "") || (old != nil && *old != hash) {
		if hash == "" {
			h.hashHeader.Store(nil)
		} else {
			h.hashHeader.Store(&hash)
		}
	}
	h.update(name, cfg, state)
}

func serviceLabel(target string) string {
	if rest, ok := strings.CutPrefix(target, "xds:///"); ok {
		return rest
	}
	return target
}

// codeIndex maps a status code to its slot in per-code metric arrays.
func codeIndex(c codes.Code) int {
	if c > maxCode {
		return int(codes.Unknown)
	}
	return int(c)
}

const maxCode = codes.Unauthenticated
