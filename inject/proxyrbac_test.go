package inject

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
)

// TestProxyRBAC: the injected sidecar's `--kubernetes` mode runs under the
// app pod's service account. With deploy/inject's proxy RBAC, any service
// account can read Services and EndpointSlices, which is enough for the
// proxy's Service index to sync and map a ClusterIP to its xds:/// target,
// and nothing more: no writes, no Pods, Secrets or ConfigMaps, and nothing
// for users that are not service accounts.
func TestProxyRBAC(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := client.New(api.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, obj := range readObjects(t) {
		if obj.GetName() != "ballast-proxy" {
			continue
		}
		if err := c.Create(ctx, obj); err != nil {
			t.Fatalf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		created++
		t.Cleanup(func() { c.Delete(context.Background(), obj) })
	}
	if created != 2 {
		t.Fatalf("deploy/inject has %d ballast-proxy objects, want a ClusterRole and its binding", created)
	}

	const appNS = "shop"
	sa := func(ns string) (string, []string) {
		return "system:serviceaccount:" + ns + ":default", []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	}
	t.Run("access", func(t *testing.T) {
		appUser, appGroups := sa(appNS)
		tests := []struct {
			user                         string
			groups                       []string
			verb, group, resource, resNS string
			allowed                      bool
		}{
			{appUser, appGroups, "list", "", "services", "", true},
			{appUser, appGroups, "watch", "", "services", "", true},
			{appUser, appGroups, "list", "discovery.k8s.io", "endpointslices", "", true},
			{appUser, appGroups, "watch", "discovery.k8s.io", "endpointslices", "other", true},
			{appUser, appGroups, "create", "", "services", appNS, false},
			{appUser, appGroups, "update", "discovery.k8s.io", "endpointslices", appNS, false},
			{appUser, appGroups, "list", "", "pods", "", false},
			{appUser, appGroups, "get", "", "secrets", appNS, false},
			{appUser, appGroups, "list", "", "configmaps", appNS, false},
			{"alice", []string{"system:authenticated"}, "list", "", "services", "", false},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s %s %s/%s in %q", tt.user, tt.verb, tt.group, tt.resource, tt.resNS), func(t *testing.T) {
				review, err := api.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
					Spec: authorizationv1.SubjectAccessReviewSpec{
						User: tt.user, Groups: tt.groups,
						ResourceAttributes: &authorizationv1.ResourceAttributes{
							Verb: tt.verb, Group: tt.group, Resource: tt.resource, Namespace: tt.resNS,
						},
					},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if review.Status.Allowed != tt.allowed {
					t.Fatalf("allowed = %v, want %v (%s)", review.Status.Allowed, tt.allowed, review.Status.Reason)
				}
			})
		}
	})

	t.Run("the proxy's Service index syncs as the app's service account", func(t *testing.T) {
		for _, ns := range []string{appNS, "backend"} {
			if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		svc, err := api.Client.CoreV1().Services("backend").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "greeter"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := rest.CopyConfig(api.Config)
		user, groups := sa(appNS)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
		as, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// As `ballast proxy --kubernetes` wires them.
		reg := discovery.NewRegistry()
		src := kube.New(as, reg, kube.Options{})
		index := discovery.NewClusterIPIndex(reg)
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{}, 2)
		go func() { src.Run(runCtx); done <- struct{}{} }()
		go func() { index.Run(runCtx); done <- struct{}{} }()
		defer func() { stop(); <-done; <-done }()

		dst := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 50051)
		want := discovery.ServicePort{Key: discovery.Key{Namespace: "backend", Name: "greeter"}, Port: 50051}
		deadline := time.NewTimer(30 * time.Second)
		defer deadline.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if got, ok := index.Lookup(dst); src.HasSynced() && ok && got == want {
				return
			}
			select {
			case <-deadline.C:
				got, ok := index.Lookup(dst)
				t.Fatalf("as %s: synced %v, %s → %v (%v), want %v", user, src.HasSynced(), dst, got, ok, want)
			case <-tick.C:
			}
		}
	})
}
