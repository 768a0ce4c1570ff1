package proxy

import (
	"testing"

	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/guardtest"
)

// sidecarGuarded serves greeter with servers, puts a TrafficPolicy with
// the given spec fields on it, and returns a client of it through the
// sidecar fed by Ballast's control plane.
func sidecarGuarded(t *testing.T, fields string, servers ...*guardtest.Server) pb.GreeterClient {
	t.Helper()
	const nodeID = "ballast~client.default"
	var addrs []string
	for _, a := range guardtest.Serve(t, servers...) {
		addrs = append(addrs, a.String())
	}
	reg := discovery.NewRegistry()
	reg.Set(echoService("greeter", addrs...))
	tp := &v1alpha1.TrafficPolicy{}
	if err := yaml.UnmarshalStrict([]byte("targetRefs: [{group: \"\", kind: Service, name: greeter}]\n"+fields), &tp.Spec); err != nil {
		t.Fatal(err)
	}
	tp.Name, tp.Namespace, tp.Generation = "greeter", "default", 1
	reg.SetPolicy(tp)
	cp := startBallastControlPlane(t, nodeID, reg.List()...)
	_, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
	return pb.NewGreeterClient(dial(t, addr))
}

// TestSidecarOutlierDetection: of three pods one fails every call; the
// sidecar (grpc-go's outlier detection balancer over its round_robin, from
// the Cluster's outlier_detection) ejects it within two intervals and
// sends it calls again after the ejection time.
func TestSidecarOutlierDetection(t *testing.T) {
	policy := "outlierDetection:" + guardtest.Policy[len("  outlierDetection:"):]
	guardtest.CheckEjection(t, sidecarGuarded(t, policy, &guardtest.Server{Broken: true}, &guardtest.Server{}, &guardtest.Server{}))
}

// TestSidecarConsecutiveErrors: of three pods one fails every call; the
// sidecar ejects it after outlierDetection.consecutiveErrors failed calls
// in a row (balancer/ejection, under grpc-go's outlier detection balancer,
// over its round_robin) and sends it calls again after the ejection time.
func TestSidecarConsecutiveErrors(t *testing.T) {
	policy := "outlierDetection:" + guardtest.ConsecutivePolicy[len("  outlierDetection:"):]
	guardtest.CheckConsecutiveEjection(t, sidecarGuarded(t, policy, &guardtest.Server{Broken: true}, &guardtest.Server{}, &guardtest.Server{}))
}

// TestSidecarCircuitBreaker: with circuitBreaker.maxRequests 2, a third
// stream while two are in flight fails UNAVAILABLE at once, naming the
// bound and the Cluster.
func TestSidecarCircuitBreaker(t *testing.T) {
	srv := &guardtest.Server{Gate: make(chan struct{})}
	client := sidecarGuarded(t, "circuitBreaker: {maxRequests: 2}\n", srv)
	guardtest.CheckCircuitBreaker(t, srv, client,
		"ballast: circuit breaker open: 2 requests in flight to cluster greeter.default.svc.cluster.local:50051 (maxRequests 2)")
}
