package xds

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	pb "google.golang.org/grpc/examples/helloworld/helloworld"

	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/internal/policytest"
)

// guardedService writes Service name served by servers and a
// TrafficPolicy on it with the given spec fields to a folder, loads it
// into the plane and dials it with grpc-go's xDS client.
func guardedService(t *testing.T, p *plane, name, fields string, servers ...*policytest.Server) pb.GreeterClient {
	t.Helper()
	var pods []files.Pod
	for i, a := range policytest.Serve(t, servers...) {
		pods = append(pods, files.Pod{Name: name + "-" + strconv.Itoa(i), Addr: a})
	}
	manifest := string(greetertest.ServiceYAML(t, "default", name, pods)) + `---
apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: ` + name + `, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: ` + name + `}]
` + fields
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := files.New(dir, p.reg, files.Options{Logger: slog.New(slog.DiscardHandler)}).Load(); err != nil {
		t.Fatal(err)
	}
	return pb.NewGreeterClient(dialXDS(t, p, "xds:///"+name+".default:50051"))
}

// TestProxylessOutlierDetection: of three pods one fails every call.
// grpc-go's xDS client, fed a TrafficPolicy's outlierDetection (failure
// percentage) by the control plane, ejects it within two intervals and
// sends it calls again after the ejection time.
func TestProxylessOutlierDetection(t *testing.T) {
	client := guardedService(t, startPlane(t), "ejecting", policytest.Policy, &policytest.Server{Broken: true}, &policytest.Server{}, &policytest.Server{})
	policytest.CheckEjection(t, client)
}

// TestProxylessCircuitBreaker: with circuitBreaker.maxRequests 2, grpc-go's
// xDS client fails a third call while two are in flight, at once, with
// UNAVAILABLE saying the bound was reached; once they finish, calls go
// through.
func TestProxylessCircuitBreaker(t *testing.T) {
	srv := &policytest.Server{Gate: make(chan struct{})}
	client := guardedService(t, startPlane(t), "guarded", "  circuitBreaker: {maxRequests: 2}\n", srv)
	policytest.CheckCircuitBreaker(t, srv, client, "max requests 2 exceeded")
}
