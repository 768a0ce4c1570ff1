// Package priority is a load balancing policy over endpoints in priority
// order, gRPC xDS's locality priorities for the clients that are not grpc-go's
// xDS client (the sidecar and the kubernetes:/// resolver): each priority's
// endpoints get a child of the configured policy, and calls go to the first
// child that is not in TRANSIENT_FAILURE. Zone preference puts the client's
// own zone at priority 0 and the other zones at 1, so when every pod of the
// client's zone stops answering (they shut down before discovery says so),
// calls fail over to the other zones at once instead of failing, and come
// back when the zone's pods answer again.
//
// A child keeps its connections across updates that move priorities: when
// discovery drops the client's zone, the other zones' child, which becomes
// priority 0, is the one that already holds their connections.
//
// Unlike grpc-go's priority policy, lower priorities connect at once rather
// than when needed: a failover then finds them ready, and the client's own
// zone never waits for them.
package priority

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// Name is the policy's name in a service config:
// {"loadBalancingConfig":[{"ballast_priority":{"childPolicy":[{"round_robin":{}}]}}]}.
const Name = "ballast_priority"

func init() { balancer.Register(builder{}) }

// Config is the policy's parsed config: the child policy every priority
// gets, by its registered name.
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
	ChildName                         string
	Child                             serviceconfig.LoadBalancingConfig
}

// configJSON is the config as written: childPolicy is a list of policies
// in a service config's loadBalancingConfig form, of which the first that
// is registered is used.
type configJSON struct {
	ChildPolicy []map[string]json.RawMessage `json:"childPolicy"`
}

// ServiceConfig is a service config that selects the policy over the child
// policies, a loadBalancingConfig list in JSON (e.g. `[{"round_robin":{}}]`).
func ServiceConfig(childPolicy string) string {
	return `{"loadBalancingConfig":[{"` + Name + `":{"childPolicy":` + childPolicy + `}}]}`
}

type builder struct{}

func (builder) Name() string { return Name }

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return &priorityBalancer{cc: cc, opts: opts}
}

// ParseConfig reads the first registered child policy of childPolicy and
// its config.
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var c configJSON
	if err := json.Unmarshal(js, &c); err != nil {
		return nil, fmt.Errorf("%s config: %w", Name, err)
	}
	var names []string
	for _, entry := range c.ChildPolicy {
		for name, raw := range entry { // one key per entry
			names = append(names, name)
			b := balancer.Get(name)
			if b == nil {
				continue
			}
			cfg, err := ParseChild(b, raw)
			if err != nil {
				return nil, fmt.Errorf("%s config: childPolicy %s: %w", Name, name, err)
			}
			return &Config{ChildName: name, Child: cfg}, nil
		}
	}
	return nil, fmt.Errorf("%s config: childPolicy names no registered policy (%v)", Name, names)
}

// ParseChild parses a child policy's config, nil for a policy that takes
// none.
func ParseChild(b balancer.Builder, raw json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	p, ok := b.(balancer.ConfigParser)
	if !ok {
		return nil, nil
	}
	if len(raw) == 0 {
		raw = json.RawMessage("{}")
	}
	return p.ParseConfig(raw)
}

// priorityKey is the endpoint attribute that holds its priority.
type priorityKey struct{}

// Set returns ep with priority p (0 first); an endpoint without one is at 0.
func Set(ep resolver.Endpoint, p int) resolver.Endpoint {
	ep.Attributes = ep.Attributes.WithValue(priorityKey{}, p)
	return ep
}

// Of is ep's priority.
func Of(ep resolver.Endpoint) int {
	p, _ := ep.Attributes.Value(priorityKey{}).(int)
	return p
}

// priorityBalancer has a child balancer per priority, in order. grpc-go (and
// the sidecar's host) call a balancer from one goroutine at a time, and
// children report their state from within those calls, so children and
// states need no lock; mu guards what publish reads against that order
// being broken by a child reporting from elsewhere.
type priorityBalancer struct {
	cc   balancer.ClientConn
	opts balancer.BuildOptions

	mu        sync.Mutex
	childName string
	children  []*child // by priority, first first
	updating  bool     // children are being updated: publish once after
}

// child is one priority's balancer and the state it last reported.
type child struct {
	balancer.ClientConn // the parent's, for SubConns
	parent              *priorityBalancer
	bal                 balancer.Balancer
	addrs               map[string]bool // its endpoints' first addresses
	state               balancer.State
	closed              bool
}

// UpdateState records the child's state and publishes the parent's.
func (c *child) UpdateState(s balancer.State) {
	c.parent.mu.Lock()
	if c.closed {
		c.parent.mu.Unlock()
		return
	}
	c.state = s
	c.parent.mu.Unlock()
	c.parent.publish()
}

