package kube

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

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
func (s *Source) backendPolicyInformer(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	if why, err := s.backendPoliciesReadable(ctx, c); err != nil {
		return nil, err
	} else if why != "" {
		s.log.Info("not reading XBackendTrafficPolicies until this changes", "reason", why, "group", gatewayx.GroupVersion.String())
		start(func() { s.awaitBackendPolicies(ctx, c, start) })
		return nil, nil
	}
	return s.watchBackendPolicies(ctx, c, start)
}

// backendPoliciesReadable says why the source cannot read
// XBackendTrafficPolicies now: the API server does not serve them, or the
// source may not (or cannot) list them; empty when it can. Only a failed
// discovery is an error, as it is for every other kind the source reads.
func (s *Source) backendPoliciesReadable(ctx context.Context, c *client) (string, error) {
	if ok, err := c.Served(ctx, gatewayx.SchemeGroupVersion, backendPolicyResource); err != nil {
		return "", err
	} else if !ok {
		return "the XBackendTrafficPolicy CRD is not installed", nil
	}
	err := c.backendPolicies.List(ctx, s.opts.Namespace, metav1.ListOptions{Limit: 1}, &gatewayx.XBackendTrafficPolicyList{})
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
func (s *Source) awaitBackendPolicies(ctx context.Context, c *client, start func(func())) {
	t := time.NewTicker(crdPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if why, err := s.backendPoliciesReadable(ctx, c); err != nil || why != "" {
			continue
		}
		s.log.Info("reading XBackendTrafficPolicies")
		if _, err := s.watchBackendPolicies(ctx, c, start); err != nil {
			s.log.Error("cannot watch XBackendTrafficPolicies", "err", err)
		}
		return
	}
}

func (s *Source) watchBackendPolicies(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	inf, err := c.backendPolicies.Informer(s.opts.Namespace, nil, trimBackendPolicy)
	if err != nil {
		return nil, err
	}
	h, err := inf.AddEventHandler(mirror(s.reg.SetBackendPolicy, s.reg.DeleteBackendPolicy))
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", backendPolicyResource, err)
	}
	start(func() { inf.RunWithContext(ctx) })
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
func (w *StatusWriter) syncBackendPolicy(ctx context.Context, c *client, k discovery.Key) error {
	_, ancestors, ok := w.reg.BackendPolicyStatus(k)
	if !ok {
		return nil // deleted
	}
	p, err := c.backendPolicies.Get(ctx, k.Namespace, k.Name)
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
	if _, err := c.backendPolicies.UpdateStatus(ctx, k.Namespace, k.Name, p); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	w.log.Debug("policy status written", "xbackendtrafficpolicy", k.String(), "generation", p.Generation)
	return nil
}
