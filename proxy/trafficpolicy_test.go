package proxy

import (
	"net/netip"
	"testing"

	"google.golang.org/grpc"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
)

// sidecarWithPolicy runs the registry → Ballast's xDS → the sidecar's xDS
// client path for Service greeter on addrs with a TrafficPolicy of spec
// (none if empty), and dials the sidecar.
func sidecarWithPolicy(t *testing.T, spec string, addrs ...string) *grpc.ClientConn {
	t.Helper()
	return sidecarWithPolicies(t, spec, "", addrs...)
}

// sidecarWithPolicies is sidecarWithPolicy with an XBackendTrafficPolicy
// of backendSpec on greeter too (none if empty).
func sidecarWithPolicies(t *testing.T, spec, backendSpec string, addrs ...string) *grpc.ClientConn {
	t.Helper()
	const nodeID = "ballast~client.default"
	reg := discovery.NewRegistry()
	reg.Set(echoService("greeter", addrs...))
	if spec != "" {
		reg.SetPolicy(policytest.TrafficPolicy(t, "greeter", policytest.OnGreeter+spec))
	}
	if backendSpec != "" {
		reg.SetBackendPolicy(policytest.BackendTrafficPolicy(t, "greeter", policytest.OnGreeter+backendSpec))
	}
	cp := startBallastControlPlane(t, nodeID, reg.List()...)
	_, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
	return dial(t, addr)
}

// TestSidecarTrafficPolicy: a TrafficPolicy's rateLimit, fault and
// loadBalancer, through Ballast's control plane and the sidecar's xDS
// client, are what the sidecar enforces, as every mode does.
func TestSidecarTrafficPolicy(t *testing.T) {
	policytest.Run(t, func(t *testing.T, spec string, addrs ...netip.AddrPort) grpc.ClientConnInterface {
		var s []string
		for _, a := range addrs {
			s = append(s, a.String())
		}
		return sidecarWithPolicy(t, spec, s...)
	})
}

// TestSidecarBackendTrafficPolicyBudget: an XBackendTrafficPolicy's
// retryConstraint on greeter, through Ballast's xDS, bounds the retries its
// TrafficPolicy asks for: with one backend of three failing every call,
// the sidecar's retries stay within the 20% budget, and it refuses the
// rest.
func TestSidecarBackendTrafficPolicyBudget(t *testing.T) {
	bad, good1, good2 := startCallBackend(t, policytest.AlwaysUnavailable), startCallBackend(t, nil), startCallBackend(t, nil)
	conn := sidecarWithPolicies(t, policytest.BudgetRetry, policytest.BudgetConstraint, bad.addr, good1.addr, good2.addr)
	connected(t, conn, bad, good1, good2)
	policytest.CheckBudget(t, conn, bad.Backend, good1.Backend, good2.Backend)
}
