// Package kubernetes is a grpc-go resolver for the scheme "kubernetes": it
// turns a Service port into the addresses of its routable endpoints, read from a
// discovery.Registry, and pushes the whole set again on every change to that
// Service, so a client balances per call over the pods the Service has now.
//
// Targets (the Service's name and namespace are DNS labels, so dots are
// unambiguous):
//
//	kubernetes:///<name>.<namespace>:<port>      the canonical form
//	kubernetes:///<name>.<namespace>.svc[.<cluster domain>]:<port>
//	kubernetes:///<name>:<port>                  namespace "default"
//	kubernetes://<namespace>/<name>:<port>       the namespace as authority
//
// <port> is the Service port's number or name (not the target port); it may
// be left out, with its colon, for a Service with a single port.
//
// Only routable endpoints are sent (discovery.Routable: the ready ones, or
// every one not terminating when none is ready): terminating ones, even
// while still serving, get no new calls. When the Service is missing, has
// no such port or has no routable endpoint, the resolver reports an error
// that says which, and calls
// fail fast with codes.Unavailable carrying that message (wait-for-ready
// calls wait for endpoints instead). grpc-go's round_robin replaces the
// message with its own "no children to pick from"; pick_first and Ballast's
// balancers keep it.
//
// A Service annotated ballast.dev/lb-policy (round_robin, least_request or
// peak_ewma) gets that policy through the service config the resolver
// sends, the same choice and fallback order the control plane puts in the
// Service's xDS Clusters, so a library client balances as proxyless
// clients and the sidecar do. As in gRPC generally, a service config from
// the resolver overrides the client's grpc.WithDefaultServiceConfig;
// grpc.WithDisableServiceConfig keeps the client's own. Without the
// annotation none is sent and the client's default applies. An annotation
// that names no policy is logged and the last good one stays.
//
// A Service with a spec.trafficDistribution that prefers the client's zone
// (PreferSameZone, PreferClose, or PreferSameNode, honoured as the zone)
// resolves to its routable endpoints in the client's zone while that zone
// has any, and to all of them when it has none (discovery.Preferred, the
// choice every Ballast mode makes), with the other zones' endpoints at a
// lower priority: the service config is then balancer/priority over the
// Service's policy (round_robin when it names none), which fails over to
// them at once when the zone's pods all stop answering before discovery
// says so, as grpc-go's xDS client does with locality priorities. The
// client's zone is WithZone's, else $ZONE, which Ballast's webhook sets from
// the Pod's topology.kubernetes.io/zone label.
//
// A Service port that has a route (a GRPCRoute attached to it, which the
// registry resolves) is resolved to that route and its backend Services'
// endpoints and policies, under the balancer/route policy: each call is
// routed by its method and metadata, then balanced by its backend's own
// policy; DialOptions also applies the route's header filters and its
// rules' call policies (timeouts, and retries within a budget). Reading
// GRPCRoutes from a cluster (StartCluster with kube.Options.Routes) needs
// RBAC get, list and watch on grpcroutes.gateway.networking.k8s.io (and
// referencegrants.gateway.networking.k8s.io, for backends in other
// namespaces).
package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/attributes"
	_ "google.golang.org/grpc/balancer/ringhash" // a TrafficPolicy's loadBalancer ring_hash
	"google.golang.org/grpc/resolver"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ballast-dev/ballast/balancer/priority"
	"github.com/ballast-dev/ballast/balancer/route"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// Scheme is the target scheme this resolver serves.
const Scheme = "kubernetes"

// NewBuilder returns a resolver builder that reads Services from reg. Pass it
// to a ClientConn with grpc.WithResolvers, or use WithRegistry.
func NewBuilder(reg *discovery.Registry, opts ...Option) resolver.Builder {
	return newBuilder(reg, opts...)
}

func newBuilder(reg *discovery.Registry, opts ...Option) *builder {
	b := &builder{reg: reg, routes: reg, filters: route.NewFilters(Scheme), log: slog.Default().With("component", "resolver/kubernetes"),
		zone: os.Getenv(ZoneEnv)}
	for _, o := range opts {
		o(b)
	}
	return b
}

// DialOptions resolve kubernetes:/// targets from reg, as WithRegistry
// does, and with WithRoutes apply the header filters of routes too
// (route.Filters' interceptors): request headers set, added and removed,
// and response headers as the application reads them. NewBuilder alone
// routes calls but can only add request headers.
func DialOptions(reg *discovery.Registry, opts ...Option) []grpc.DialOption {
	b := newBuilder(reg, opts...)
	return append([]grpc.DialOption{grpc.WithResolvers(b)}, b.filters.DialOptions()...)
}

