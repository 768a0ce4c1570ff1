package kube

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
)

// policyResource is TrafficPolicy's resource name, in ballast.dev/v1alpha1.
const policyResource = "trafficpolicies"

// policyInformer watches TrafficPolicies and writes them to the registry
// as they come, as the route informers do GRPCRoutes; the registry
// re-resolves the Services they touch. A cluster without the CRD has no
// policies until it is installed (looked for every crdPoll). It returns
// the informer's sync check; none when the CRD is missing.
func (s *Source) policyInformer(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	if ok, err := c.Served(ctx, v1alpha1.GroupVersion, policyResource); err != nil {
		return nil, err
	} else if !ok {
		s.log.Info("the TrafficPolicy CRD is not installed: no policies until it is", "group", v1alpha1.GroupVersion.String())
		start(func() { s.awaitPolicies(ctx, c, start) })
		return nil, nil
	}
	return s.watchPolicies(ctx, c, start)
}

// awaitPolicies watches policies once the TrafficPolicy CRD is served.
func (s *Source) awaitPolicies(ctx context.Context, c *client, start func(func())) {
	t := time.NewTicker(crdPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ok, err := c.Served(ctx, v1alpha1.GroupVersion, policyResource); err != nil || !ok {
			continue
		}
		s.log.Info("the TrafficPolicy CRD is installed: reading policies")
		if _, err := s.watchPolicies(ctx, c, start); err != nil {
			s.log.Error("cannot watch policies", "err", err)
		}
		return
	}
}

func (s *Source) watchPolicies(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	inf, err := c.policies.Informer(s.opts.Namespace, nil, trimPolicy)
	if err != nil {
		return nil, err
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
