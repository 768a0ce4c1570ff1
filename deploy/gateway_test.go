package deploy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// The gateway's base renders, the API server takes every object (the
// Gateway API CRDs first), the GatewayClass names Ballast's controller,
// the Deployment runs ballast-gateway for one Gateway, and the RBAC allows
// what the gateway reads and the status it writes, nothing more.
func TestGatewayBase(t *testing.T) {
	ctx := context.Background()
	c, err := client.New(api.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, "gateway")
	kinds := map[string]int{}
	var crds []*apiextensionsv1.CustomResourceDefinition
	var rest []*unstructured.Unstructured
	for _, o := range objs {
		kinds[o.GetKind()]++
		if o.GetKind() == "CustomResourceDefinition" {
			if o.GetAnnotations()["gateway.networking.k8s.io/bundle-version"] != "v1.6.3" {
				t.Errorf("CRD %s: bundle-version %q, want v1.6.3", o.GetName(), o.GetAnnotations()["gateway.networking.k8s.io/bundle-version"])
			}
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.Scheme().Convert(o, crd, nil); err != nil {
				t.Fatal(err)
			}
			crds = append(crds, crd)
			continue
		}
		rest = append(rest, o)
	}
	if kinds["CustomResourceDefinition"] != 4 {
		t.Errorf("%d CRDs, want GatewayClass's, Gateway's, GRPCRoute's and ReferenceGrant's", kinds["CustomResourceDefinition"])
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "GatewayClass"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s objects, want 1 (kinds: %v)", kinds[k], k, kinds)
		}
	}
	// The control plane's base (another test) may have made the shared
	// CRDs and the namespace already.
	for _, crd := range crds {
		if err := c.Create(ctx, crd); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("API server rejects CRD %s: %v", crd.Name, err)
		}
	}
	if err := envtest.WaitForCRDs(api.Config, crds, envtest.CRDInstallOptions{MaxTime: time.Minute, PollInterval: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for _, o := range rest {
		if err := c.Create(ctx, o); err != nil && !(apierrors.IsAlreadyExists(err) && o.GetKind() == "Namespace") {
			t.Fatalf("API server rejects %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}

	t.Run("gatewayclass", func(t *testing.T) {
		gc := &unstructured.Unstructured{}
		gc.SetAPIVersion("gateway.networking.k8s.io/v1")
		gc.SetKind("GatewayClass")
		if err := c.Get(ctx, client.ObjectKey{Name: "ballast"}, gc); err != nil {
			t.Fatal(err)
		}
		if name, _, _ := unstructured.NestedString(gc.Object, "spec", "controllerName"); name != "ballast.dev/gateway" {
			t.Errorf("controllerName %q, want ballast.dev/gateway", name)
		}
	})

	t.Run("deployment", func(t *testing.T) {
		d, err := api.Client.AppsV1().Deployments("ballast-system").Get(ctx, "ballast-gateway", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctr := d.Spec.Template.Spec.Containers[0]
		if d.Spec.Template.Spec.ServiceAccountName != "ballast-gateway" || ctr.Image != "ballast-gateway:dev" || ctr.Command[0] != "ballast-gateway" {
			t.Errorf("service account %q, image %q, command %q", d.Spec.Template.Spec.ServiceAccountName, ctr.Image, ctr.Command)
		}
		if ctr.Args[0] != "--gateway=$(GATEWAY_NAMESPACE)/$(GATEWAY_NAME)" {
			t.Errorf("args %q: want the one Gateway it serves first", ctr.Args)
		}
		if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/ready" {
			t.Errorf("readiness probe %+v, want GET /ready", p)
		}
	})

	t.Run("rbac is reading and status", func(t *testing.T) {
		tests := []struct {
			verb, group, resource, subresource string
			allowed                            bool
		}{
			{"list", "", "services", "", true},
			{"watch", "", "secrets", "", true},
			{"get", "", "secrets", "", true},
			{"list", "discovery.k8s.io", "endpointslices", "", true},
			{"watch", "gateway.networking.k8s.io", "gatewayclasses", "", true},
			{"list", "gateway.networking.k8s.io", "gateways", "", true},
			{"list", "gateway.networking.k8s.io", "grpcroutes", "", true},
			{"watch", "gateway.networking.k8s.io", "referencegrants", "", true},
			{"update", "gateway.networking.k8s.io", "gatewayclasses", "status", true},
			{"update", "gateway.networking.k8s.io", "gateways", "status", true},
			{"update", "gateway.networking.k8s.io", "grpcroutes", "status", true},
			{"update", "gateway.networking.k8s.io", "gateways", "", false},
			{"create", "gateway.networking.k8s.io", "gatewayclasses", "", false},
			{"update", "gateway.networking.k8s.io", "grpcroutes", "", false},
			{"list", "gateway.networking.k8s.io", "httproutes", "", false},
			{"create", "", "secrets", "", false},
			{"update", "", "secrets", "", false},
			{"list", "", "pods", "", false},
			{"list", "", "configmaps", "", false},
			{"create", "apps", "deployments", "", false},
			{"create", "", "services", "", false},
			{"create", "coordination.k8s.io", "leases", "", false},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s %s/%s/%s", tt.verb, tt.group, tt.resource, tt.subresource), func(t *testing.T) {
				review, err := api.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
					Spec: authorizationv1.SubjectAccessReviewSpec{
						User:   "system:serviceaccount:ballast-system:ballast-gateway",
						Groups: []string{"system:serviceaccounts", "system:serviceaccounts:ballast-system", "system:authenticated"},
						ResourceAttributes: &authorizationv1.ResourceAttributes{
							Verb: tt.verb, Group: tt.group, Resource: tt.resource, Subresource: tt.subresource, Namespace: "default",
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
}
