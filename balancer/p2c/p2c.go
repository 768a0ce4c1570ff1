// Package p2c is a grpc-go load balancing policy that sends each call to the
// less loaded of two endpoints chosen at random ("power of two choices",
// least request). It is grpc-go's least_request_experimental with a pick
// path that allocates nothing: the callback that ends a call's count is bound
// once per endpoint, not built per call.
//
// Like grpc-go's own policies it stands on endpointsharding with a pickfirst
// child per endpoint; this package only combines the children's pickers. The
// in-flight counts belong to the balancer and survive picker rebuilds, so a
// readiness change elsewhere does not forget the load on an endpoint.
//
// Select it with the service config {"loadBalancingConfig":[{"ballast_p2c":{}}]}.
package p2c

import (
	"bytes"
	"encoding/json"
	"fmt"
	rand "math/rand/v2"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// Name is the policy's name in a gRPC service config.
const Name = "ballast_p2c"

// randUint64 is the random source of every picker built after it is set;
// tests replace it to make choices deterministic.
var randUint64 = rand.Uint64

func init() { balancer.Register(builder{}) }

// Config is the policy's configuration. It has no fields yet; unknown fields
// are rejected so that a setting the policy does not have is not silently
// ignored.
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
}

type builder struct{}

func (builder) Name() string { return Name }

// ParseConfig accepts {} (or an empty config).
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg := &Config{}
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

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &p2cBalancer{
		ClientConn: cc,
		endpoints:  resolver.NewEndpointMap[*endpoint](),
	}
	b.child = endpointsharding.NewBalancer(b, opts, balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return b
}

// p2cBalancer embeds the ClientConn to intercept the child's UpdateState and
// replace its round-robin picker with a power-of-two-choices one.
type p2cBalancer struct {
	balancer.ClientConn
	child balancer.Balancer

	mu sync.Mutex
	// endpoints holds the in-flight count of every ready endpoint; a picker
	// only points at them.
	endpoints *resolver.EndpointMap[*endpoint]
	// resolverErr is the last resolver error since the last good update; it
	// is what a call fails with when there are no endpoints at all.
	resolverErr error
}

func (b *p2cBalancer) UpdateClientConnState(ccs balancer.ClientConnState) error {
	b.mu.Lock()
	b.resolverErr = nil
	b.mu.Unlock()
	return b.child.UpdateClientConnState(balancer.ClientConnState{
		// Health listeners let client-side health checks and outlier
		// detection, when configured, take endpoints out.
		ResolverState: pickfirst.EnableHealthListener(ccs.ResolverState),
	})
}

func (b *p2cBalancer) ResolverError(err error) {
	b.mu.Lock()
	b.resolverErr = err
	b.mu.Unlock()
	b.child.ResolverError(err) // updates the picker inline
}

func (b *p2cBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

func (b *p2cBalancer) ExitIdle() { b.child.ExitIdle() }

func (b *p2cBalancer) Close() { b.child.Close() }

// UpdateState receives endpointsharding's aggregate state and publishes a
// picker over the ready endpoints.
func (b *p2cBalancer) UpdateState(state balancer.State) {
	children := endpointsharding.ChildStatesFromPicker(state.Picker)
	var ready []endpointsharding.ChildState
	for _, c := range children {
		if c.State.ConnectivityState == connectivity.Ready {
			ready = append(ready, c)
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if len(ready) == 0 {
		// Nothing to balance: endpointsharding's picker already round-robins
		// over the children in the most relevant state. With no children at
		// all its error says only "no children to pick from"; the resolver's
		// error says why, so calls fail with that instead.
		if len(children) == 0 && b.resolverErr != nil {
			state.Picker = base.NewErrPicker(fmt.Errorf("name resolver error: %w", b.resolverErr))
		}
		b.ClientConn.UpdateState(state)
		return
	}

	keep := resolver.NewEndpointMap[*endpoint]()
	choices := make([]choice, 0, len(ready))
	for _, c := range ready {
		ep, ok := b.endpoints.Get(c.Endpoint)
		if !ok {
			ep = newEndpoint()
		}
		keep.Set(c.Endpoint, ep)
		choices = append(choices, choice{picker: c.State.Picker, ep: ep})
	}
	// Endpoints that are no longer ready lose their counts; their calls in
	// flight still end on the old counter, which nothing reads any more.
	b.endpoints = keep
	b.ClientConn.UpdateState(balancer.State{
		ConnectivityState: connectivity.Ready,
		Picker:            newPicker(choices),
	})
}

// endpoint is the balancer's load statistic for one endpoint.
type endpoint struct {
	inFlight atomic.Int64
	// done is ep.finish bound once, so a pick hands it out without
	// allocating a closure.
	done func(balancer.DoneInfo)
}

func newEndpoint() *endpoint {
	ep := &endpoint{}
	ep.done = ep.finish
	return ep
}

func (ep *endpoint) finish(balancer.DoneInfo) { ep.inFlight.Add(-1) }

// choice is one ready endpoint as a picker sees it.
type choice struct {
	picker balancer.Picker // the endpoint's pickfirst child
	ep     *endpoint
}

// picker is an immutable snapshot of the ready endpoints. Pick takes no lock
// and allocates nothing unless a child's result carries its own Done.
type picker struct {
	choices []choice
	rand    func() uint64
}

func newPicker(choices []choice) *picker {
	return &picker{choices: choices, rand: randUint64}
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	c := p.choose()
	res, err := c.picker.Pick(info)
	if err != nil {
		return res, err
	}
	ep := c.ep
	ep.inFlight.Add(1)
	if res.Done == nil {
		res.Done = ep.done
		return res, nil
	}
	childDone := res.Done // rare: pickfirst sets none today
	res.Done = func(di balancer.DoneInfo) {
		ep.inFlight.Add(-1)
		childDone(di)
	}
	return res, nil
}

// choose draws two distinct endpoints with one random number and returns the
// one with fewer calls in flight. The draw is an ordered pair, so returning
// the first on a tie breaks ties uniformly at random.
func (p *picker) choose() *choice {
	n := uint64(len(p.choices))
	if n == 1 {
		return &p.choices[0]
	}
	a, b := pair(p.rand(), n)
	ca, cb := &p.choices[a], &p.choices[b]
	if cb.ep.inFlight.Load() < ca.ep.inFlight.Load() {
		return cb
	}
	return ca
}

// pair maps r to two distinct indexes below n (n >= 2), uniformly up to a
// bias of n/2^32, by multiplying each 32-bit half into range.
func pair(r, n uint64) (a, b uint64) {
	a = ((r & 0xffffffff) * n) >> 32
	b = ((r >> 32) * (n - 1)) >> 32
	if b >= a {
		b++
	}
	return a, b
}
