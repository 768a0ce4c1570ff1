package kubernetes_test

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// dialGuarded dials greeter, served by servers, through the kubernetes:///
// resolver with a TrafficPolicy on it with the given spec fields.
func dialGuarded(t *testing.T, fields string, servers ...*policytest.Server) pb.GreeterClient {
	t.Helper()
	reg := discovery.NewRegistry()
	reg.Set(service("greeter", policytest.Serve(t, servers...)...))
	reg.SetPolicy(policytest.TrafficPolicy(t, "greeter", "targetRefs: [{group: \"\", kind: Service, name: greeter}]\n"+fields))
	conn, err := grpc.NewClient(target, append(kubernetes.DialOptions(reg), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewGreeterClient(conn)
}

// TestLibraryOutlierDetection: of three pods one fails every call; the
// library (balancer/route running balancer/ejection's outlier detection
// over the Service's balancer) ejects it within two intervals and sends it calls
// again after the ejection time.
func TestLibraryOutlierDetection(t *testing.T) {
	policy := "outlierDetection:" + policytest.Policy[len("  outlierDetection:"):]
	policytest.CheckEjection(t, dialGuarded(t, policy, &policytest.Server{Broken: true}, &policytest.Server{}, &policytest.Server{}))
}

// TestLibraryConsecutiveErrors: of three pods one fails every call; the
// library ejects it after outlierDetection.consecutiveErrors failed calls
// in a row (balancer/ejection, in balancer/route) and sends it calls again
// after the ejection time.
func TestLibraryConsecutiveErrors(t *testing.T) {
	policy := "outlierDetection:" + policytest.ConsecutivePolicy[len("  outlierDetection:"):]
	policytest.CheckConsecutiveEjection(t, dialGuarded(t, policy, &policytest.Server{Broken: true}, &policytest.Server{}, &policytest.Server{}))
}

// TestLibraryCircuitBreaker: with circuitBreaker.maxRequests 2, a third
// call while two are in flight fails UNAVAILABLE at once, naming the
// bound.
func TestLibraryCircuitBreaker(t *testing.T) {
	srv := &policytest.Server{Gate: make(chan struct{})}
	client := dialGuarded(t, "circuitBreaker: {maxRequests: 2}\n", srv)
	policytest.CheckCircuitBreaker(t, srv, client,
		"ballast: circuit breaker open: 2 requests in flight to cluster greeter.default:50051 (maxRequests 2)")
}
