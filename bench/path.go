package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"

	"github.com/ballast-dev/ballast/clusterip"
)

// A path is one way for the client's connection to reach the pods: the
// pods directly with a balancer in the client, a plain Service, or a proxy
// in between. Scenarios measure the same load over every path they list.
type path interface {
	// Name is the row's label.
	Name() string
	// Open puts the path in front of pods and says how to dial it. An
	// error that wraps *unavailable makes the row say why it has no
	// numbers instead of failing the benchmark.
	Open(ctx context.Context, b *Bench, pods []*pod) (*route, error)
}

// route is an open path.
type route struct {
	// Target and DialOptions are what the client dials.
	Target      string
	DialOptions []grpc.DialOption
	// Proxy is the process in between whose CPU and memory the scenario
	// reports; nil when the path has none of its own (client-side, or an
	// in-process stand-in).
	Proxy *process
	// Close stops what Open started.
	Close func()
}

// unavailable says why a path cannot be measured: a peer that is not
// installed, or a Ballast mode the given binary lacks.
type unavailable struct {
	// Status is "unavailable" or "pending".
	Status string
	Reason string
}

func (u *unavailable) Error() string { return u.Status + ": " + u.Reason }

// whyNot is the note a row shows for an error from Open.
func whyNot(err error) string {
	if u, ok := errors.AsType[*unavailable](err); ok {
		return u.Error()
	}
	return "failed: " + err.Error()
}

// clientSide is grpc-go in the client, balancing each call over the pods'
// addresses with the named LB policy. The row is pending while the policy
// is not registered (its package not linked into this binary).
func clientSide(name, policy string) path { return clientSidePath{name, policy} }

// direct is the client balancing round_robin straight to the pods: the
// data-path baseline with nothing in between.
func direct() path { return clientSidePath{"direct", "round_robin"} }

type clientSidePath struct{ name, policy string }

func (c clientSidePath) Name() string { return c.name }

func (c clientSidePath) Open(_ context.Context, _ *Bench, pods []*pod) (*route, error) {
	if balancer.Get(c.policy) == nil {
		return nil, &unavailable{Status: "pending", Reason: fmt.Sprintf("LB policy %s is not registered in this build", c.policy)}
	}
	target, opts := clientDial(pods)
	opts = append(opts, grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, c.policy)))
	return &route{Target: target, DialOptions: opts, Close: func() {}}, nil
}

// service is a plain Kubernetes service: the client's one connection is
// balanced once, when it opens, by a per-connection L4 balancer standing
// in for kube-proxy. It runs inside the benchmark, so it has no CPU row.
func service() path { return servicePath{} }

type servicePath struct{}

func (servicePath) Name() string { return "plain Service (L4)" }

func (servicePath) Open(ctx context.Context, _ *Bench, pods []*pod) (*route, error) {
	lis, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		return nil, fmt.Errorf("plain Service: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	eps := podAddrs(pods)
	p := &clusterip.Proxy{Endpoints: func() []netip.AddrPort { return eps }}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, lis) }()
	return &route{
		Target: "passthrough:///" + lis.Addr().String(),
		Close:  func() { cancel(); <-done },
	}, nil
}
