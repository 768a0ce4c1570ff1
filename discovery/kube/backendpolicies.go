package kube

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ballast-dev/ballast/discovery"
)

// backendPolicyResource is XBackendTrafficPolicy's resource name, in
// Gateway API's experimental group (its experimental channel's CRD).
const backendPolicyResource = "xbackendtrafficpolicies"

// backendPolicyInformer watches XBackendTrafficPolicies, when the cluster
// serves them and the source may list them, and writes them to the
// registry as they come. Most clusters do not serve them: the CRD is in
// Gateway API's experimental channel only. And a cluster may have it (from
// another implementation's install) while Ballast's RBAC predates it: an
// informer that cannot list would keep the source from ever syncing.
// Either way the source reads everything else as before and looks again
// every crdPoll, so a CRD (or a permission) that comes later is picked up.
// It returns the informer's sync check; none while it cannot read them.
func (s *Source) backendPolicyInformer(ctx context.Context, start func(func())) ([]cache.InformerSynced, error) {
	gc, err := gatewayclient.NewForConfig(rest.CopyConfig(s.cfg))
	if err != nil {
		return nil, fmt.Errorf("gateway api client: %w", err)
	}
	if why, err := s.backendPoliciesReadable(ctx, gc); err != nil {
		return nil, err
	} else if why != "" {
		s.log.Info("not reading XBackendTrafficPolicies until this changes", "reason", why, "group", gatewayx.GroupVersion.String())
		start(func() { s.awaitBackendPolicies(ctx, gc, start) })
		return nil, nil
	}
	return s.watchBackendPolicies(ctx, gc, start)
}

// backendPoliciesReadable says why the source cannot read
// XBackendTrafficPolicies now: the API server does not serve them, or the
// source may not (or cannot) list them; empty when it can. Only a failed
// discovery is an error, as it is for every other kind the source reads.
func (s *Source) backendPoliciesReadable(ctx context.Context, gc gatewayclient.Interface) (string, error) {
	if ok, err := served(gc, gatewayx.GroupVersion.String(), backendPolicyResource); err != nil {
		return "", err
	} else if !ok {
		return "the XBackendTrafficPolicy CRD is not installed", nil
	}
	_, err := gc.ExperimentalV1alpha1().XBackendTrafficPolicies(s.opts.Namespace).List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case apierrors.IsForbidden(err):
		return "forbidden to list them (RBAC: get, list and watch on xbackendtrafficpolicies." + gatewayx.GroupName + ")", nil
	case err != nil:
		return fmt.Sprintf("cannot list them: %v", err), nil
	}
	return "", nil
}

// awaitBackendPolicies watches XBackendTrafficPolicies once the source
// can read them.
func (s *Source) awaitBackendPolicies(ctx context.Context, gc gatewayclient.Interface, start func(func())) {
	t := time.NewTicker(crdPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if why, err := s.backendPoliciesReadable(ctx, gc); err != nil || why != "" {
			continue
		}
		s.log.Info("reading XBackendTrafficPolicies")
		if _, err := s.watchBackendPolicies(ctx, gc, start); err != nil {
			s.log.Error("cannot watch XBackendTrafficPolicies", "err", err)
		}
		return
	}
}

func (s *Source) watchBackendPolicies(ctx context.Context, gc gatewayclient.Interface, start func(func())) ([]cache.InformerSynced, error) {
	factory := gatewayinformers.NewSharedInformerFactoryWithOptions(gc, 0,
		gatewayinformers.WithNamespace(s.opts.Namespace),
		gatewayinformers.WithTransform(trimBackendPolicy))
	h, err := factory.Experimental().V1alpha1().XBackendTrafficPolicies().Informer().AddEventHandler(mirror(s.reg.SetBackendPolicy, s.reg.DeleteBackendPolicy))
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", backendPolicyResource, err)
	}
	start(func() { factory.Start(ctx.Done()); <-ctx.Done(); factory.Shutdown() })
	return []cache.InformerSynced{h.HasSynced}, nil
}

// trimBackendPolicy keeps of an XBackendTrafficPolicy what the registry
// reads: identity, generation, creation time (the older of two wins) and
// spec. Status is written from the registry's view, never read back from
// the cache.
func trimBackendPolicy(obj any) (any, error) {
	if p, ok := obj.(*gatewayx.XBackendTrafficPolicy); ok {
		p.ObjectMeta = metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Generation: p.Generation, CreationTimestamp: p.CreationTimestamp}
		p.Status = gatewayv1.PolicyStatus{}
	}
	return obj, nil
}

// syncBackendPolicy writes one XBackendTrafficPolicy's status.ancestors
// if it differs from what the API holds, as syncPolicy does a
// TrafficPolicy's.
func (w *StatusWriter) syncBackendPolicy(ctx context.Context, gc gatewayclient.Interface, k discovery.Key) error {
	_, ancestors, ok := w.reg.BackendPolicyStatus(k)
	if !ok {
		return nil // deleted
	}
	c := gc.ExperimentalV1alpha1().XBackendTrafficPolicies(k.Namespace)
	p, err := c.Get(ctx, k.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil // not from the API (a file), or deleted meanwhile
	}
	if err != nil {
		return err
	}
	next := mergeAncestors(p.Status.Ancestors, ancestors, metav1.Now())
	if equality.Semantic.DeepEqual(next, p.Status.Ancestors) {
		return nil
	}
	p.Status.Ancestors = next
	if _, err := c.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	w.log.Debug("policy status written", "xbackendtrafficpolicy", k.String(), "generation", p.Generation)
	return nil
}
