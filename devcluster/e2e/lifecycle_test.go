package e2e

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
)

// TestNodes: two Ready Nodes in different zones.
func TestNodes(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	nodes, err := cluster.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var zones []string
	for _, n := range nodes.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
		}
		if !ready {
			t.Errorf("node %s is not Ready", n.Name)
		}
		zones = append(zones, n.Labels["topology.kubernetes.io/zone"])
	}
	slices.Sort(zones)
	if !slices.Equal(zones, []string{"zone-a", "zone-b"}) {
		t.Fatalf("zones = %v, want zone-a and zone-b", zones)
	}
}

// TestScaleRollAndBalancePerConnection: scaling 3 → 5 gives 5 ready
// endpoints; the ClusterIP spreads new connections over all 5 (including
// back to the calling pod itself); a rolling update completes.
func TestScaleRollAndBalancePerConnection(t *testing.T) {
	ctx := ctxFor(t, 6*time.Minute)
	const ns = "scale"
	apply(t, ctx, greeterApp(ns, 3))
	if err := cluster.WaitReadyEndpoints(ctx, ns, "greeter", "grpc", 3, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, "-n", ns, "scale", "deployment/greeter", "--replicas=5")
	began := time.Now()
	if err := cluster.WaitReadyEndpoints(ctx, ns, "greeter", "grpc", 5, time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("3 → 5 ready endpoints in %s", time.Since(began).Round(time.Millisecond))
	pods := waitReadyPods(t, ctx, ns, "greeter", 5)

	// Random DNAT per connection: 200 connections miss one of 5 pods with
	// probability 5·(4/5)^200 ≈ 2e-19.
	target := net.JoinHostPort(clusterIP(t, ctx, ns, "greeter"), "50051")
	counts := podsPerConnection(t, ctx, ns, pods[0].Name, target, 200)
	if len(counts) != 5 {
		t.Fatalf("200 connections to %s reached %d pods, want all 5: %v", target, len(counts), counts)
	}
	t.Logf("200 connections through the ClusterIP, per pod: %v", counts)

	kubectl(t, ctx, "-n", ns, "set", "env", "deployment/greeter", "ROLLOUT=2")
	kubectl(t, ctx, "-n", ns, "rollout", "status", "deployment/greeter", "--timeout=3m")
	after := waitReadyPods(t, ctx, ns, "greeter", 5)
	for _, p := range after {
		if slices.ContainsFunc(pods, func(old corev1.Pod) bool { return old.Name == p.Name }) {
			t.Errorf("pod %s survived the rolling update", p.Name)
		}
	}
	if err := cluster.WaitReadyEndpoints(ctx, ns, "greeter", "grpc", 5, time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestDeletePodTerminatingThenGone: a deleted pod's endpoint turns
// terminating while its process ignores SIGTERM, and is gone after SIGKILL
// at the end of the grace period, when the pod object is removed.
func TestDeletePodTerminatingThenGone(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	const ns = "terminate"
	apply(t, ctx, sleeperApp(ns))
	pod := waitReadyPods(t, ctx, ns, "sleeper", 1)[0]
	if err := cluster.WaitReadyEndpoints(ctx, ns, "sleeper", "http", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	endpoint := func() (found, terminating bool) {
		slices, err := cluster.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=sleeper"})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if slices0(e.Addresses) == pod.Status.PodIP {
					return true, e.Conditions.Terminating != nil && *e.Conditions.Terminating
				}
			}
		}
		return false, false
	}
	if err := devcluster.Poll(ctx, time.Minute, func(context.Context) (bool, error) {
		_, term := endpoint()
		return term, nil
	}); err != nil {
		t.Fatalf("endpoint %s never turned terminating: %v", pod.Status.PodIP, err)
	}
	if err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		found, _ := endpoint()
		_, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return !found && err != nil, nil
	}); err != nil {
		t.Fatalf("pod %s or its endpoint still there: %v", pod.Name, err)
	}
	// The Deployment replaces it.
	waitReadyPods(t, ctx, ns, "sleeper", 1)
}

