package bench

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// clientDial is how a Go client in the benchmark finds the pods: a
// resolver that hands grpc-go every pod's address, so the LB policy named
// in the service config balances each call.
func clientDial(pods []*Pod) (string, []grpc.DialOption) {
	r := manual.NewBuilderWithScheme("bench")
	var state resolver.State
	for _, p := range pods {
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: p.Addr.String()}}})
	}
	r.InitialState(state)
	return "bench:///greeter", []grpc.DialOption{grpc.WithResolvers(r)}
}
