package kubernetes_test

import (
	"log"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	_ "github.com/ballast-dev/ballast/balancer/p2c" // registers ballast_p2c
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// A client that balances every call over the ready pods of Service
// greeter in namespace default, port grpc, with power of two choices. The
// registry is filled by a discovery source (the Kubernetes API or files).
func ExampleWithRegistry() {
	reg := discovery.NewRegistry()
	conn, err := grpc.NewClient("kubernetes:///greeter.default:grpc",
		kubernetes.WithRegistry(reg),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"ballast_p2c":{}}]}`))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
}
