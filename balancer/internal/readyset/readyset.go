// Package readyset is the machinery Ballast's load balancing policies share,
// so that each policy is only its statistics and its picker: a balancer over
// grpc-go's endpointsharding (a pickfirst child per endpoint) that publishes
// a picker over the READY endpoints, keeping each endpoint's statistics
// across picker rebuilds for as long as the endpoint stays ready.
package readyset

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
)

// Choice is one ready endpoint as a policy's picker sees it.
type Choice[S any] struct {
	// Picker is the endpoint's pickfirst child's picker.
	Picker balancer.Picker
	// Stats are the policy's statistics for the endpoint.
	Stats S
}

// Options are what a policy adds to the shared machinery.
type Options[S any] struct {
	// NewStats makes the statistics of an endpoint that became ready.
	NewStats func() S
	// NewPicker builds an immutable picker over one or more ready endpoints.
	NewPicker func([]Choice[S]) balancer.Picker
}

// Balancer is a balancer.Balancer for policies to embed. It is also the
// balancer.ClientConn of its endpointsharding child, to intercept the
// child's state and replace its round-robin picker.
type Balancer[S any] struct {
	balancer.ClientConn
	child balancer.Balancer
	opts  Options[S]

	mu    sync.Mutex
	stats *resolver.EndpointMap[S]
	// resolverErr is the last resolver error since the last good update:
	// what calls fail with when there are no endpoints at all.
	resolverErr error
}

// New builds the balancer on cc.
func New[S any](cc balancer.ClientConn, bopts balancer.BuildOptions, opts Options[S]) *Balancer[S] {
	b := &Balancer[S]{ClientConn: cc, opts: opts, stats: resolver.NewEndpointMap[S]()}
	b.child = endpointsharding.NewBalancer(b, bopts, balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return b
}

// UpdateClientConnState passes the resolver's endpoints to the children. A
// policy with a config reads it first, then calls this.
func (b *Balancer[S]) UpdateClientConnState(ccs balancer.ClientConnState) error {
	b.mu.Lock()
	b.resolverErr = nil
	b.mu.Unlock()
	return b.child.UpdateClientConnState(balancer.ClientConnState{
		// Health listeners let client-side health checks and outlier
		// detection, when configured, take endpoints out.
		ResolverState: pickfirst.EnableHealthListener(ccs.ResolverState),
	})
}

// ResolverError remembers err for when there is nothing to pick from.
func (b *Balancer[S]) ResolverError(err error) {
	b.mu.Lock()
	b.resolverErr = err
	b.mu.Unlock()
	b.child.ResolverError(err) // updates the picker inline
}

// UpdateSubConnState is never called: the children own their SubConns.
func (b *Balancer[S]) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

// ExitIdle wakes the children.
func (b *Balancer[S]) ExitIdle() { b.child.ExitIdle() }

// Close closes the children.
func (b *Balancer[S]) Close() { b.child.Close() }

// UpdateState receives endpointsharding's aggregate state and publishes the
// policy's picker over the ready endpoints.
func (b *Balancer[S]) UpdateState(state balancer.State) {
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

	// Endpoints that are no longer ready lose their statistics; their calls
	// in flight still end on the old ones, which nothing reads any more.
	keep := resolver.NewEndpointMap[S]()
	choices := make([]Choice[S], 0, len(ready))
	for _, c := range ready {
		s, ok := b.stats.Get(c.Endpoint)
		if !ok {
			s = b.opts.NewStats()
		}
		keep.Set(c.Endpoint, s)
		choices = append(choices, Choice[S]{Picker: c.State.Picker, Stats: s})
	}
	b.stats = keep
	b.ClientConn.UpdateState(balancer.State{
		ConnectivityState: connectivity.Ready,
		Picker:            b.opts.NewPicker(choices),
	})
}

// Pair maps a random number r to two distinct indexes below n (n >= 2) for
// a power-of-two-choices draw: uniform up to a bias of n/2^32, one random
// number per pick. The pair is ordered, so a picker that keeps the first on
// a tie breaks ties uniformly at random.
func Pair(r, n uint64) (a, b uint64) {
	a = ((r & 0xffffffff) * n) >> 32
	b = ((r >> 32) * (n - 1)) >> 32
	if b >= a {
		b++
	}
	return a, b
}

// Draw is the inverse of Pair: a random number that Pair maps to (a, b)
// among n. Tests of pickers use it to walk every draw deterministically.
func Draw(a, b, n uint64) uint64 {
	lo := (a<<32 + n - 1) / n
	if b > a {
		b--
	}
	hi := (b<<32 + n - 2) / (n - 1)
	return hi<<32 | lo
}
