package e2e

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
)

// TestLostStatusIsRepaired: when the API server's status of a running pod
// is wrong and nothing changes on the node (a status update lost on its
// way, here forced by writing a stale one), the node agent writes the
// pod's real status back, as the kubelet's status manager does. Without
// that, one lost update leaves a pod unready for good.
func TestLostStatusIsRepaired(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	const ns = "lost-status"
	apply(t, ctx, sleeperApp(ns))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cluster.Kubectl(ctx, nil, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=50s")
	})
	pod := waitReadyPods(t, ctx, ns, "sleeper", 1)[0]

	stale := pod.DeepCopy()
	for i, c := range stale.Status.Conditions {
		if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
			stale.Status.Conditions[i].Status = corev1.ConditionFalse
		}
	}
	for i := range stale.Status.ContainerStatuses {
		stale.Status.ContainerStatuses[i].Ready = false
	}
	if _, err := cluster.Client.CoreV1().Pods(ns).UpdateStatus(ctx, stale, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	err := devcluster.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s stayed unready in the API server after its status was lost: %v", ns, pod.Name, err)
	}
	t.Logf("stale status repaired after %s", time.Since(lost).Round(time.Millisecond))
}