// Option configures a resolver builder.
type Option func(*builder)

// Routes gives the routes of Service ports: the GRPCRoutes attached to
// them, in the route model, whose backends name Clusters by their
// Services' dial names (name.namespace[.svc.<domain>]:port).
type Routes interface {
	// Route is the route of the calls to a Service's port (by number),
	// and whether it has one.
	Route(svc discovery.Key, port int32) (policy.Route, bool)
}

// WithRoutes takes routes from routes instead of the registry (whose
// routes are the GRPCRoutes its sources read: discovery/files always,
// discovery/kube with Options.Routes). Calls to a Service that has a
// route are routed by it: per call, the first rule that matches the
// method and metadata picks one of its backend Services by weight, then
// that Service's policy balances (balancer/route). A target whose Service
// has no route resolves as without routes. A route is read again whenever
// the registry reports a change to its Service or to one of its backends.
func WithRoutes(routes Routes) Option {
	return func(b *builder) { b.routes = routes }
}

// ZoneEnv is the environment variable the client's zone is read from when
// WithZone does not give one.
const ZoneEnv = "ZONE"

// WithZone sets the client's zone (its Node's topology.kubernetes.io/zone),
// which Services with a trafficDistribution prefer endpoints in; empty
// means none, and every routable endpoint is used. Without it the zone is
// $ZONE.
func WithZone(zone string) Option {
	return func(b *builder) { b.zone = zone }
}

// WithRegistry is the dial option that resolves kubernetes:/// targets from
// reg for one ClientConn. It is preferred to registering a builder globally:
// grpc-go's global resolver registry may only be written during init, and
// each ClientConn can name the registry it means.
func WithRegistry(reg *discovery.Registry) grpc.DialOption {
	return grpc.WithResolvers(NewBuilder(reg))
}

type builder struct {
	reg     *discovery.Registry
	routes  Routes
	filters *route.Filters
	log     *slog.Logger
	zone    string
}

func (*builder) Scheme() string { return Scheme }

func (b *builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	t, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.filters.Acquire(target.String())
	r := &kubeResolver{
		reg:     b.reg,
		routes:  b.routes,
		filters: b.filters,
		key:     target.String(),
		target:  t,
		zone:    b.zone,
		cc:      cc,
		log:     b.log.With("service", t.key.String(), "port", t.port),
		sub:     b.reg.Subscribe(), // before the first read, so no change is missed
		cancel:  cancel,
		stopped: make(chan struct{}),
	}
	go r.run(ctx)
	return r, nil
}

// target is a parsed kubernetes:/// target.
type target struct {
	key discovery.Key
	// port is the Service port's name or number as written; empty means
	// the Service's only port.
	port string
}

func (t target) String() string {
	s := t.key.Name + "." + t.key.Namespace
	if t.port != "" {
		s += ":" + t.port
	}
	return s
}

const usage = "want kubernetes:///<name>.<namespace>:<port>"

func parseTarget(rt resolver.Target) (target, error) {
	raw := rt.String()
	fail := func(format string, args ...any) (target, error) {
		return target{}, fmt.Errorf("kubernetes target %q: %s (%s)", raw, fmt.Sprintf(format, args...), usage)
	}
	authority := rt.URL.Host
	hostport := strings.TrimPrefix(rt.URL.Path, "/")
	if hostport == "" {
		hostport = rt.URL.Opaque
	}
	if hostport == "" {
		return fail("no service named")
	}
	if strings.Contains(hostport, "/") {
		return fail("unexpected path %q", hostport)
	}
	host, port, hasPort := strings.Cut(hostport, ":")
	if hasPort {
		if port == "" {
			return fail("empty port after ':'")
		}
		if n, err := strconv.Atoi(port); err == nil {
			if n < 1 || n > 65535 {
				return fail("port %d out of range 1-65535", n)
			}
		} else if errs := validation.IsValidPortName(port); len(errs) > 0 {
			return fail("port %q is neither a number nor a valid port name: %s", port, strings.Join(errs, "; "))
		}
	}
	labels := strings.Split(host, ".")
	name, namespace := labels[0], ""
	if len(labels) > 1 {
		namespace = labels[1]
	}
	if len(labels) > 2 && labels[2] != "svc" {
		return fail("%q is not <name>.<namespace> or <name>.<namespace>.svc[.<cluster domain>]", host)
	}
	switch {
	case authority != "" && namespace != "" && authority != namespace:
		return fail("namespace %q in the authority and %q in the name disagree", authority, namespace)
	case namespace == "" && authority != "":
		namespace = authority
	case namespace == "":
		namespace = "default"
	}
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return fail("service name %q: %s", name, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return fail("namespace %q: %s", namespace, strings.Join(errs, "; "))
	}
	return target{key: discovery.Key{Namespace: namespace, Name: name}, port: port}, nil
}

