// Package balancertest drives real grpc-go balancers (endpointsharding,
// pickfirst and a policy on top) without a network: its ClientConn hands out
// SubConns that turn READY when the test says so, and keeps the last picker
// the balancer published. Picker tests and Pick benchmarks use it; tests of
// behaviour over real connections use a real grpc.ClientConn instead.
package balancertest

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// ClientConn is a fake balancer.ClientConn. Methods a balancer built on
// endpointsharding and pickfirst does not call are left to the embedded nil
// interface and panic.
type ClientConn struct {
	balancer.ClientConn

	mu       sync.Mutex
	subConns map[string]*SubConn
	state    balancer.State
}

// NewClientConn returns a ClientConn with no SubConns.
func NewClientConn() *ClientConn {
	return &ClientConn{subConns: map[string]*SubConn{}}
}

// NewSubConn records a SubConn for the single address a pickfirst child asks for.
func (c *ClientConn) NewSubConn(addrs []resolver.Address, opts balancer.NewSubConnOptions) (balancer.SubConn, error) {
	if len(addrs) != 1 {
		return nil, fmt.Errorf("balancertest: NewSubConn with %d addresses, want 1", len(addrs))
	}
	sc := &SubConn{Addr: addrs[0].Addr, listener: opts.StateListener}
	c.mu.Lock()
	c.subConns[sc.Addr] = sc
	c.mu.Unlock()
	return sc, nil
}

// UpdateState keeps the balancer's latest state.
func (c *ClientConn) UpdateState(s balancer.State) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
}

// ResolveNow does nothing.
func (c *ClientConn) ResolveNow(resolver.ResolveNowOptions) {}

// Target names the fake channel.
func (c *ClientConn) Target() string { return "balancertest:///fake" }

// State is the balancer's latest state, with its picker.
func (c *ClientConn) State() balancer.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// MakeReady reports the SubConn for addr connected and healthy.
func (c *ClientConn) MakeReady(t testing.TB, addr string) {
	t.Helper()
	c.mu.Lock()
	sc := c.subConns[addr]
	c.mu.Unlock()
	if sc == nil {
		t.Fatalf("balancertest: no SubConn for %s", addr)
	}
	sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Connecting})
	sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Ready})
	sc.mu.Lock()
	health := sc.health
	sc.mu.Unlock()
	if health != nil {
		health(balancer.SubConnState{ConnectivityState: connectivity.Ready})
	}
}

// Start builds the named policy on a new ClientConn, configures it with
// config, gives it addrs as one endpoint each, makes them all READY and
// returns the ClientConn and the balancer.
func Start(t testing.TB, policy, config string, addrs ...string) (*ClientConn, balancer.Balancer) {
	t.Helper()
	builder := balancer.Get(policy)
	if builder == nil {
		t.Fatalf("balancertest: no balancer %q registered", policy)
	}
	cc := NewClientConn()
	bal := builder.Build(cc, balancer.BuildOptions{})
	t.Cleanup(bal.Close)
	var cfg serviceconfig.LoadBalancingConfig
	if parser, ok := builder.(balancer.ConfigParser); ok {
		parsed, err := parser.ParseConfig(json.RawMessage(config))
		if err != nil {
			t.Fatalf("balancertest: %s config %s: %v", policy, config, err)
		}
		cfg = parsed
	}
	if err := Update(bal, cfg, addrs...); err != nil {
		t.Fatalf("balancertest: %s: update: %v", policy, err)
	}
	for _, a := range addrs {
		cc.MakeReady(t, a)
	}
	if got := cc.State().ConnectivityState; got != connectivity.Ready {
		t.Fatalf("balancertest: %s: state %v after all SubConns are ready", policy, got)
	}
	return cc, bal
}

// Update sends the balancer addrs, one endpoint each, with cfg (a parsed
// config or nil).
func Update(bal balancer.Balancer, cfg serviceconfig.LoadBalancingConfig, addrs ...string) error {
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}}
	}
	return bal.UpdateClientConnState(balancer.ClientConnState{
		ResolverState:  resolver.State{Endpoints: eps},
		BalancerConfig: cfg,
	})
}

// SubConn is a fake SubConn that only records what the balancer asks.
type SubConn struct {
	balancer.SubConn
	Addr string

	listener func(balancer.SubConnState)
	mu       sync.Mutex
	health   func(balancer.SubConnState)
}

// Connect does nothing: MakeReady says when the SubConn is connected.
func (sc *SubConn) Connect() {}

// Shutdown does nothing.
func (sc *SubConn) Shutdown() {}

// RegisterHealthListener keeps the listener for MakeReady.
func (sc *SubConn) RegisterHealthListener(l func(balancer.SubConnState)) {
	sc.mu.Lock()
	sc.health = l
	sc.mu.Unlock()
}
