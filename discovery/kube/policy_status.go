package kube

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
)

// syncPolicy writes one TrafficPolicy's status.ancestors if it differs
// from what the API holds, as sync does a route's.
func (w *StatusWriter) syncPolicy(ctx context.Context, c *client, k discovery.Key) error {
	_, ancestors, ok := w.reg.PolicyStatus(k)
	if !ok {
		return nil // deleted
	}
	p, err := c.policies.Get(ctx, k.Namespace, k.Name)
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
	if _, err := c.policies.UpdateStatus(ctx, k.Namespace, k.Name, p); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	w.log.Debug("policy status written", "trafficpolicy", k.String(), "generation", p.Generation)
	return nil
}

// mergeAncestors is old with Ballast's entries replaced by ours, as
// mergeParents does a route's: other controllers' entries stay, and each
// condition keeps its last transition time while its status stays.
func mergeAncestors(old, ours []gatewayv1.PolicyAncestorStatus, now metav1.Time) []gatewayv1.PolicyAncestorStatus {
	return mergeStatuses(old, ours, now,
		func(a gatewayv1.PolicyAncestorStatus) bool { return a.ControllerName == discovery.ControllerName },
		func(a, b gatewayv1.PolicyAncestorStatus) bool {
			return equality.Semantic.DeepEqual(a.AncestorRef, b.AncestorRef)
		},
		func(a *gatewayv1.PolicyAncestorStatus) *[]metav1.Condition { return &a.Conditions })
}