func slices0(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// TestLogsExecAndDNS: kubectl logs and exec go through the API server to
// the node agent; exec sees the downward-API environment and resolves
// Service names through cluster DNS with the pod's search path.
func TestLogsExecAndDNS(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	const ns = "tools"
	apply(t, ctx, sleeperApp(ns))
	pod := waitReadyPods(t, ctx, ns, "sleeper", 1)[0]

	if err := devcluster.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
		out, err := cluster.Kubectl(ctx, nil, "-n", ns, "logs", pod.Name)
		return err == nil && hasLine(out, "hello from "+pod.Name), nil
	}); err != nil {
		t.Fatalf("kubectl logs %s never showed its greeting: %v", pod.Name, err)
	}
	out := kubectl(t, ctx, "-n", ns, "exec", pod.Name, "--", "sh", "-c", "echo $POD_IP")
	if got := strings.TrimSpace(out); got != pod.Status.PodIP {
		t.Fatalf("exec: POD_IP = %q, want %q", got, pod.Status.PodIP)
	}
	// The container process itself runs under the pod's hostname.
	if err := devcluster.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
		out, err := cluster.Kubectl(ctx, nil, "-n", ns, "logs", pod.Name)
		return err == nil && hasLine(out, "hostname "+pod.Name), nil
	}); err != nil {
		t.Fatalf("container did not run under hostname %s: %v", pod.Name, err)
	}
	ip := clusterIP(t, ctx, ns, "sleeper")
	for _, name := range []string{"sleeper", "sleeper.tools", "sleeper.tools.svc", "sleeper.tools.svc.cluster.local"} {
		t.Run(name, func(t *testing.T) {
			out := kubectl(t, ctx, "-n", ns, "exec", pod.Name, "--", "getent", "hosts", name)
			if f := strings.Fields(out); len(f) == 0 || f[0] != ip {
				t.Fatalf("getent hosts %s = %q, want %s", name, out, ip)
			}
		})
	}
}

// TestPodNetworkIsContained: pods have no default route, and the host
// blackholes the pod and Service CIDRs while the cluster is up.
func TestPodNetworkIsContained(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	const ns = "contained"
	apply(t, ctx, sleeperApp(ns))
	pod := waitReadyPods(t, ctx, ns, "sleeper", 1)[0]
	netns, err := cluster.PodNetns(ns, pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	routes := run(t, ctx, "ip", "-n", netns, "route", "show")
	if strings.Contains(routes, "default") {
		t.Fatalf("pod %s has a default route:\n%s", pod.Name, routes)
	}
	host := run(t, ctx, "ip", "route", "show", "type", "blackhole")
	for _, cidr := range []string{cluster.PodCIDR.String(), cluster.ServiceCIDR.String()} {
		if !strings.Contains(host, cidr) {
			t.Errorf("host has no blackhole route for %s:\n%s", cidr, host)
		}
	}
}

// TestRestartPolicy: OnFailure restarts a failing container; Never leaves
// the pod Failed.
func TestRestartPolicy(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	tests := []struct {
		policy string
		done   func(p *corev1.Pod) bool
	}{
		{"OnFailure", func(p *corev1.Pod) bool {
			return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
		}},
		{"Never", func(p *corev1.Pod) bool {
			return p.Status.Phase == corev1.PodFailed && len(p.Status.ContainerStatuses) == 1 &&
				p.Status.ContainerStatuses[0].State.Terminated != nil && p.Status.ContainerStatuses[0].State.Terminated.ExitCode == 3
		}},
	}
	apply(t, ctx, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: restart\n")
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			name := "fail-" + strings.ToLower(tt.policy)
			apply(t, ctx, `apiVersion: v1
kind: Pod
metadata:
  name: `+name+`
  namespace: restart
spec:
  restartPolicy: `+tt.policy+`
  initContainers:
  - {name: init, image: host:sh, command: ["true"]}
  containers:
  - {name: fail, image: host:sh, command: ["sh", "-c", "exit 3"]}
`)
			var last *corev1.Pod
			err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
				p, err := cluster.Client.CoreV1().Pods("restart").Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return false, nil
				}
				last = p
				return tt.done(p), nil
			})
			if err != nil {
				t.Fatalf("pod %s: %v; status %+v", name, err, last.Status)
			}
		})
	}
}

// TestPodNameReuse: a pod deleted and created again under the same name
// runs again (the node agent tells the two apart by UID) and its Ready
// status reaches the API server. virtual-kubelet writes the last status it
// is told, so a Pending snapshot taken at creation must not reach it after
// the container's Running/Ready one: notifications are ordered
// (podRuntime.changed), and the node's status sync rewrites any status that
// stays stale (TestLostStatusIsRepaired).
func TestPodNameReuse(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	pod := `apiVersion: v1
kind: Namespace
metadata:
  name: reuse
---
apiVersion: v1
kind: Pod
metadata:
  name: same
  namespace: reuse
  labels: {app: same}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: host:sh, command: ["sh", "-c", "while true; do sleep 1; done"]}
`
	apply(t, ctx, pod)
	first := waitReadyPods(t, ctx, "reuse", "same", 1)[0]
	kubectl(t, ctx, "-n", "reuse", "delete", "pod", "same", "--wait=true", "--timeout=60s")
	apply(t, ctx, pod)
	second := waitReadyPods(t, ctx, "reuse", "same", 1)[0]
	if second.UID == first.UID {
		t.Fatal("the second pod has the first one's UID")
	}
}
