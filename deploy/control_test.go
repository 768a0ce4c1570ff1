// Package deploy_test checks the kustomize bases against a real
// kube-apiserver: they render with kubectl, the API server accepts every
// object, and the control plane's RBAC allows exactly what discovery reads.
package deploy_test

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ballast-dev/ballast/internal/testapi"
)

var api *testapi.Env

func TestMain(m *testing.M) {
	testapi.Main(m, "deploy", &api)
}

// render runs kubectl kustomize (the kubectl built beside the API server)
// on a base and decodes the objects.
func render(t *testing.T, base string) []*unstructured.Unstructured {
	t.Helper()
	assets, err := testapi.Assets()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(assets, "kubectl"), "kustomize", base)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v: %s", base, err, stderr.String())
	}
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

func TestControlBase(t *testing.T) {
	ctx := context.Background()
	c, err := client.New(api.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	objs := render(t, "control")
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		// The gateway's base (another test) shares the CRDs and the namespace.
		shared := o.GetKind() == "CustomResourceDefinition" || o.GetKind() == "Namespace"
		if err := c.Create(ctx, o); err != nil && !(shared && apierrors.IsAlreadyExists(err)) {
			t.Fatalf("API server rejects %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	if kinds["CustomResourceDefinition"] != 3 {
		t.Errorf("%d CRDs, want GRPCRoute's, ReferenceGrant's and TrafficPolicy's", kinds["CustomResourceDefinition"])
	}
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" && strings.HasSuffix(o.GetName(), ".gateway.networking.k8s.io") &&
			o.GetAnnotations()["gateway.networking.k8s.io/bundle-version"] != "v1.6.3" {
			t.Errorf("CRD %s: bundle-version %q, want v1.6.3", o.GetName(), o.GetAnnotations()["gateway.networking.k8s.io/bundle-version"])
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s objects, want 1 (kinds: %v)", kinds[k], k, kinds)
		}
	}

	t.Run("deployment", func(t *testing.T) {
		d, err := api.Client.AppsV1().Deployments("ballast-system").Get(ctx, "ballast-control", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkDeployment(t, d)
	})

	t.Run("service", func(t *testing.T) {
		s, err := api.Client.CoreV1().Services("ballast-system").Get(ctx, "ballast-control", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int32{}
		for _, p := range s.Spec.Ports {
			got[p.Name] = p.Port
		}
		if got["grpc-xds"] != 15010 || got["http"] != 15014 || len(got) != 2 {
			t.Fatalf("service ports = %v, want grpc-xds 15010 and http 15014", got)
		}
		if s.Spec.Selector["app.kubernetes.io/name"] != "ballast-control" {
			t.Fatalf("service selector = %v", s.Spec.Selector)
		}
	})

	t.Run("rbac is discovery, route status and its lease", func(t *testing.T) {
		tests := []struct {
			verb, group, resource string
			allowed               bool
			subresource, ns       string
		}{
			{"list", "", "services", true, "", ""},
			{"watch", "", "services", true, "", ""},
			{"get", "", "services", true, "", ""},
			{"list", "discovery.k8s.io", "endpointslices", true, "", ""},
			{"watch", "discovery.k8s.io", "endpointslices", true, "", ""},
			{"list", "", "pods", true, "", ""},
			{"watch", "", "nodes", true, "", ""},
			{"create", "", "services", false, "", ""},
			{"update", "discovery.k8s.io", "endpointslices", false, "", ""},
			{"delete", "", "pods", false, "", ""},
			{"patch", "", "nodes", false, "", ""},
			{"get", "", "secrets", false, "", ""},
			{"list", "", "configmaps", false, "", ""},
			{"create", "", "configmaps", true, "", ""},
			{"list", "", "namespaces", true, "", ""},
			{"get", "", "secrets", false, "", "ballast-system"},
			{"list", "", "endpoints", false, "", ""},
			{"create", "coordination.k8s.io", "leases", false, "", ""},
			{"list", "gateway.networking.k8s.io", "grpcroutes", true, "", ""},
			{"watch", "gateway.networking.k8s.io", "referencegrants", true, "", ""},
			{"update", "gateway.networking.k8s.io", "grpcroutes", true, "status", ""},
			{"update", "gateway.networking.k8s.io", "grpcroutes", false, "", ""},
			{"create", "gateway.networking.k8s.io", "referencegrants", false, "", ""},
			{"list", "gateway.networking.k8s.io", "httproutes", false, "", ""},
			{"create", "coordination.k8s.io", "leases", true, "", "ballast-system"},
			{"update", "coordination.k8s.io", "leases", true, "", "ballast-system"},
			{"create", "authentication.k8s.io", "tokenreviews", true, "", ""},
			{"list", "ballast.dev", "trafficpolicies", true, "", ""},
			{"watch", "ballast.dev", "trafficpolicies", true, "", ""},
			{"update", "ballast.dev", "trafficpolicies", true, "status", ""},
			{"update", "ballast.dev", "trafficpolicies", false, "", ""},
			{"create", "ballast.dev", "trafficpolicies", false, "", ""},
			{"list", "gateway.networking.x-k8s.io", "xbackendtrafficpolicies", true, "", ""},
			{"watch", "gateway.networking.x-k8s.io", "xbackendtrafficpolicies", true, "", ""},
			{"update", "gateway.networking.x-k8s.io", "xbackendtrafficpolicies", true, "status", ""},
			{"update", "gateway.networking.x-k8s.io", "xbackendtrafficpolicies", false, "", ""},
			{"create", "authorization.k8s.io", "subjectaccessreviews", false, "", ""},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s %s/%s/%s in %s", tt.verb, tt.group, tt.resource, tt.subresource, tt.ns), func(t *testing.T) {
				review, err := api.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
					Spec: authorizationv1.SubjectAccessReviewSpec{
						User:   "system:serviceaccount:ballast-system:ballast-control",
						Groups: []string{"system:serviceaccounts", "system:serviceaccounts:ballast-system", "system:authenticated"},
						ResourceAttributes: &authorizationv1.ResourceAttributes{
							Verb: tt.verb, Group: tt.group, Resource: tt.resource, Subresource: tt.subresource, Namespace: cmp.Or(tt.ns, "default"),
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

func checkDeployment(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
	}
	if d.Spec.Template.Spec.ServiceAccountName != "ballast-control" {
		t.Errorf("service account = %q", d.Spec.Template.Spec.ServiceAccountName)
	}
	if len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(d.Spec.Template.Spec.Containers))
	}
	ctr := d.Spec.Template.Spec.Containers[0]
	if ctr.Image != "ballast-control:dev" || len(ctr.Command) != 1 || ctr.Command[0] != "ballast-control" {
		t.Errorf("image %q command %q, want ballast-control:dev [ballast-control]", ctr.Image, ctr.Command)
	}
	ports := map[string]int32{}
	for _, p := range ctr.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc-xds"] != 15010 || ports["http"] != 15014 {
		t.Errorf("container ports = %v", ports)
	}
	if p := ctr.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "http" {
		t.Errorf("readiness probe = %+v, want GET /readyz on http", p)
	}
	if p := ctr.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "http" {
		t.Errorf("liveness probe = %+v, want GET /healthz on http", p)
	}
}
