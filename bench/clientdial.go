package bench

import (
	"google.golang.org/grpc"

	// Ballast's balancers register themselves, so clientSide rows can name them.
	_ "github.com/ballast-dev/ballast/balancer/p2c"
	_ "github.com/ballast-dev/ballast/balancer/peakewma"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// The Service the client-side rows dial: a registry holding the pods as the
// ready endpoints of one Service port, read by the kubernetes:/// resolver,
// as a Go client in a cluster would find them.
const (
	benchNamespace = "bench"
	benchService   = "greeter"
	benchPort      = 50051
	benchTarget    = "kubernetes:///greeter.bench:grpc"
)

// clientDial is how a Go client in the benchmark reaches the pods: through
// the kubernetes:/// resolver over a registry that lists them, so the LB
// policy named in the service config balances each call.
func clientDial(pods []*pod) (string, []grpc.DialOption) {
	port := discovery.Port{Name: "grpc", Port: benchPort, Protocol: "TCP"}
	for _, p := range pods {
		port.Endpoints = append(port.Endpoints, discovery.Endpoint{Address: p.Addr, Ready: true, Serving: true, Pod: p.Name})
	}
	reg := discovery.NewRegistry()
	reg.Set(&discovery.Service{Key: discovery.Key{Namespace: benchNamespace, Name: benchService}, Ports: []discovery.Port{port}})
	return benchTarget, []grpc.DialOption{kubernetes.WithRegistry(reg)}
}
