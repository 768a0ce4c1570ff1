package e2e

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/greeter"
)

// greeterApp is a namespace with a Deployment of greeters and its Service.
func greeterApp(ns string, replicas int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: %[1]s
spec:
  selector: {app: greeter}
  ports:
  - {name: grpc, port: 50051}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: greeter
  namespace: %[1]s
spec:
  replicas: %[2]d
  selector:
    matchLabels: {app: greeter}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: greeter}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: greeter
        image: %[3]s
        command: ["ballast", "greeter", "serve"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe:
          grpc: {port: 50051}
          periodSeconds: 1
`, ns, replicas, image)
}

// sleeperApp is a Deployment whose process says hello, then ignores
// SIGTERM, so deleting a pod leaves it terminating for its whole grace
// period (3s) before SIGKILL; and a Service in front of it.
func sleeperApp(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: Service
metadata:
  name: sleeper
  namespace: %[1]s
spec:
  selector: {app: sleeper}
  ports:
  - {name: http, port: 80}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sleeper
  namespace: %[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: sleeper}
  template:
    metadata:
      labels: {app: sleeper}
    spec:
      terminationGracePeriodSeconds: 3
      containers:
      - name: sleeper
        image: host:sh
        command: ["sh", "-c", "echo hello from $POD_NAME; echo hostname $(hostname); trap '' TERM; while true; do sleep 1; done"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        readinessProbe:
          exec: {command: ["true"]}
          periodSeconds: 1
`, ns)
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func apply(t *testing.T, ctx context.Context, manifests string) {
	t.Helper()
	if err := cluster.Apply(ctx, manifests); err != nil {
		t.Fatal(err)
	}
}

func kubectl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := cluster.Kubectl(ctx, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// readyPods lists the pods of app that are Ready and not terminating.
func readyPods(t *testing.T, ctx context.Context, ns, app string) []corev1.Pod {
	t.Helper()
	list, err := cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				out = append(out, p)
			}
		}
	}
	return out
}

func waitReadyPods(t *testing.T, ctx context.Context, ns, app string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	err := devcluster.Poll(ctx, 2*time.Minute, func(context.Context) (bool, error) {
		pods = readyPods(t, ctx, ns, app)
		return len(pods) == n, nil
	})
	if err != nil {
		t.Fatalf("%s/%s: want %d ready pods, have %d: %v", ns, app, n, len(pods), err)
	}
	return pods
}

// podsPerConnection opens n new connections from inside pod (one call
// each) to target and counts the pod that answered each.
func podsPerConnection(t *testing.T, ctx context.Context, ns, pod, target string, n int) map[string]int {
	t.Helper()
	dial, err := cluster.PodDialer(ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for i := range n {
		conn, err := grpc.NewClient("passthrough:///"+target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }))
		if err != nil {
			t.Fatal(err)
		}
		tally := greeter.Call(ctx, conn, 1, 5*time.Second, nil)
		conn.Close()
		if tally.Errors > 0 {
			t.Fatalf("connection %d to %s from %s/%s: %v", i+1, target, ns, pod, tally.LastError)
		}
		for p, c := range tally.Pods {
			counts[p] += c
		}
	}
	return counts
}

func clusterIP(t *testing.T, ctx context.Context, ns, name string) string {
	t.Helper()
	svc, err := cluster.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

func hasLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}

func run(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}
