package discovery

import (
	"maps"
	"slices"

	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
)

// SetBackendPolicy stores an XBackendTrafficPolicy, replacing any earlier
// version, as SetPolicy does a TrafficPolicy: one that does not validate
// (ValidateBackendPolicy) is kept for its status while its last valid
// version goes on applying. Consumers must not modify p.
func (r *Registry) SetBackendPolicy(p *gatewayx.XBackendTrafficPolicy) {
	k := objectKey(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, changed := nextVersion(r.backendPolicies[k], p, backendPolicySpec, ValidateBackendPolicy)
	if !changed {
		return
	}
	r.backendPolicies[k] = e
	r.backendPoliciesChangedLocked()
}

// DeleteBackendPolicy forgets an XBackendTrafficPolicy.
func (r *Registry) DeleteBackendPolicy(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.backendPolicies[k]; !ok {
		return
	}
	delete(r.backendPolicies, k)
	r.backendPoliciesChangedLocked()
	notify(r.backendPolicySubs, []Key{k})
}

// BackendPolicies lists the XBackendTrafficPolicies the registry holds, as
// their sources last wrote them, sorted by key.
func (r *Registry) BackendPolicies() []*gatewayx.XBackendTrafficPolicy {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*gatewayx.XBackendTrafficPolicy, 0, len(r.backendPolicies))
	for _, e := range r.backendPolicies {
		out = append(out, e.current)
	}
	sortByKey(out)
	return out
}

func backendPolicySpec(p *gatewayx.XBackendTrafficPolicy) any { return p.Spec }

// SubscribeBackendPolicies returns a subscription that collects the keys
// of the XBackendTrafficPolicies whose status (BackendPolicyStatus) may
// have changed: the policy itself, another on one of its Services, a
// TrafficPolicy, or a Service appearing or going.
func (r *Registry) SubscribeBackendPolicies() *Subscription {
	sub := &Subscription{r: r, ready: make(chan struct{}, 1), pending: map[Key]struct{}{}}
	r.mu.Lock()
	r.backendPolicySubs[sub] = struct{}{}
	r.mu.Unlock()
	return sub
}

// backendPoliciesChangedLocked recomputes which XBackendTrafficPolicy
// applies to each Service and re-resolves the Services whose policy
// changed. The status of every TrafficPolicy may change with it (its
// message names the budget an XBackendTrafficPolicy gives it).
func (r *Registry) backendPoliciesChangedLocked() {
	var served []*gatewayx.XBackendTrafficPolicy
	for _, e := range r.backendPolicies {
		if e.served != nil {
			served = append(served, e.served)
		}
	}
	next := backendAttachments(served)
	affected := map[Key]bool{}
	for k, p := range r.backendAttached {
		if next[k] != p {
			affected[k] = true
		}
	}
	for k, p := range next {
		if r.backendAttached[k] != p {
			affected[k] = true
		}
	}
	r.backendAttached = next
	r.reresolveLocked(affected)
	notify(r.backendPolicySubs, slices.Collect(maps.Keys(r.backendPolicies)))
	r.notifyPoliciesLocked(slices.Collect(maps.Keys(r.policies)))
}

// notify tells each subscription of subs that keys changed.
func notify(subs map[*Subscription]struct{}, keys []Key) {
	if len(keys) == 0 {
		return
	}
	for sub := range subs {
		for _, k := range keys {
			sub.add(k)
		}
	}
}
