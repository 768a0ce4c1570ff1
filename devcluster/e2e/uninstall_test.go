package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/install"
)

// TestUninstall is what an operator who runs `ballast uninstall` expects:
// nothing the install applied is left in the cluster but the CRDs (their
// GRPCRoutes and TrafficPolicies stay); pods created afterwards, in a
// namespace still labelled for injection, start without a sidecar and are
// not held up by a webhook that is gone; workloads injected before keep
// serving (each sidecar keeps the last configuration it was sent and
// balances over it) until they are rolled, and then run without a
// sidecar. The mesh is installed again afterwards for the tests after.
func TestUninstall(t *testing.T) {
	ctx := ctxFor(t, 10*time.Minute)
	setupMesh(t, ctx)
	t.Cleanup(func() {
		// Reinstalled, as the tests after this one expect it.
		meshReady = false
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := cluster.InstallMesh(ctx); err != nil {
			t.Errorf("install again: %v", err)
		}
	})
	const ns = "uninstall"
	t.Cleanup(func() {
		cluster.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	if err := cluster.EnableInjection(ctx, ns); err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, devcluster.ArticleManifestsIn(ns, image, 2))
	if err := cluster.WaitReadyEndpoints(ctx, ns, "native-tools-2", "grpc", 2, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := cluster.WaitPodReady(ctx, ns, "native-tools", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	client, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "native-tools", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !devcluster.Injected(client) {
		t.Fatal("the client pod was not injected before the uninstall")
	}
	// Both greeters answer through the sidecar (so it has both endpoints).
	if err := spreadOver(ctx, ns, 2); err != nil {
		t.Fatalf("before the uninstall: %v", err)
	}

	if err := cluster.UninstallMesh(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("nothing the install applied is left but the CRDs", func(t *testing.T) {
		left, err := appliedBy(ctx, install.FieldManager)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Fatalf("still in the cluster after uninstall: %v", left)
		}
		crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
		dyn, err := dynamic.NewForConfig(cluster.Config)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"grpcroutes.gateway.networking.k8s.io", "referencegrants.gateway.networking.k8s.io", "trafficpolicies.ballast.dev"} {
			if _, err := dyn.Resource(crds).Get(ctx, name, metav1.GetOptions{}); err != nil {
				t.Errorf("CRD %s: %v; want it kept, and its objects with it", name, err)
			}
		}
	})

	t.Run("new pods start without a sidecar", func(t *testing.T) {
		if err := cluster.WaitInjecting(ctx, ns, false); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("injected workloads keep serving", func(t *testing.T) {
		client, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "native-tools", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if client.UID == "" || !devcluster.Injected(client) {
			t.Fatal("the injected client pod was replaced")
		}
		counts, err := cluster.ArticleCallsIn(ctx, ns, 30)
		if err != nil {
			t.Fatalf("30 calls through the sidecar with the control plane gone: %v (answered: %v)", err, counts)
		}
		if len(counts) != 2 {
			t.Fatalf("the sidecar balanced over %v, want both greeters", counts)
		}
	})

	t.Run("rolled, they run without a sidecar", func(t *testing.T) {
		grace := int64(0)
		if err := cluster.Client.CoreV1().Pods(ns).Delete(ctx, "native-tools", metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
			t.Fatal(err)
		}
		if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
			_, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "native-tools", metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			t.Fatal(err)
		}
		apply(t, ctx, devcluster.ArticleClient(ns, image, devcluster.ClientPlain))
		client, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "native-tools", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if devcluster.Injected(client) {
			t.Fatal("a pod created after the uninstall got the sidecar")
		}
		if err := cluster.WaitPodReady(ctx, ns, "native-tools", 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		// The article's client as written: one connection, one greeter.
		counts, err := cluster.ArticleCallsIn(ctx, ns, 10)
		if err != nil {
			t.Fatalf("10 calls without a sidecar: %v", err)
		}
		if len(counts) != 1 {
			t.Fatalf("without the sidecar the calls went to %v; the article's client has one connection", counts)
		}
	})
}

// spreadOver waits until the client in ns has reached n greeters.
func spreadOver(ctx context.Context, ns string, n int) error {
	seen := map[string]int{}
	err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		counts, err := cluster.ArticleCallsIn(ctx, ns, 2*n)
		if err != nil {
			return false, nil
		}
		for p, c := range counts {
			seen[p] += c
		}
		return len(seen) >= n, nil
	})
	if err != nil {
		return fmt.Errorf("calls reached only %v: %w", seen, err)
	}
	return nil
}

// appliedBy lists every object in the cluster but CRDs that manager has
// applied fields of (kind namespace/name).
func appliedBy(ctx context.Context, manager string) ([]string, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cluster.Config)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cluster.Config)
	if err != nil {
		return nil, err
	}
	lists, err := discovery.ServerPreferredResources(dc)
	if err != nil {
		return nil, err
	}
	var left []string
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			return nil, err
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !slices.Contains(r.Verbs, "list") || r.Kind == "CustomResourceDefinition" {
				continue
			}
			objs, err := dyn.Resource(gv.WithResource(r.Name)).List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, fmt.Errorf("list %s: %w", r.Name, err)
			}
			for _, o := range objs.Items {
				if slices.ContainsFunc(o.GetManagedFields(), func(f metav1.ManagedFieldsEntry) bool { return f.Manager == manager }) {
					left = append(left, fmt.Sprintf("%s %s/%s", r.Kind, o.GetNamespace(), o.GetName()))
				}
			}
		}
	}
	return left, nil
}
