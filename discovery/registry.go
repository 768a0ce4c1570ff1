// Package discovery keeps the registry of Services and their endpoints that
// every Ballast mode balances over. Sources (the Kubernetes API through
// client-go informers, or a folder of the same YAML) compute whole Service
// snapshots and store them; consumers (the kubernetes:/// resolver, the xDS
// translator) read snapshots and are told which Services changed.
package discovery

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/policy"
)

// Key names a Service.
type Key struct {
	Namespace string
	Name      string
}

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// Service is an immutable snapshot of one Kubernetes Service and its endpoints,
// merged from all of its EndpointSlices. Consumers must not modify it.
type Service struct {
	Key
	// ClusterIPs are the Service's virtual addresses (none for headless Services).
	ClusterIPs []netip.Addr
	// Ports are sorted by port number.
	Ports []Port
	// Annotations holds the Service's annotations under the ballast.dev/
	// prefix (e.g. ballast.dev/lb-policy), the only ones consumers read, so
	// unrelated annotation churn never reaches them. Nil when there are none.
	Annotations map[string]string
	// Routes are the routes of the ports that GRPCRoutes attach to, by
	// port; a port without one routes every call to itself. The registry
	// computes them from the routes, Services and ReferenceGrants it holds.
	Routes []PortRoute
	// Call is what the TrafficPolicy attached to the Service asks of its
	// calls: of those of a port without a route, and of the rules of its
	// routes that no policy of their own applies to. The registry computes
	// it from the policies it holds.
	Call policy.CallPolicy
	// Balancing is the balancing policy the TrafficPolicy attached to the
	// Service asks for (its LB and HashHeader; Name unset); nil when none
	// does, and the lb-policy annotation or the default applies.
	Balancing *policy.Cluster
	// TrafficDistribution is the Service's spec.trafficDistribution, empty
	// when unset: whether clients prefer endpoints in their own zone
	// (see Preferred).
	TrafficDistribution string
	// Cluster is what the TrafficPolicy attached to the Service asks of
	// its ports' Clusters besides balancing: circuit breaking and outlier
	// detection (Name, LB and HashHeader unset). The registry computes it
	// from the policies it holds.
	Cluster policy.Cluster
}

// Route is the route of a port, and whether it has one.
func (s *Service) Route(port int32) (PortRoute, bool) {
	for _, r := range s.Routes {
		if r.Port == port {
			return r, true
		}
	}
	return PortRoute{}, false
}

// AnnotationPrefix marks the Service annotations the registry keeps.
const AnnotationPrefix = "ballast.dev/"

// Port is one port of a Service and the endpoints that serve it.
type Port struct {
	// Name is the Service port's name; empty only on single-port Services.
	Name     string
	Port     int32
	Protocol string
	// Endpoints are sorted by address; each carries the target port resolved
	// for it, so a named targetPort may map to different numbers per pod.
	Endpoints []Endpoint
}

// Endpoint is one address behind a Service port.
type Endpoint struct {
	Address netip.AddrPort
	// Conditions, as in an EndpointSlice: Ready means take new traffic;
	// Serving && Terminating means draining (finish, don't start, work).
	Ready       bool
	Serving     bool
	Terminating bool
	Zone        string
	Node        string
	// Pod is the name of the Pod behind the address, when the slice says.
	Pod string
}

// Draining reports whether the endpoint is terminating but still serving.
func (e Endpoint) Draining() bool { return e.Terminating && e.Serving && !e.Ready }

// Port finds a port by name, or by number when ref parses as one.
// An empty ref matches the only port of a single-port Service.
func (s *Service) Port(ref string) (*Port, error) {
	if len(s.Ports) == 0 {
		return nil, fmt.Errorf("service %s has no ports", s.Key)
	}
	if ref == "" {
		if len(s.Ports) == 1 {
			return &s.Ports[0], nil
		}
		return nil, fmt.Errorf("service %s has %d ports; name one (%s)", s.Key, len(s.Ports), s.portList())
	}
	for i := range s.Ports {
		p := &s.Ports[i]
		if p.Name == ref || fmt.Sprint(p.Port) == ref {
			return p, nil
		}
	}
	return nil, fmt.Errorf("service %s has no port %q (ports: %s)", s.Key, ref, s.portList())
}

