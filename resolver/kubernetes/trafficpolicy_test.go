package kubernetes_test

import (
	"net/netip"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// libraryWithPolicy is a kubernetes:/// client of Service greeter on
// addrs, annotated lb-policy round_robin, from a registry holding a
// TrafficPolicy of spec on it (none if empty); the registry is returned
// to change it.
func libraryWithPolicy(t *testing.T, spec string, addrs ...netip.AddrPort) (*grpc.ClientConn, *discovery.Registry) {
	t.Helper()
	reg := discovery.NewRegistry()
	svc := service("greeter", addrs...)
	svc.Annotations = map[string]string{policy.LBAnnotation: string(policy.RoundRobin)}
	reg.Set(svc)
	if spec != "" {
		reg.SetPolicy(policytest.TrafficPolicy(t, "greeter", policytest.OnGreeter+spec))
	}
	conn, err := grpc.NewClient(target, append(kubernetes.DialOptions(reg), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, reg
}

// TestLibraryTrafficPolicy: a TrafficPolicy's rateLimit, fault and
// loadBalancer, in the registry, are what a kubernetes:/// client with
// DialOptions enforces, as every mode does.
func TestLibraryTrafficPolicy(t *testing.T) {
	policytest.Run(t, func(t *testing.T, spec string, addrs ...netip.AddrPort) grpc.ClientConnInterface {
		conn, _ := libraryWithPolicy(t, spec, addrs...)
		return conn
	})
}

// TestLibraryPolicyOnRunningClient: a policy set on a Service a client
// already calls applies to that client: one user's calls spread over the
// three backends under the annotation's round_robin, and once the policy
// says ring_hash on x-user they stick.
func TestLibraryPolicyOnRunningClient(t *testing.T) {
	addrs := []netip.AddrPort{policytest.StartEcho(t, "a"), policytest.StartEcho(t, "b"), policytest.StartEcho(t, "c")}
	conn, reg := libraryWithPolicy(t, "", addrs...)
	policytest.Eventually(t, "a user's calls reach every backend", func() bool { return len(policytest.BackendsOf(t, conn, "u0", 30)) == 3 })
	reg.SetPolicy(policytest.TrafficPolicy(t, "greeter", policytest.OnGreeter+"loadBalancer: {policy: ring_hash, hashHeader: x-user}"))
	policytest.Sticks(t, conn)
}

// TestLibraryBackendTrafficPolicyBudget: an XBackendTrafficPolicy's
// retryConstraint on greeter bounds the retries its TrafficPolicy asks
// for: with one backend of three failing every call, the library's
// retries stay within the 20% budget.
func TestLibraryBackendTrafficPolicyBudget(t *testing.T) {
	bad, good1, good2 := policytest.StartBackend(t, policytest.AlwaysUnavailable), policytest.StartBackend(t, nil), policytest.StartBackend(t, nil)
	conn, reg := libraryWithPolicy(t, policytest.BudgetRetry, bad.Addr, good1.Addr, good2.Addr)
	reg.SetBackendPolicy(policytest.BackendTrafficPolicy(t, "greeter", policytest.OnGreeter+policytest.BudgetConstraint)) // before the first call: the channel resolves on it
	policytest.CheckBudget(t, conn, bad, good1, good2)
}
