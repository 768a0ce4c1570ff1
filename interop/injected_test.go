package interop

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
)

// injectedNS is the namespace, labelled for injection, where the injected
// columns' greeters and client pod run.
const injectedNS = "interop"

// TestInjectedSidecar is the sidecar row as users get it: the same Node and
// Python scripts, unchanged and without a bootstrap, run inside a pod of
// the dev cluster whose sidecar the webhook from deploy/inject added. They
// dial the greeters' ClusterIP, the pod's iptables rules hand the one
// connection to the sidecar, and the sidecar balances each call.
func TestInjectedSidecar(t *testing.T) {
	ran(t.Name())
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the injected columns need root (the dev cluster's network namespaces); CI runs as root")
		}
		t.Skip("needs root: the dev cluster's pods are network namespaces")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	images, err := devcluster.BuildImages(ctx, os.Stderr)
	need(t, err)
	began := start
	phase := func(what string) { t.Logf("%s after %s", what, time.Since(began).Round(time.Second)) }
	phase("images built")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cluster, err := devcluster.Start(ctx, devcluster.Options{Images: images, Log: log})
	need(t, err)
	t.Cleanup(func() {
		if err := cluster.Stop(); err != nil {
			t.Errorf("stop the dev cluster: %v", err)
		}
	})
	phase("cluster up")
	need(t, cluster.InstallMesh(ctx))
	phase("mesh installed")
	need(t, cluster.EnableInjection(ctx, injectedNS))
	const pods = 3
	need(t, cluster.Apply(ctx, devcluster.ArticleServers(injectedNS, devcluster.BallastImage, pods)+`---
apiVersion: v1
kind: Pod
metadata: {name: scripts, namespace: `+injectedNS+`}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: app, image: "host:sh", command: ["sh", "-c", "while true; do sleep 1; done"]}
`))
	need(t, cluster.WaitReadyEndpoints(ctx, injectedNS, "native-tools-2", "grpc", pods, 3*time.Minute))
	need(t, cluster.WaitPodReady(ctx, injectedNS, "scripts", 3*time.Minute))
	phase("pods ready")
	pod, err := cluster.Client.CoreV1().Pods(injectedNS).Get(ctx, "scripts", metav1.GetOptions{})
	need(t, err)
	if !devcluster.Injected(pod) {
		t.Fatalf("the scripts' pod has no sidecar: init containers %v", pod.Spec.InitContainers)
	}
	svc, err := cluster.Client.CoreV1().Services(injectedNS).Get(ctx, "native-tools-2", metav1.GetOptions{})
	need(t, err)
	netns, err := cluster.PodNetns(injectedNS, "scripts")
	need(t, err)
	// The unchanged client of the article: one connection to the Service.
	target := fmt.Sprintf("%s:50051", svc.Spec.ClusterIP)

	for _, lang := range []struct {
		name  string
		start func(t *testing.T) (client, map[string]string)
	}{
		{"node-injected", func(t *testing.T) (client, map[string]string) {
			return startScript(t, "", []string{"NODE_PATH=" + nodeModules(t)}, "ip", "netns", "exec", netns,
				"node", filepath.Join(interopDir(), "node", "client.js"))
		}},
		{"python-injected", func(t *testing.T) (client, map[string]string) {
			checkPython(t)
			return startScript(t, "", nil, "ip", "netns", "exec", netns, debianPython, filepath.Join(interopDir(), "python", "client.py"))
		}},
	} {
		t.Run(lang.name, func(t *testing.T) {
			c, versions := lang.start(t)
			record(lang.name, versions)
			t.Run("balance", func(t *testing.T) {
				// The sidecar connects to the pods as the first calls
				// arrive; count once every pod has answered.
				seen := map[string]bool{}
				until(t, c, target, 10, "every greeter answering", func(b batch) bool {
					for p := range b.Pods {
						seen[p] = true
					}
					return len(seen) == pods
				})
				b := c.calls(t, target, 300)
				if b.Errors > 0 || b.total() != 300 || len(b.Pods) != pods {
					t.Fatalf("300 calls: %v, %d failed, first: %s", b.Pods, b.Errors, b.FirstError)
				}
				most := 0
				for _, n := range b.Pods {
					most = max(most, n)
				}
				ratio := float64(most) / (300.0 / pods)
				t.Logf("300 calls over one connection: %v, max/mean %.2f", b.Pods, ratio)
				if ratio > 1.05 {
					t.Fatalf("max/mean %.2f > 1.05: %v", ratio, b.Pods)
				}
				pass(lang.name, "balance")
			})
		})
	}
}
