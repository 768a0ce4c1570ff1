// Package route is a grpc-go load balancing policy that routes each call
// before it is balanced: the first rule of a Route (policy.Router, the
// decision the sidecar makes too) that selects the call by its method and
// outgoing metadata, one of that rule's backends by weight, then the
// balancer of that backend's Cluster picks the connection. It is how the
// kubernetes:/// resolver gives a Go client a Service's GRPCRoute.
//
// The resolver hands it the route and each Cluster's endpoints and policy
// in the resolver state (WithState); its service config only names it:
// {"loadBalancingConfig":[{"ballast_route":{}}]}. Each Cluster gets a child
// balancer of its own policy (round_robin, ballast_p2c, ...), made and
// closed as routes change.
//
// grpc-go's own per-call cluster choice (the xDS resolver's config
// selector) is internal to grpc-go; a top-level policy whose picker reads
// the method from PickInfo.FullMethodName and the metadata from
// PickInfo.Ctx is the public way to make the same decision.
//
// Header filters: a picker can only add metadata to a call
// (PickResult.Metadata is joined to the application's) and never sees the
// response, so the whole of a rule's filters is applied by the
// interceptors of Filters, which the kubernetes:/// dial options install.
// Without them, the policy adds a rule's request Set and Add headers (a
// Set header the application also sends then goes with both values).
//
// Call policies (a rule's timeouts and retries, policy.CallPolicy) are
// enforced by the same interceptors, per call (call.go); without them a
// rule's call policy is not honoured.
package route

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/ballast-dev/ballast/balancer/circuitbreaker"
	"github.com/ballast-dev/ballast/balancer/ejection"
	"github.com/ballast-dev/ballast/policy"
)

// Name is the policy's name in a gRPC service config.
const Name = "ballast_route"

// ServiceConfig is the service config that selects the policy.
const ServiceConfig = `{"loadBalancingConfig":[{"` + Name + `":{}}]}`

func init() { balancer.Register(builder{}) }

// State is what the policy routes by: the route of the target's calls and
// every Cluster the route names that exists. A backend whose Cluster is
// missing fails its share of calls with UNAVAILABLE.
type State struct {
	Route policy.Route
	// Router is Route compiled, made from Route when nil; the one given
	// to Filters.Publish, when the client applies filters.
	Router   *policy.Router
	Clusters map[string]Cluster
}

// Cluster is one backend of a route: its policy and its endpoints.
type Cluster struct {
	LB policy.LB
	// HashHeader is ring_hash's key (policy.Cluster.HashHeader).
	HashHeader string
	Endpoints  []resolver.Endpoint
	// CircuitBreaker bounds the calls in flight to the Cluster
	// (MaxRequests; a call beyond it fails UNAVAILABLE at once).
	CircuitBreaker policy.CircuitBreaker
	// Outlier, if set, runs the Cluster's balancer under the outlier
	// detection balancer (package ejection).
	Outlier *policy.OutlierDetection
}

type stateKey struct{}

// WithState returns s carrying st, for the policy.
func WithState(s resolver.State, st *State) resolver.State {
	s.Attributes = s.Attributes.WithValue(stateKey{}, st)
	return s
}

func stateOf(s resolver.State) *State {
	st, _ := s.Attributes.Value(stateKey{}).(*State)
	return st
}

// config is the policy's (empty) configuration.
type config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
}

type builder struct{}

func (builder) Name() string { return Name }

func (builder) Build(cc balancer.ClientConn, _ balancer.BuildOptions) balancer.Balancer {
	return &routeBalancer{cc: cc, children: map[string]*child{}}
}

// ParseConfig accepts {}: the route comes with the resolver state.
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg := &config{}
	if len(bytes.TrimSpace(js)) == 0 {
		return cfg, nil
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, fmt.Errorf("%s: config %s: %w (the policy takes no settings: use {})", Name, js, err)
	}
	return cfg, nil
}

// routeBalancer is the policy: a router and a child balancer per Cluster.
// grpc-go calls it (and, through child.UpdateState, its children report)
// on one goroutine at a time, so it takes no lock.
type routeBalancer struct {
	cc       balancer.ClientConn
	router   *policy.Router
	children map[string]*child
	// empty are the Clusters with no endpoint, whose calls fail at once
	// naming them.
	empty map[string]bool
	// updating holds back the children's picker updates while an update
	// makes them, so that no picker goes out with some of the route's
	// Clusters missing (their calls would fail as if they did not exist).
	updating bool
}

