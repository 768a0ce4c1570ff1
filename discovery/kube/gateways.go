package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ballast-dev/ballast/discovery"
)

// gatewayInformers watch what a gateway serves besides routes and
// Services: GatewayClasses and Gateways (gateway.networking.k8s.io/v1)
// and the Secrets of type kubernetes.io/tls that listeners name for their
// certificates (only that type: a field selector, so no other Secret is
// ever read). It returns the informers' sync checks; it fails when the
// Gateway CRDs are not installed, which a gateway cannot run without.
func (s *Source) gatewayInformers(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	gc, err := gatewayclient.NewForConfig(rest.CopyConfig(s.cfg))
	if err != nil {
		return nil, fmt.Errorf("gateway api client: %w", err)
	}
	for _, r := range []string{"gatewayclasses", "gateways"} {
		if ok, err := served(gc, gatewayv1.GroupVersion.String(), r); err != nil {
			return nil, err
		} else if !ok {
			return nil, fmt.Errorf("the cluster does not serve %s.%s: install Gateway API's CRDs (deploy/gateway/gateway-api)", r, gatewayv1.GroupName)
		}
	}
	factory := gatewayinformers.NewSharedInformerFactoryWithOptions(gc, 0,
		gatewayinformers.WithNamespace(s.opts.Namespace),
		gatewayinformers.WithTransform(trimGatewayObject))
	var synced []cache.InformerSynced
	classes, err := factory.Gateway().V1().GatewayClasses().Informer().AddEventHandler(mirror(s.setClass, func(k discovery.Key) { s.reg.DeleteGatewayClass(k.Name) }))
	if err != nil {
		return nil, fmt.Errorf("watch gatewayclasses: %w", err)
	}
	gateways, err := factory.Gateway().V1().Gateways().Informer().AddEventHandler(mirror(s.setGateway, s.reg.DeleteGateway))
	if err != nil {
		return nil, fmt.Errorf("watch gateways: %w", err)
	}
	synced = append(synced, classes.HasSynced, gateways.HasSynced)
	start(func() { factory.Start(ctx.Done()); <-ctx.Done(); factory.Shutdown() })

	tlsOnly := fields.OneTermEqualSelector("type", string(corev1.SecretTypeTLS)).String()
	lw := cache.NewFilteredListWatchFromClient(c.core, "secrets", s.opts.Namespace, func(o *metav1.ListOptions) { o.FieldSelector = tlsOnly })
	secrets := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Secret{}, cache.SharedIndexInformerOptions{})
	if err := secrets.SetTransform(trimSecret); err != nil {
		return nil, err
	}
	sh, err := secrets.AddEventHandler(mirror(s.setSecret, s.reg.DeleteSecret))
	if err != nil {
		return nil, fmt.Errorf("watch secrets: %w", err)
	}
	synced = append(synced, sh.HasSynced)
	start(func() { secrets.RunWithContext(ctx) })
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
