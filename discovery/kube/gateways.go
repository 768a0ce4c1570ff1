package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
)

// gatewayInformers watch what a gateway serves besides routes and
// Services: GatewayClasses and Gateways (gateway.networking.k8s.io/v1)
// and the Secrets of type kubernetes.io/tls that listeners name for their
// certificates (only that type: a field selector, so no other Secret is
// ever read). It returns the informers' sync checks; it fails when the
// Gateway CRDs are not installed, which a gateway cannot run without.
func (s *Source) gatewayInformers(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	for _, r := range []string{"gatewayclasses", "gateways"} {
		if ok, err := c.Served(ctx, gatewayv1.SchemeGroupVersion, r); err != nil {
			return nil, err
		} else if !ok {
			return nil, fmt.Errorf("the cluster does not serve %s.%s: install Gateway API's CRDs (deploy/gateway/gateway-api)", r, gatewayv1.GroupName)
		}
	}
	// GatewayClasses are cluster-scoped: a namespaced source still reads
	// all of them, as Gateway API's informer factory did.
	classes, err := c.classes.Informer("", nil, trimGatewayObject)
	if err != nil {
		return nil, err
	}
	gateways, err := c.gateways.Informer(s.opts.Namespace, nil, trimGatewayObject)
	if err != nil {
		return nil, err
	}
	tlsOnly := fields.OneTermEqualSelector("type", string(corev1.SecretTypeTLS)).String()
	secrets, err := c.secrets.Informer(s.opts.Namespace, func(o *metav1.ListOptions) { o.FieldSelector = tlsOnly }, trimSecret)
	if err != nil {
		return nil, err
	}
	var synced []cache.InformerSynced
	for _, w := range []struct {
		resource string
		inf      cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{"gatewayclasses", classes, mirror(s.setClass, func(k discovery.Key) { s.reg.DeleteGatewayClass(k.Name) })},
		{"gateways", gateways, mirror(s.setGateway, s.reg.DeleteGateway)},
		{"secrets", secrets, mirror(s.setSecret, s.reg.DeleteSecret)},
	} {
		h, err := w.inf.AddEventHandler(w.handler)
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", w.resource, err)
		}
		synced = append(synced, h.HasSynced)
		start(func() { w.inf.RunWithContext(ctx) })
	}
	return synced, nil
}

func (s *Source) setClass(obj any) {
	if c, ok := obj.(*gatewayv1.GatewayClass); ok {
		s.reg.SetGatewayClass(c)
	}
}

func (s *Source) setGateway(obj any) {
	if g, ok := obj.(*gatewayv1.Gateway); ok {
		s.reg.SetGateway(g)
	}
}

func (s *Source) setSecret(obj any) {
	if sec, ok := obj.(*corev1.Secret); ok {
		s.reg.SetSecret(sec)
	}
}

// trimGatewayObject keeps of GatewayClasses and Gateways what a gateway
// reads: identity, generation and spec. Status is written from the
// gateway's view, never read back from the cache.
func trimGatewayObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *gatewayv1.GatewayClass:
		o.ObjectMeta = withGeneration(o.ObjectMeta)
		o.Status = gatewayv1.GatewayClassStatus{}
	case *gatewayv1.Gateway:
		o.ObjectMeta = withGeneration(o.ObjectMeta)
		o.Status = gatewayv1.GatewayStatus{}
	}
	return obj, nil
}

// trimSecret keeps a TLS Secret's identity, type and data.
func trimSecret(obj any) (any, error) {
	if sec, ok := obj.(*corev1.Secret); ok {
		sec.ObjectMeta = trimMeta(sec.ObjectMeta)
	}
	return obj, nil
}

// withGeneration is trimMeta and the generation, which status observes.
func withGeneration(m metav1.ObjectMeta) metav1.ObjectMeta {
	out := trimMeta(m)
	out.Generation = m.Generation
	return out
}