func (s *Service) portList() string {
	var names []string
	for _, p := range s.Ports {
		if p.Name != "" {
			names = append(names, fmt.Sprintf("%s=%d", p.Name, p.Port))
		} else {
			names = append(names, fmt.Sprint(p.Port))
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// Routable returns the endpoints that take new calls: see [Routable].
func (p *Port) Routable() []Endpoint { return Routable(p.Endpoints) }

// Routable returns the endpoints of one port that take new calls: the ready
// ones or, when none is ready, every one that is not terminating.
//
// The second case is panic routing, as Envoy does below its healthy-panic
// threshold: when every endpoint is marked not ready at once, the likelier
// cause is the marking, not the pods. The node controller marks every pod
// of a Node not ready when the Node's lease goes stale, and after an API
// server outage every lease is stale until the kubelets renew it. A call to
// an endpoint marked not ready may still succeed; a call with no endpoint
// cannot. Terminating endpoints stay out: they are going away.
func Routable(eps []Endpoint) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if e.Ready {
			out = append(out, e)
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, e := range eps {
		if !e.Terminating {
			out = append(out, e)
		}
	}
	return out
}

// Registry holds the current snapshot of every known Service. It is safe for
// concurrent use. Writers replace whole snapshots; readers never see a
// half-applied update.
type Registry struct {
	mu       sync.RWMutex
	services map[Key]*Service
	routes   map[Key]*versioned[*gatewayv1.GRPCRoute]
	// byParent indexes the served routes by the Services they attach to.
	byParent map[Key]map[Key]bool
	grants   map[Key]*gatewayv1.ReferenceGrant
	subs     map[*Subscription]struct{}
	// routeSubs collect the keys of GRPCRoutes whose status may have
	// changed.
	routeSubs map[*Subscription]struct{}
	// The objects a gateway serves (registry_gateways.go).
	gateways map[Key]*gatewayv1.Gateway
	classes  map[string]*gatewayv1.GatewayClass
	secrets  map[Key]*corev1.Secret
	// gatewaySubs are told of every change a gateway may serve
	// differently after.
	gatewaySubs map[*Subscription]struct{}
	policies    map[Key]*versioned[*v1alpha1.TrafficPolicy]
	// attached is the policy that applies to each target.
	attached map[policyTarget]*v1alpha1.TrafficPolicy
	// policySubs collect the keys of TrafficPolicies whose status may
	// have changed.
	policySubs map[*Subscription]struct{}
	// The XBackendTrafficPolicies (backendtrafficpolicy.go), the one that
	// applies to each Service, and the subscriptions to their status.
	backendPolicies   map[Key]*versioned[*gatewayx.XBackendTrafficPolicy]
	backendAttached   map[Key]*gatewayx.XBackendTrafficPolicy
	backendPolicySubs map[*Subscription]struct{}
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{
		services:  map[Key]*Service{},
		routes:    map[Key]*versioned[*gatewayv1.GRPCRoute]{},
		byParent:  map[Key]map[Key]bool{},
		grants:    map[Key]*gatewayv1.ReferenceGrant{},
		subs:      map[*Subscription]struct{}{},
		routeSubs: map[*Subscription]struct{}{},
		gateways:  map[Key]*gatewayv1.Gateway{},
		classes:   map[string]*gatewayv1.GatewayClass{},
		secrets:   map[Key]*corev1.Secret{},

		gatewaySubs: map[*Subscription]struct{}{},
		policies:    map[Key]*versioned[*v1alpha1.TrafficPolicy]{},
		attached:    map[policyTarget]*v1alpha1.TrafficPolicy{},
		policySubs:  map[*Subscription]struct{}{},

		backendPolicies:   map[Key]*versioned[*gatewayx.XBackendTrafficPolicy]{},
		backendAttached:   map[Key]*gatewayx.XBackendTrafficPolicy{},
		backendPolicySubs: map[*Subscription]struct{}{},
	}
}

// Get returns the snapshot of one Service.
func (r *Registry) Get(k Key) (*Service, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s, ok := r.services[k]
	return s, ok
}

// List returns every Service, sorted by key.
func (r *Registry) List() []*Service {
	r.mu.RLock()
	out := make([]*Service, 0, len(r.services))
	for _, s := range r.services {
		out = append(out, s)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Service) int { return compareKeys(a.Key, b.Key) })
	return out
}

// Set stores a snapshot, replacing any earlier one of the same Service, and
// tells subscribers when it differs from what was stored.
// A source's snapshot has no Routes: the registry adds them.
func (r *Registry) Set(s *Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, existed := r.services[s.Key]
	s.Call = r.serviceCallLocked(s.Key)
	s.Balancing = r.serviceBalancingLocked(s.Key)
	s.Cluster = r.serviceClusterLocked(s.Key)
	if len(r.byParent[s.Key]) > 0 {
		// s sees itself as it will be: a route may send calls to its own
		// Service.
		s.Routes = resolveRoutes(s, r.routesOfLocked(s.Key), registryView{r: r, pending: s})
	}
	if existed && equalService(old, s) {
		return
	}
	r.services[s.Key] = s
	r.notifyLocked(s.Key)
	// What routes resolve a backend to depends on its existence and ports.
	if !existed || !samePorts(old, s) {
		r.backendChangedLocked(s.Key)
	}
	if !existed {
		r.targetsChangedLocked()
	}
}

// Delete forgets a Service and tells subscribers if it was known.
func (r *Registry) Delete(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.services[k]; !ok {
		return
	}
	delete(r.services, k)
	r.notifyLocked(k)
	r.backendChangedLocked(k)
	r.targetsChangedLocked()
}

func (r *Registry) notifyLocked(k Key) {
	for sub := range r.subs {
		sub.add(k)
	}
	r.notifyGatewaysLocked(k)
}

// Subscribe returns a subscription that collects the keys of changed
// Services. Changes coalesce: a subscriber that is slow to drain sees each
// changed key once, however many times it changed, and never slows the
// registry or other subscribers. Cancel it with Close.
func (r *Registry) Subscribe() *Subscription {
	sub := &Subscription{r: r, ready: make(chan struct{}, 1), pending: map[Key]struct{}{}}
	r.mu.Lock()
	r.subs[sub] = struct{}{}
	r.mu.Unlock()
	return sub
}

// SubscribeRoutes returns a subscription that collects the keys of the
// GRPCRoutes whose status (RouteStatus) may have changed: the route
// itself, a Service it attaches to or names as a backend, or a
// ReferenceGrant.
func (r *Registry) SubscribeRoutes() *Subscription {
	sub := &Subscription{r: r, ready: make(chan struct{}, 1), pending: map[Key]struct{}{}}
	r.mu.Lock()
	r.routeSubs[sub] = struct{}{}
	r.mu.Unlock()
	return sub
}

// Subscription collects changed Service keys for one consumer.
type Subscription struct {
	r     *Registry
	ready chan struct{}

	mu      sync.Mutex
	pending map[Key]struct{}
}

// C receives a value whenever Drain has something to return.
func (s *Subscription) C() <-chan struct{} { return s.ready }

// Drain returns the keys changed since the last Drain, sorted.
func (s *Subscription) Drain() []Key {
	s.mu.Lock()
	keys := make([]Key, 0, len(s.pending))
	for k := range s.pending {
		keys = append(keys, k)
	}
	clear(s.pending)
	s.mu.Unlock()
	slices.SortFunc(keys, compareKeys)
	return keys
}

// Close stops the subscription.
func (s *Subscription) Close() {
	s.r.mu.Lock()
	delete(s.r.subs, s)
	delete(s.r.routeSubs, s)
	delete(s.r.gatewaySubs, s)
	delete(s.r.policySubs, s)
	s.r.mu.Unlock()
}

func (s *Subscription) add(k Key) {
	s.mu.Lock()
	s.pending[k] = struct{}{}
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

func compareKeys(a, b Key) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

func equalService(a, b *Service) bool {
	return a.Key == b.Key && slices.Equal(a.ClusterIPs, b.ClusterIPs) && maps.Equal(a.Annotations, b.Annotations) &&
		a.TrafficDistribution == b.TrafficDistribution &&
		slices.EqualFunc(a.Ports, b.Ports, func(x, y Port) bool {
			return x.Name == y.Name && x.Port == y.Port && x.Protocol == y.Protocol && slices.Equal(x.Endpoints, y.Endpoints)
		}) && equalRoutes(a.Routes, b.Routes) && equality.Semantic.DeepEqual(a.Call, b.Call) &&
		equality.Semantic.DeepEqual(a.Balancing, b.Balancing) && equality.Semantic.DeepEqual(a.Cluster, b.Cluster)
}

// samePorts reports whether two snapshots of a Service have the same
// ports, which is all a route reads of its backends.
func samePorts(a, b *Service) bool {
	return slices.EqualFunc(a.Ports, b.Ports, func(x, y Port) bool {
		return x.Name == y.Name && x.Port == y.Port && x.Protocol == y.Protocol
	})
}
