package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
)

// TestNativeSidecarAndRunAsUser: a native sidecar (an init container with
// restartPolicy Always) is serving before the app starts and keeps running
// beside it; containers run as their securityContext's user (the pod's, or
// the container's own), and runAsNonRoot without a uid is refused. The
// injected proxy depends on all three: the app's first call goes through
// it, and its iptables rules exclude its uid.
func TestNativeSidecarAndRunAsUser(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	const ns = "podsecurity"
	apply(t, ctx, `apiVersion: v1
kind: Namespace
metadata:
  name: `+ns+`
---
apiVersion: v1
kind: Pod
metadata:
  name: sidecar
  namespace: `+ns+`
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  securityContext: {runAsUser: 65532}
  initContainers:
  - name: side
    image: `+image+`
    command: ["ballast", "greeter", "serve", "--address", ":9000"]
    restartPolicy: Always
    startupProbe:
      tcpSocket: {port: 9000}
      periodSeconds: 1
    securityContext: {runAsUser: 1337}
  containers:
  # One call to the sidecar, at once: it fails unless the sidecar serves.
  - name: app
    image: `+image+`
    command: ["ballast", "greeter", "client", "--calls", "1", "--target", "127.0.0.1:9000"]
  - name: whoami
    image: host:sh
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g)"]
    securityContext: {runAsUser: 4242, runAsGroup: 4243, allowPrivilegeEscalation: false}
---
apiVersion: v1
kind: Pod
metadata:
  name: nonroot
  namespace: `+ns+`
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: c, image: host:sh, command: ["true"]}
`)
	var pod *corev1.Pod
	terminated := func(name string) *corev1.ContainerStateTerminated {
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.Name == name {
				return cs.State.Terminated
			}
		}
		return nil
	}
	if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "sidecar", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		return terminated("app") != nil && terminated("whoami") != nil, nil
	}); err != nil {
		t.Fatalf("pod sidecar: app and whoami never finished: %v; status %+v", err, pod.Status)
	}
	if app := terminated("app"); app.ExitCode != 0 {
		logs, _ := cluster.Kubectl(ctx, nil, "-n", ns, "logs", "sidecar", "-c", "app")
		t.Fatalf("app's call to the sidecar failed (exit %d): the sidecar was not serving when it started: %s", app.ExitCode, logs)
	}
	if len(pod.Status.InitContainerStatuses) != 1 || pod.Status.InitContainerStatuses[0].State.Running == nil {
		t.Fatalf("sidecar is not running beside the app: %+v", pod.Status.InitContainerStatuses)
	}
	logs := kubectl(t, ctx, "-n", ns, "logs", "sidecar", "-c", "whoami")
	if !hasLine(logs, "uid=4242 gid=4243") {
		t.Errorf("whoami ran as %q, want uid=4242 gid=4243", logs)
	}
	netns, err := cluster.PodNetns(ns, "sidecar")
	if err != nil {
		t.Fatal(err)
	}
	// The listening socket's owner is the sidecar's uid (the container's
	// own, not the pod's 65532).
	ss := run(t, ctx, "ip", "netns", "exec", netns, "ss", "-Htlne", "sport", "=", ":9000")
	if !strings.Contains(ss, "uid:1337") {
		t.Errorf("sidecar's listener is not owned by uid 1337:\n%s", ss)
	}

	if err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "nonroot", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		cs := p.Status.ContainerStatuses
		return len(cs) == 1 && cs[0].State.Waiting != nil && cs[0].State.Waiting.Reason == "RunContainerError", nil
	}); err != nil {
		t.Fatalf("pod nonroot (runAsNonRoot, no uid) was not refused: %v; status %+v", err, pod.Status)
	}
}
