package proxy

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
)

// sidecarGuarded serves greeter with servers, puts a TrafficPolicy with
// the given spec fields on it, and returns a client of it through the
// sidecar fed by Ballast's control plane.
func sidecarGuarded(t *testing.T, fields string, servers ...*policytest.Server) pb.GreeterClient {
	t.Helper()
	var addrs []string
	for _, a := range policytest.Serve(t, servers...) {
		addrs = append(addrs, a.String())
	}
	return sidecarPolicy(t, fields, addrs...)
}

// sidecarPolicy is sidecarGuarded with greeter's endpoints at addrs.
func sidecarPolicy(t *testing.T, fields string, addrs ...string) pb.GreeterClient {
	t.Helper()
	const nodeID = "ballast~client.default"
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
// sidecar (balancer/ejection's outlier detection over its round_robin,
// from the Cluster's outlier_detection) ejects it within two intervals and
// sends it calls again after the ejection time.
func TestSidecarOutlierDetection(t *testing.T) {
	policy := "outlierDetection:" + policytest.Policy[len("  outlierDetection:"):]
	policytest.CheckEjection(t, sidecarGuarded(t, policy, &policytest.Server{Broken: true}, &policytest.Server{}, &policytest.Server{}))
}

// TestSidecarConsecutiveErrors: of three pods one fails every call; the
// sidecar ejects it after outlierDetection.consecutiveErrors failed calls
// in a row (balancer/ejection, over its round_robin) and sends it calls again after the ejection time.
func TestSidecarConsecutiveErrors(t *testing.T) {
	policy := "outlierDetection:" + policytest.ConsecutivePolicy[len("  outlierDetection:"):]
	policytest.CheckConsecutiveEjection(t, sidecarGuarded(t, policy, &policytest.Server{Broken: true}, &policytest.Server{}, &policytest.Server{}))
}

// TestSidecarCircuitBreaker: with circuitBreaker.maxRequests 2, a third
// stream while two are in flight fails UNAVAILABLE at once, naming the
// bound and the Cluster.
func TestSidecarCircuitBreaker(t *testing.T) {
	srv := &policytest.Server{Gate: make(chan struct{})}
	client := sidecarGuarded(t, "circuitBreaker: {maxRequests: 2}\n", srv)
	policytest.CheckCircuitBreaker(t, srv, client,
		"ballast: circuit breaker open: 2 requests in flight to cluster greeter.default.svc.cluster.local:50051 (maxRequests 2)")
}

// TestSidecarMaxPendingRequests: greeter's only pod accepts connections
// and never answers the HTTP/2 handshake, so the sidecar parks its calls
// waiting for a connection; with circuitBreaker.maxPendingRequests 2, of
// three calls one fails UNAVAILABLE at once, naming the bound and the
// Cluster, and the two parked end only when their caller cancels them.
// Once they have, there is room for two again.
func TestSidecarMaxPendingRequests(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { io.Copy(io.Discard, c); c.Close() }) // never a SETTINGS frame
			t.Cleanup(func() { c.Close() })
		}
	})
	client := sidecarPolicy(t, "circuitBreaker: {maxPendingRequests: 2}\n", ln.Addr().String())
	const want = "ballast: circuit breaker open: 2 requests pending a connection to cluster greeter.default.svc.cluster.local:50051 (maxPendingRequests 2)"
	for round := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		errs := make(chan error, 3)
		for range 3 {
			go func() {
				_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "pending"})
				errs <- err
			}()
		}
		select {
		case err := <-errs:
			if st, _ := status.FromError(err); st.Code() != codes.Unavailable || st.Message() != want {
				t.Fatalf("round %d: the first call to end: %v, want UNAVAILABLE %q", round, err, want)
			}
		case <-time.After(10 * time.Second): // a deadline, well inside the sidecar's 20 s handshake timeout

			t.Fatalf("round %d: no call refused beyond maxPendingRequests", round)
		}
		cancel()
		for range 2 {
			if err := <-errs; status.Code(err) != codes.Canceled {
				t.Errorf("round %d: a parked call ended with %v, want its caller's cancellation", round, err)
			}
		}
	}
}
