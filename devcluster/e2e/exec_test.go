package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
)

// execSessions is how many exec sessions TestConcurrentExec holds open in
// one pod at once: the conformance suite's mesh tests run their echo
// client by exec, several tests in parallel against the same pod.
const execSessions = 15

// TestConcurrentExec opens execSessions exec sessions into one container
// through the API server, as the conformance suite does, each of which
// ends only once all of them are running: a node that ran fewer at a time
// would never finish them.
func TestConcurrentExec(t *testing.T) {
	ctx := ctxFor(t, 3*time.Minute)
	const ns = "exec-concurrent"
	apply(t, ctx, fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: Pod
metadata:
  name: waiter
  namespace: %[1]s
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: host:sh
    command: ["sh", "-c", "while true; do sleep 1; done"]
    volumeMounts:
    - {name: barrier, mountPath: /barrier}
  volumes:
  - name: barrier
    emptyDir: {}
`, ns))
	t.Cleanup(func() { waitNamespacesGone(t, ns) })
	if err := cluster.WaitPodReady(ctx, ns, "waiter", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`touch /barrier/"$0"; until [ "$(ls /barrier | wc -l)" -ge %d ]; do sleep 0.05; done; echo "$0 saw all"`, execSessions)
	var wg sync.WaitGroup
	errs := make([]error, execSessions)
	outs := make([]string, execSessions)
	for i := range execSessions {
		wg.Go(func() {
			outs[i], errs[i] = podExec(ctx, ns, "waiter", "app", "sh", "-c", script, fmt.Sprint(i))
		})
	}
	wg.Wait()
	for i := range execSessions {
		if errs[i] != nil {
			t.Errorf("exec session %d: %v", i, errs[i])
		} else if want := fmt.Sprintf("%d saw all", i); strings.TrimSpace(outs[i]) != want {
			t.Errorf("exec session %d printed %q, want %q", i, outs[i], want)
		}
	}
}

// podExec runs argv in a pod's container through the API server's exec
// subresource and returns its standard output.
func podExec(ctx context.Context, ns, pod, container string, argv ...string) (string, error) {
	req := cluster.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	exec, err := remotecommand.NewSPDYExecutor(cluster.Config, "POST", req.URL())
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}
