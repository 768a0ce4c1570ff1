package kube

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ballast-dev/ballast/api/v1alpha1"
)

// policyResource is TrafficPolicy's resource name.
const policyResource = "trafficpolicies"

// policyClient is a REST client of ballast.dev/v1alpha1 (JSON: a CRD's
// objects have no protobuf form). There is no generated clientset: the
// API group has one kind.
func policyClient(cfg *rest.Config) (rest.Interface, error) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("register %s: %w", v1alpha1.GroupVersion, err)
	}
	c := rest.CopyConfig(cfg)
	c.APIPath = "/apis"
	c.GroupVersion = &v1alpha1.GroupVersion
	c.NegotiatedSerializer = serializer.NewCodecFactory(s).WithoutConversion()
	c.ContentType = runtime.ContentTypeJSON
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", v1alpha1.GroupVersion, err)
	}
	return rc, nil
}

// policyInformer watches TrafficPolicies and writes them to the registry
// as they come, as the route informers do GRPCRoutes; the registry
// re-resolves the Services they touch. A cluster without the CRD has no
// policies until it is installed (looked for every crdPoll). It returns
// the informer's sync check; none when the CRD is missing.
func (s *Source) policyInformer(ctx context.Context, start func(func())) ([]cache.InformerSynced, error) {
	gc, err := gatewayclient.NewForConfig(rest.CopyConfig(s.cfg))
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	if ok, err := served(gc, v1alpha1.GroupVersion.String(), policyResource); err != nil {
		return nil, err
	} else if !ok {
		s.log.Info("the TrafficPolicy CRD is not installed: no policies until it is", "group", v1alpha1.GroupVersion.String())
		start(func() { s.awaitPolicies(ctx, gc, start) })
		return nil, nil
	}
	return s.watchPolicies(ctx, start)
}

// awaitPolicies watches policies once the TrafficPolicy CRD is served.
func (s *Source) awaitPolicies(ctx context.Context, gc gatewayclient.Interface, start func(func())) {
	t := time.NewTicker(crdPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ok, err := served(gc, v1alpha1.GroupVersion.String(), policyResource); err != nil || !ok {
			continue
		}
		s.log.Info("the TrafficPolicy CRD is installed: reading policies")
		if _, err := s.watchPolicies(ctx, start); err != nil {
			s.log.Error("cannot watch policies", "err", err)
		}
		return
	}
}

func (s *Source) watchPolicies(ctx context.Context, start func(func())) ([]cache.InformerSynced, error) {
	rc, err := policyClient(s.cfg)
	if err != nil {
		return nil, err
	}
	lw := cache.NewFilteredListWatchFromClient(rc, policyResource, s.opts.Namespace, func(*metav1.ListOptions) {})
	inf := cache.NewSharedIndexInformerWithOptions(lw, &v1alpha1.TrafficPolicy{}, cache.SharedIndexInformerOptions{})
	if err := inf.SetTransform(trimPolicy); err != nil {
		return nil, fmt.Errorf("informer on %s: %w", policyResource, err)
	}
	h, err := inf.AddEventHandler(mirror(s.reg.SetPolicy, s.reg.DeletePolicy))
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", policyResource, err)
	}
	start(func() { inf.RunWithContext(ctx) })
	return []cache.InformerSynced{h.HasSynced}, nil
}

// trimPolicy keeps of a TrafficPolicy what the registry reads: identity,
// generation, creation time (the older of two wins) and spec. Status is
// written from the registry's view, never read back from the cache.
func trimPolicy(obj any) (any, error) {
	if p, ok := obj.(*v1alpha1.TrafficPolicy); ok {
		p.ObjectMeta = metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Generation: p.Generation, CreationTimestamp: p.CreationTimestamp}
		p.Status = gatewayv1.PolicyStatus{}
	}
	return obj, nil
}
