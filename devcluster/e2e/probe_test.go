package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/inject"
	"github.com/ballast-dev/ballast/probe"
)

// TestSidecarProbeWaitsForApp: an injected pod whose app does not yet
// listen on its port is not Ready, though its sidecar accepts connections
// to that port; once the app listens, the pod turns Ready and serves. The
// app's tcpSocket readiness probe (on a named port) is rewritten to the
// sidecar's /app-health/, which runs it inside the pod.
func TestSidecarProbeWaitsForApp(t *testing.T) {
	ctx := ctxFor(t, 5*time.Minute)
	setupMesh(t, ctx)
	const ns = "probe-rewrite"
	if err := cluster.EnableInjection(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { waitNamespacesGone(t, ns) })
	grace := int64(1)
	// The app runs but listens only on a loopback port nobody probes,
	// until the test starts a second greeter on :50051 by exec.
	late := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "late", Labels: map[string]string{"app": "late"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "app", Image: image,
				Command: []string{"ballast", "greeter", "serve", "--address", "127.0.0.1:50099"},
				Env:     []corev1.EnvVar{{Name: "POD_NAME", Value: "late"}},
				Ports:   []corev1.ContainerPort{{Name: "grpc", ContainerPort: 50051}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("grpc")}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	caller := plainPod("caller", map[string]string{inject.OptOutAnnotation: "false"})
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, caller, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cluster.WaitPodReady(ctx, ns, "caller", 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	pod, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "late", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	path := probe.Path("app", probe.Readiness)
	if !devcluster.Injected(pod) {
		t.Fatal("pod late was not injected")
	}
	if g := pod.Spec.Containers[0].ReadinessProbe.HTTPGet; g == nil || g.Path != path || g.Port.IntValue() != 15021 {
		t.Fatalf("readiness probe %+v, want an httpGet of :15021%s", pod.Spec.Containers[0].ReadinessProbe.ProbeHandler, path)
	}

	// Wait until the kubelet has run the rewritten probe three times and
	// the app failed it each time, with the app container running.
	err = devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		v, _, err := readMetric(ctx, ns, "late", "ballast_proxy_app_probes_total", fmt.Sprintf("probe=%q", path), `result="failure"`)
		return err == nil && v >= 3, nil
	})
	if err != nil {
		t.Fatalf("the sidecar never ran the app's readiness probe 3 times: %v", err)
	}
	pod, err = cluster.Client.CoreV1().Pods(ns).Get(ctx, "late", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if podReady(pod) {
		t.Fatal("pod late is Ready before its app listens")
	}
	if len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].State.Running == nil {
		t.Fatalf("app container not running: %+v", pod.Status.ContainerStatuses)
	}
	if v := proxyMetrics(t, ctx, ns, "late", "ballast_proxy_app_probes_total", `result="success"`); v != 0 {
		t.Fatalf("%v successful probe runs before the app listens", v)
	}
	// What the kubelet's own tcpSocket probe would have seen: the
	// sidecar accepts on the app's port.
	dial, err := cluster.PodDialer(ns, "caller")
	if err != nil {
		t.Fatal(err)
	}
	appAddr := net.JoinHostPort(pod.Status.PodIP, "50051")
	conn, err := dial(ctx, "tcp", appAddr)
	if err != nil {
		t.Fatalf("a connection to %s was not accepted by the sidecar: %v", appAddr, err)
	}
	conn.Close()
	// And the sidecar says what failed.
	client, err := cluster.PodHTTPClient(ns, "late")
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, ctx, client, "http://127.0.0.1:15021"+path)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Fatalf("%s: %d %q, want 503 saying the connection was refused", path, code, body)
	}

	// The app starts listening: the pod turns Ready and serves.
	execCtx, stop := context.WithCancel(ctx)
	execDone := make(chan struct{})
	go func() {
		defer close(execDone)
		podExec(execCtx, ns, "late", "app", "ballast", "greeter", "serve", "--address", ":50051")
	}()
	t.Cleanup(func() { stop(); <-execDone })
	if err := cluster.WaitPodReady(ctx, ns, "late", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, ctx, client, "http://127.0.0.1:15021"+path); code != http.StatusOK {
		t.Fatalf("%s once the app listens: %d %q, want 200", path, code, body)
	}
	tally := greeter.Call(ctx, podGRPC(t, ns, "caller", appAddr), 5, 5*time.Second, nil)
	if tally.Errors > 0 {
		t.Fatalf("calls to the Ready pod late: %d failed, last: %v", tally.Errors, tally.LastError)
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func get(t *testing.T, ctx context.Context, client *http.Client, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
