package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/demo"
)

// TestDemoKube is `ballast demo --kube`: the article on real Kubernetes in
// every mode the embedded demo shows. One connection through the Service
// lands on one pod; each per-call mode spreads the calls over every pod.
func TestDemoKube(t *testing.T) {
	ctx := ctxFor(t, 10*time.Minute)
	t.Cleanup(func() {
		if t.Failed() {
			dumpState(t, demo.KubeNamespace, "ballast-system")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, err := cluster.Kubectl(ctx, nil, "delete", "namespace", demo.KubeNamespace, "--wait=true", "--timeout=2m"); err != nil {
			t.Errorf("remove the demo's namespace: %v", err)
		}
	})
	const pods, calls = 3, 30
	res, err := demo.RunKube(ctx, cluster, image, demo.Options{Calls: calls, Pods: pods})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"plain-service", "client-side", "proxyless", "sidecar"}
	if len(res.Modes) != len(want) {
		t.Fatalf("modes %d, want %v", len(res.Modes), want)
	}
	for i, m := range res.Modes {
		t.Logf("%s: %v", m.Mode, m.Pods)
		if m.Mode != want[i] {
			t.Errorf("mode %d is %s, want %s", i, m.Mode, want[i])
		}
		if m.Calls != calls || len(m.Pods) != pods {
			t.Errorf("%s: %d calls over %d pods, want %d over %d", m.Mode, m.Calls, len(m.Pods), calls, pods)
			continue
		}
		answered := 0
		for _, n := range m.Pods {
			if n > 0 {
				answered++
			}
		}
		switch {
		case m.Mode == "plain-service" && answered != 1:
			t.Errorf("plain-service: %d pods answered one connection's calls, want 1: %v", answered, m.Pods)
		case m.Mode != "plain-service" && (answered != pods || m.MaxMean > maxOverMean):
			t.Errorf("%s: busiest pod %.2f× the mean over %d answering pods, want ≤ %.2f× over %d: %v",
				m.Mode, m.MaxMean, answered, maxOverMean, pods, m.Pods)
		}
	}
}
