package xds

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	"google.golang.org/grpc/codes"

	"github.com/ballast-dev/ballast/discovery/files"
)

// filesPlane is a control plane fed by --files from a folder the test
// writes: write replaces a file and loads the folder again.
func filesPlane(t *testing.T) (*plane, func(name, content string)) {
	t.Helper()
	p := startPlane(t)
	dir := t.TempDir()
	src := files.New(dir, p.reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	return p, func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := src.Load(); err != nil {
			t.Fatal(err)
		}
	}
}

func noNACKs(t *testing.T, p *plane) {
	t.Helper()
	for _, typ := range []string{"listener", "route", "cluster", "endpoints"} {
		if n := counterValue(t, p.metrics, "ballast_xds_nacks_total", typ); n != 0 {
			t.Errorf("the client NACKed %v %s responses", n, typ)
		}
	}
}

// TestProxylessTrafficPolicyFault: a TrafficPolicy fault abort of 10%
// UNAVAILABLE on a Service, rendered as the HTTP fault filter's per-route
// config, is applied by grpc-go's own xDS client (its fault filter, which
// the listener lists): of 10,000 calls 10% ± 2% fail UNAVAILABLE, the
// rest succeed. The policy's rateLimit, which grpc-go cannot apply, rides
// in route metadata that it ignores: nothing is NACKed, and no call is
// limited.
func TestProxylessTrafficPolicyFault(t *testing.T) {
	p, write := filesPlane(t)
	write("greeter.yaml", string(greetertest.ServiceYAML(t, "default", "greeter", greetertest.Serve(t, "greeter-0", "greeter-1"))))
	conn := dialXDS(t, p, "xds:///greeter.default:50051")
	eventually(t, "calls succeed", func() bool { return len(calls(conn, 10).codes) == 0 })

	write("policy.yaml", `apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: greeter, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: greeter}]
  fault: {abort: {code: Unavailable, percent: 10}}
  rateLimit: {requestsPerSecond: 1}
`)
	eventually(t, "calls fail by fault", func() bool { return calls(conn, 100).codes[codes.Unavailable] > 0 })
	c := calls(conn, 10000)
	share := float64(c.codes[codes.Unavailable]) / float64(c.calls)
	t.Logf("fault abort 10%%: %.2f%% of %d calls failed UNAVAILABLE (%v; last %v)", 100*share, c.calls, c.codes, c.last)
	if len(c.codes) != 1 || share < 0.08 || share > 0.12 {
		t.Errorf("%.2f%% of calls failed (%v), want 10%% ± 2%% UNAVAILABLE only", 100*share, c.codes)
	}
	if c.last == nil || !strings.Contains(c.last.Error(), "fault injection") {
		t.Errorf("last failure %v, want grpc-go's fault injection", c.last)
	}
	noNACKs(t, p)
}

// TestProxylessTrafficPolicyRingHash: three greeters. Under round_robin a
// user's calls (x-user) spread over all of them; once a TrafficPolicy asks
// for loadBalancer ring_hash on x-user, grpc-go's ring_hash (hashing the
// route's hash_policy) sends each user's calls to one pod, and the users
// to more than one.
func TestProxylessTrafficPolicyRingHash(t *testing.T) {
	p, write := filesPlane(t)
	write("greeter.yaml", string(greetertest.ServiceYAML(t, "default", "greeter", greetertest.Serve(t, "greeter-0", "greeter-1", "greeter-2"))))
	conn := dialXDS(t, p, "xds:///greeter.default:50051")
	eventually(t, "one user's calls reach every pod", func() bool { return len(calls(conn, 60, "x-user", "u0").pods) == 3 })

	write("policy.yaml", `apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: greeter, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: greeter}]
  loadBalancer: {policy: ring_hash, hashHeader: x-user}
`)
	eventually(t, "one user's calls stick to one pod", func() bool { return len(calls(conn, 60, "x-user", "u0").pods) == 1 })
	used := map[string]bool{}
	for _, user := range []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"} {
		c := calls(conn, 100, "x-user", user)
		if len(c.codes) > 0 || len(c.pods) != 1 {
			t.Errorf("user %s: calls went to %v (failed %v), want all to one pod", user, c.pods, c.codes)
		}
		for pod := range c.pods {
			used[pod] = true
		}
	}
	if len(used) < 2 {
		t.Errorf("8 users all hashed to %v, want more than one pod", used)
	}
	noNACKs(t, p)
}
