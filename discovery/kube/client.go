package kube

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/internal/kubeclient"
)

// client reads (and, for status, writes) the kinds discovery needs, and
// only those, through kubeclient rather than a generated clientset (see
// kubeclient for why).
type client struct {
	*kubeclient.Client
	services        kubeclient.Resource[*corev1.Service]
	slices          kubeclient.Resource[*discoveryv1.EndpointSlice]
	secrets         kubeclient.Resource[*corev1.Secret]
	leases          kubeclient.Resource[*coordinationv1.Lease]
	routes          kubeclient.Resource[*gatewayv1.GRPCRoute]
	grants          kubeclient.Resource[*gatewayv1beta1.ReferenceGrant]
	classes         kubeclient.Resource[*gatewayv1.GatewayClass]
	gateways        kubeclient.Resource[*gatewayv1.Gateway]
	policies        kubeclient.Resource[*v1alpha1.TrafficPolicy]
	backendPolicies kubeclient.Resource[*gatewayx.XBackendTrafficPolicy]
}

func newClient(cfg *rest.Config) (*client, error) {
	kc, err := kubeclient.New(cfg)
	if err != nil {
		return nil, err
	}
	groups := map[schema.GroupVersion]rest.Interface{}
	for _, gv := range []schema.GroupVersion{corev1.SchemeGroupVersion, discoveryv1.SchemeGroupVersion, coordinationv1.SchemeGroupVersion,
		gatewayv1.SchemeGroupVersion, gatewayv1beta1.SchemeGroupVersion, gatewayx.SchemeGroupVersion, v1alpha1.GroupVersion} {
		if groups[gv], err = kc.Group(gv); err != nil {
			return nil, err
		}
	}
	return &client{
		Client:   kc,
		services: kubeclient.NewResource(groups[corev1.SchemeGroupVersion], "services", func() *corev1.Service { return &corev1.Service{} }),
		slices: kubeclient.NewResource(groups[discoveryv1.SchemeGroupVersion], "endpointslices",
			func() *discoveryv1.EndpointSlice { return &discoveryv1.EndpointSlice{} }),
		secrets: kubeclient.NewResource(groups[corev1.SchemeGroupVersion], "secrets", func() *corev1.Secret { return &corev1.Secret{} }),
		leases: kubeclient.NewResource(groups[coordinationv1.SchemeGroupVersion], "leases",
			func() *coordinationv1.Lease { return &coordinationv1.Lease{} }),
		routes: kubeclient.NewResource(groups[gatewayv1.SchemeGroupVersion], "grpcroutes", func() *gatewayv1.GRPCRoute { return &gatewayv1.GRPCRoute{} }),
		grants: kubeclient.NewResource(groups[gatewayv1beta1.SchemeGroupVersion], "referencegrants",
			func() *gatewayv1beta1.ReferenceGrant { return &gatewayv1beta1.ReferenceGrant{} }),
		classes: kubeclient.NewResource(groups[gatewayv1.SchemeGroupVersion], "gatewayclasses",
			func() *gatewayv1.GatewayClass { return &gatewayv1.GatewayClass{} }),
		gateways: kubeclient.NewResource(groups[gatewayv1.SchemeGroupVersion], "gateways", func() *gatewayv1.Gateway { return &gatewayv1.Gateway{} }),
		policies: kubeclient.NewResource(groups[v1alpha1.GroupVersion], policyResource,
			func() *v1alpha1.TrafficPolicy { return &v1alpha1.TrafficPolicy{} }),
		backendPolicies: kubeclient.NewResource(groups[gatewayx.SchemeGroupVersion], backendPolicyResource,
			func() *gatewayx.XBackendTrafficPolicy { return &gatewayx.XBackendTrafficPolicy{} }),
	}, nil
}