// child is the balancer of one Cluster and the state it last reported.
type child struct {
	balancer.ClientConn // the parent's: SubConns are made there
	parent              *routeBalancer
	name                string
	lb                  string // the grpc-go balancer running
	bal                 balancer.Balancer
	state               balancer.State
	reported            bool
	// maxRequests bounds inFlight, the calls picked for the Cluster and
	// not done, which outlives the pickers; 0 is no bound.
	maxRequests uint32
	inFlight    atomic.Int64
}

// UpdateState records the child's picker and rebuilds the policy's.
func (c *child) UpdateState(s balancer.State) {
	c.state, c.reported = s, true
	c.parent.updatePicker()
}

func (b *routeBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	st := stateOf(s.ResolverState)
	if st == nil {
		b.router = nil
		err := fmt.Errorf("%s: the resolver sent no route (it selects the policy only with one)", Name)
		b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.TransientFailure, Picker: errPicker{unavailable(err.Error())}})
		return balancer.ErrBadResolverState
	}
	b.router = st.Router
	if b.router == nil {
		b.router = policy.NewRouter(st.Route)
	}
	b.updating = true
	defer func() {
		b.updating = false
		b.updatePicker()
	}()
	for name, c := range b.children {
		if _, ok := st.Clusters[name]; !ok {
			c.bal.Close()
			delete(b.children, name)
		}
	}
	b.empty = nil
	for name, cl := range st.Clusters {
		if len(cl.Endpoints) == 0 {
			if b.empty == nil {
				b.empty = map[string]bool{}
			}
			b.empty[name] = true
		}
		lb, cfg, err := ejection.Balancer(policy.Cluster{LB: cl.LB, HashHeader: cl.HashHeader}, cl.Outlier)
		if err != nil {
			return fmt.Errorf("%s: cluster %s: %w", Name, name, err)
		}
		c := b.children[name]
		if c != nil && c.lb != lb {
			c.bal.Close()
			c = nil
		}
		if c == nil {
			c = &child{ClientConn: b.cc, parent: b, name: name, lb: lb}
			c.bal = balancer.Get(lb).Build(c, balancer.BuildOptions{})
			b.children[name] = c
		}
		c.maxRequests = cl.CircuitBreaker.MaxRequests
		if err := c.bal.UpdateClientConnState(balancer.ClientConnState{
			ResolverState:  resolver.State{Endpoints: cl.Endpoints},
			BalancerConfig: cfg,
		}); err != nil && len(cl.Endpoints) > 0 {
			return fmt.Errorf("%s: cluster %s: %w", Name, name, err)
		}
	}
	return nil
}

func (b *routeBalancer) ResolverError(err error) {
	for _, c := range b.children {
		c.bal.ResolverError(err)
	}
	if b.router == nil {
		b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.TransientFailure, Picker: errPicker{unavailable(err.Error())}})
	}
}

func (b *routeBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {
	// SubConns report to their StateListener, set by the child that made
	// them.
}

func (b *routeBalancer) ExitIdle() {
	for _, c := range b.children {
		c.bal.ExitIdle()
	}
}

func (b *routeBalancer) Close() {
	for name, c := range b.children {
		c.bal.Close()
		delete(b.children, name)
	}
}

// updatePicker hands the channel a picker over the children's current
// pickers, and the best state among them: READY if any child is, then
// CONNECTING, then IDLE, else TRANSIENT_FAILURE.
func (b *routeBalancer) updatePicker() {
	if b.router == nil || b.updating {
		return
	}
	p := &picker{router: b.router, empty: b.empty, children: make(map[string]balancer.Picker, len(b.children))}
	state := connectivity.TransientFailure
	rank := map[connectivity.State]int{connectivity.Ready: 3, connectivity.Connecting: 2, connectivity.Idle: 1}
	for name, c := range b.children {
		if !c.reported {
			p.children[name] = nil // no picker yet: calls wait
			if rank[connectivity.Connecting] > rank[state] {
				state = connectivity.Connecting
			}
			continue
		}
		p.children[name] = circuitbreaker.Picker(c.state.Picker, name, c.maxRequests, &c.inFlight)
		if rank[c.state.ConnectivityState] > rank[state] {
			state = c.state.ConnectivityState
		}
	}
	b.cc.UpdateState(balancer.State{ConnectivityState: state, Picker: p})
}