func (b *priorityBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, ok := s.BalancerConfig.(*Config)
	if !ok {
		return fmt.Errorf("%s: config %T, want *priority.Config", Name, s.BalancerConfig)
	}
	groups := group(s.ResolverState.Endpoints)

	b.mu.Lock()
	var closing []*child
	if cfg.ChildName != b.childName {
		closing, b.children = b.children, nil
		b.childName = cfg.ChildName
	}
	// Each priority takes the child that already has most of its
	// endpoints, so that moving a zone to another priority keeps its
	// connections; the rest are new.
	old := b.children
	next := make([]*child, len(groups))
	for i, g := range groups {
		best, bestN := -1, 0
		for j, c := range old {
			if c == nil {
				continue
			}
			n := 0
			for _, ep := range g {
				if len(ep.Addresses) > 0 && c.addrs[ep.Addresses[0].Addr] {
					n++
				}
			}
			if n > bestN {
				best, bestN = j, n
			}
		}
		if best >= 0 {
			next[i], old[best] = old[best], nil
		}
	}
	for i := range next {
		if next[i] != nil {
			continue
		}
		// Otherwise reuse an unclaimed child in order, else build one.
		if j := slices.IndexFunc(old, func(c *child) bool { return c != nil }); j >= 0 {
			next[i], old[j] = old[j], nil
			continue
		}
		next[i] = &child{parent: b, ClientConn: b.cc, state: balancer.State{ConnectivityState: connectivity.Connecting}}
	}
	for _, c := range old {
		if c != nil {
			c.closed = true
			closing = append(closing, c)
		}
	}
	for _, c := range closing {
		c.closed = true
	}
	b.children = next
	b.updating = true
	b.mu.Unlock()

	for _, c := range closing {
		if c.bal != nil {
			c.bal.Close()
		}
	}
	var err error
	for i, c := range next {
		if c.bal == nil {
			c.bal = balancer.Get(cfg.ChildName).Build(c, b.opts)
		}
		addrs := map[string]bool{}
		for _, ep := range groups[i] {
			if len(ep.Addresses) > 0 {
				addrs[ep.Addresses[0].Addr] = true
			}
		}
		b.mu.Lock()
		c.addrs = addrs
		b.mu.Unlock()
		state := s.ResolverState
		state.Endpoints = groups[i]
		state.Addresses = nil
		if e := c.bal.UpdateClientConnState(balancer.ClientConnState{ResolverState: state, BalancerConfig: cfg.Child}); e != nil && i == 0 {
			err = e
		}
	}
	b.mu.Lock()
	b.updating = false
	b.mu.Unlock()
	b.publish()
	return err
}

// group splits endpoints by priority, first first; with no endpoints, one
// empty group, so that a child sees the empty update and reports why
// there is nothing to pick.
func group(eps []resolver.Endpoint) [][]resolver.Endpoint {
	if len(eps) == 0 {
		return [][]resolver.Endpoint{nil}
	}
	var prios []int
	by := map[int][]resolver.Endpoint{}
	for _, ep := range eps {
		p := Of(ep)
		if _, ok := by[p]; !ok {
			prios = append(prios, p)
		}
		by[p] = append(by[p], ep)
	}
	slices.Sort(prios)
	out := make([][]resolver.Endpoint, len(prios))
	for i, p := range prios {
		out[i] = by[p]
	}
	return out
}

// publish hands the channel the state and picker of the first child that
// is not in TRANSIENT_FAILURE (the first child's when all are), as the
// child reported it: with one priority, the channel sees exactly its one
// child.
func (b *priorityBalancer) publish() {
	b.mu.Lock()
	if b.updating || len(b.children) == 0 {
		b.mu.Unlock()
		return
	}
	use := b.children[0]
	for _, c := range b.children {
		if c.state.ConnectivityState != connectivity.TransientFailure {
			use = c
			break
		}
	}
	state := use.state
	b.mu.Unlock()
	if state.Picker == nil {
		return // the child has not reported yet
	}
	b.cc.UpdateState(state)
}

func (b *priorityBalancer) ResolverError(err error) {
	for _, c := range b.snapshot() {
		c.bal.ResolverError(err)
	}
}

// UpdateSubConnState is never called: children own their SubConns.
func (b *priorityBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

func (b *priorityBalancer) ExitIdle() {
	for _, c := range b.snapshot() {
		c.bal.ExitIdle()
	}
}

func (b *priorityBalancer) Close() {
	b.mu.Lock()
	children := b.children
	b.children = nil
	for _, c := range children {
		c.closed = true
	}
	b.mu.Unlock()
	for _, c := range children {
		if c.bal != nil {
			c.bal.Close()
		}
	}
}

func (b *priorityBalancer) snapshot() []*child {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*child
	for _, c := range b.children {
		if c.bal != nil {
			out = append(out, c)
		}
	}
	return out
}