// kubeResolver watches one Service port. Its goroutine, started by Build and
// stopped by Close, is the only writer to cc.
type kubeResolver struct {
	reg     *discovery.Registry
	routes  Routes
	filters *route.Filters
	// key is the target as Filters knows it: its canonical form, as a
	// ClientConn's CanonicalTarget.
	key    string
	target target
	// zone is the client's, whose endpoints are preferred.
	zone    string
	cc      resolver.ClientConn
	log     *slog.Logger
	sub     *discovery.Subscription
	cancel  context.CancelFunc
	stopped chan struct{}

	// What was last sent, to skip changes to the Service that leave this
	// port's routable set and policy as they were.
	sent       bool
	lastAddr   []string
	lastErr    string
	lastPolicy policy.Cluster // LB "" for none
	lastZoned  bool
	badPolicy  string // the annotation error last logged
	// watched are the Services whose changes are read again: the target's
	// and, while it has a route, its backends'.
	watched []discovery.Key
	// routed says a route was sent: the channel runs balancer/route from
	// then on (see push).
	routed bool
}

func (r *kubeResolver) run(ctx context.Context) {
	defer close(r.stopped)
	r.push()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.sub.C():
		}
		if slices.ContainsFunc(r.sub.Drain(), func(k discovery.Key) bool { return slices.Contains(r.watched, k) }) {
			r.push()
		}
	}
}

// guarded reports whether the target's Service asks for a circuit
// breaker or outlier detection.
func (r *kubeResolver) guarded() bool {
	svc, ok := r.reg.Get(r.target.key)
	return ok && (svc.Cluster.CircuitBreaker != policy.CircuitBreaker{} || svc.Cluster.Outlier != nil)
}

// push reads the Service from the registry and sends the whole state, or
// the reason there is none.
func (r *kubeResolver) push() {
	r.watched = append(r.watched[:0], r.target.key)
	if rt, ok := r.route(); ok {
		r.routed = true
		r.pushRoute(rt)
		return
	}
	if rt, ok := r.selfRoute(); ok && (r.routed || r.guarded()) {
		// The route (or the policy that made one) is gone, or the
		// Service's policy has a circuit breaker or outlier detection,
		// which balancer/route applies. grpc-go keeps the last service
		// config when a resolver sends none, so once the channel runs
		// balancer/route it needs a route: every call to the Service
		// itself, balanced by its own policy.
		r.routed = true
		r.pushRoute(rt)
		return
	}
	r.filters.Publish(r.key, nil)
	eps, lb, zoned, err := r.resolve()
	if err != nil {
		if r.sent && r.lastErr == err.Error() {
			return
		}
		r.log.Debug("no endpoints", "err", err)
		if len(r.lastAddr) > 0 {
			// A resolver error alone leaves balancers on the last good
			// addresses; these are gone, so drop them first.
			_ = r.cc.UpdateState(resolver.State{})
		}
		r.cc.ReportError(err)
		r.sent, r.lastAddr, r.lastErr = true, nil, err.Error()
		return
	}
	addrs := make([]string, len(eps))
	for i, ep := range eps {
		addrs[i] = ep.Addresses[0].Addr + "@" + strconv.Itoa(priority.Of(ep))
	}
	if r.sent && r.lastErr == "" && slices.Equal(addrs, r.lastAddr) && lb == r.lastPolicy && zoned == r.lastZoned {
		return
	}
	r.log.Debug("endpoints", "addresses", addrs, "policy", lb, "zoned", zoned)
	state := resolver.State{Endpoints: eps}
	switch {
	case zoned:
		// The client's zone at priority 0, the others at 1: balancer/
		// priority over the Service's policy fails over to them when the
		// zone's pods all stop answering before discovery says so. It is
		// sent whether or not other zones have endpoints now, so that the
		// channel keeps one balancer while zones come and go.
		child := lb
		if child.LB == "" {
			child.LB = policy.RoundRobin
		}
		state.ServiceConfig = r.cc.ParseServiceConfig(priority.ServiceConfig(balancerList(child)))
	case lb.LB != "":
		state.ServiceConfig = r.cc.ParseServiceConfig(lb.ServiceConfig())
	}
	if err := r.cc.UpdateState(state); err != nil {
		r.log.Debug("update rejected", "err", err)
	}
	r.sent, r.lastAddr, r.lastErr, r.lastPolicy, r.lastZoned = true, addrs, "", lb, zoned
}

// balancerList is c's policies as a loadBalancingConfig list in JSON.
func balancerList(c policy.Cluster) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, bal := range c.Balancers() {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{%q:%s}`, bal.Name, bal.Config)
	}
	b.WriteByte(']')
	return b.String()
}

// policy is the LB policy the Service asks for: its TrafficPolicy's
// loadBalancer, else its annotation's; LB "" for none. An annotation that
// names no policy keeps the last one sent.
func (r *kubeResolver) policy(svc *discovery.Service) policy.Cluster {
	if b := svc.Balancing; b != nil {
		return policy.Cluster{LB: b.LB, HashHeader: b.HashHeader}
	}
	p, ok, err := policy.ServiceLB(svc.Key.String(), svc.Annotations, policy.Defaults{})
	if err != nil {
		if err.Error() != r.badPolicy {
			r.log.Warn("keeping the last good lb policy", "err", err, "policy", r.lastPolicy)
			r.badPolicy = err.Error()
		}
		return r.lastPolicy
	}
	r.badPolicy = ""
	if !ok {
		return policy.Cluster{}
	}
	return policy.Cluster{LB: p}
}

// Errors the resolver reports wrap these, for errors.Is.
var (
	// ErrServiceNotFound: the registry has no such Service.
	ErrServiceNotFound = errors.New("not found")
	// ErrNoReadyEndpoint: the Service port has no routable endpoint.
	ErrNoReadyEndpoint = errors.New("no ready endpoints")
)

// resolve is the target's routable endpoints, the Service's policy, and
// whether the client prefers its own zone's endpoints: then those come at
// priority 0 and the other zones' at 1 (discovery.Preferred's use and rest).
func (r *kubeResolver) resolve() (eps []resolver.Endpoint, lb policy.Cluster, zoned bool, err error) {
	svc, ok := r.reg.Get(r.target.key)
	if !ok {
		return nil, policy.Cluster{}, false, fmt.Errorf("service %s %w", r.target.key, ErrServiceNotFound)
	}
	port, err := svc.Port(r.target.port)
	if err != nil {
		return nil, policy.Cluster{}, false, err
	}
	use, rest := port.Preferred(svc.TrafficDistribution, r.zone)
	if len(use) == 0 {
		ref := r.target
		if ref.port == "" {
			ref.port = strconv.Itoa(int(port.Port))
		}
		return nil, policy.Cluster{}, false, fmt.Errorf("%w for %s", ErrNoReadyEndpoint, ref)
	}
	eps = endpoints(use)
	for _, ep := range endpoints(rest) {
		eps = append(eps, priority.Set(ep, 1))
	}
	return eps, r.policy(svc), r.zone != "" && discovery.PrefersZone(svc.TrafficDistribution), nil
}

// endpoints are the resolver's form of routable endpoints.
func endpoints(routable []discovery.Endpoint) []resolver.Endpoint {
	eps := make([]resolver.Endpoint, 0, len(routable))
	for _, e := range routable {
		var attrs *attributes.Attributes
		if e.Zone != "" {
			attrs = attrs.WithValue(zoneKey{}, e.Zone)
		}
		if e.Pod != "" {
			attrs = attrs.WithValue(podKey{}, e.Pod)
		}
		eps = append(eps, resolver.Endpoint{
			Addresses:  []resolver.Address{{Addr: e.Address.String()}},
			Attributes: attrs,
		})
	}
	return eps
}

// ResolveNow does nothing: the registry pushes every change.
func (r *kubeResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops the resolver's goroutine and its subscription.
func (r *kubeResolver) Close() {
	r.cancel()
	<-r.stopped
	r.sub.Close()
	r.filters.Release(r.key)
}

type (
	zoneKey struct{}
	podKey  struct{}
)

// Zone is the topology zone of an endpoint this resolver sent, or "".
func Zone(ep resolver.Endpoint) string {
	z, _ := ep.Attributes.Value(zoneKey{}).(string)
	return z
}

// Pod is the name of the Pod behind an endpoint this resolver sent, or "".
func Pod(ep resolver.Endpoint) string {
	p, _ := ep.Attributes.Value(podKey{}).(string)
	return p
}
