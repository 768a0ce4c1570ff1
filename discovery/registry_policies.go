package discovery

import (
	"maps"
	"slices"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/policy"
)

// SetPolicy stores a TrafficPolicy, replacing any earlier version. A
// policy whose spec does not Validate is kept for its status, but the
// last valid version of it (none if it never had one) goes on applying.
// The Services whose calls it changes get new snapshots. Consumers must
// not modify p.
func (r *Registry) SetPolicy(p *v1alpha1.TrafficPolicy) {
	k := objectKey(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, changed := nextVersion(r.policies[k], p, policySpec, validatePolicy)
	if !changed {
		return
	}
	r.policies[k] = e
	r.policiesChangedLocked()
}

// DeletePolicy forgets a TrafficPolicy.
func (r *Registry) DeletePolicy(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.policies[k]; !ok {
		return
	}
	delete(r.policies, k)
	r.policiesChangedLocked()
	r.notifyPoliciesLocked([]Key{k})
}

// Policies lists the TrafficPolicies the registry holds, as their
// sources last wrote them, sorted by key.
func (r *Registry) Policies() []*v1alpha1.TrafficPolicy {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*v1alpha1.TrafficPolicy, 0, len(r.policies))
	for _, e := range r.policies {
		out = append(out, e.current)
	}
	sortByKey(out)
	return out
}

func policySpec(p *v1alpha1.TrafficPolicy) any       { return p.Spec }
func validatePolicy(p *v1alpha1.TrafficPolicy) error { return p.Spec.Validate() }

// SubscribePolicies returns a subscription that collects the keys of the
// TrafficPolicies whose status (PolicyStatus) may have changed: the
// policy itself, another on one of its targets, or a target appearing or
// going.
func (r *Registry) SubscribePolicies() *Subscription {
	sub := &Subscription{r: r, ready: make(chan struct{}, 1), pending: map[Key]struct{}{}}
	r.mu.Lock()
	r.policySubs[sub] = struct{}{}
	r.mu.Unlock()
	return sub
}

// policiesChangedLocked recomputes which policy applies to each target
// and re-resolves the Services whose calls that changes: a Service
// target's, and every parent of a GRPCRoute target.
func (r *Registry) policiesChangedLocked() {
	var served []*v1alpha1.TrafficPolicy
	for _, e := range r.policies {
		if e.served != nil {
			served = append(served, e.served)
		}
	}
	next := attachments(served)
	affected := map[Key]bool{}
	for _, t := range slices.Collect(maps.Keys(r.attached)) {
		if next[t] != r.attached[t] {
			r.targetServicesLocked(t, affected)
		}
	}
	for t, p := range next {
		if r.attached[t] != p {
			r.targetServicesLocked(t, affected)
		}
	}
	r.attached = next
	r.reresolveLocked(affected)
	r.notifyPoliciesLocked(slices.Collect(maps.Keys(r.policies)))
	// An XBackendTrafficPolicy's status says whether a TrafficPolicy
	// overrides it.
	notify(r.backendPolicySubs, slices.Collect(maps.Keys(r.backendPolicies)))
}

// targetServicesLocked adds the Services whose calls a policy on t
// changes.
func (r *Registry) targetServicesLocked(t policyTarget, into map[Key]bool) {
	switch t.kind {
	case "Service":
		into[t.key] = true
	case "GRPCRoute":
		if e, ok := r.routes[t.key]; ok && e.served != nil {
			parentsOf(e.served, into)
		}
	}
}

// serviceCallLocked is the call policy of the TrafficPolicy attached to
// the Service k, its retries bounded by the Service's
// XBackendTrafficPolicy when the TrafficPolicy has no budget; the zero
// CallPolicy if no TrafficPolicy is attached.
func (r *Registry) serviceCallLocked(k Key) policy.CallPolicy {
	t := policyTarget{kind: "Service", key: k}
	if p, ok := r.attached[t]; ok {
		return withBudget(bucketed(CallPolicyOf(&p.Spec), t), r.serviceBudgetLocked(k))
	}
	return policy.CallPolicy{}
}

// serviceBalancingLocked is the balancing policy of the TrafficPolicy
// attached to the Service k; nil if none is or it has no loadBalancer.
func (r *Registry) serviceBalancingLocked(k Key) *policy.Cluster {
	if p, ok := r.attached[policyTarget{kind: "Service", key: k}]; ok {
		return BalancingOf(&p.Spec)
	}
	return nil
}

// bucketed names c's rate-limit bucket by the target the policy is
// attached to, so that every rule the target covers shares one bucket.
func bucketed(c policy.CallPolicy, t policyTarget) policy.CallPolicy {
	if c.RateLimit != nil {
		c.RateLimit.Bucket = t.String()
	}
	return c
}

func (r *Registry) notifyPoliciesLocked(keys []Key) { notify(r.policySubs, keys) }

// targetsChangedLocked tells policy subscribers that a Service or a
// GRPCRoute appeared, went or changed its rules: a policy naming it may
// have found or lost its target.
func (r *Registry) targetsChangedLocked() {
	if len(r.policySubs) > 0 && len(r.policies) > 0 {
		r.notifyPoliciesLocked(slices.Collect(maps.Keys(r.policies)))
	}
	if len(r.backendPolicySubs) > 0 && len(r.backendPolicies) > 0 {
		notify(r.backendPolicySubs, slices.Collect(maps.Keys(r.backendPolicies)))
	}
}

// serviceBudget is the retry budget the XBackendTrafficPolicy attached
// to the Service k sets; nil if none does.
func (v registryView) serviceBudget(k Key) *policy.RetryBudget { return v.r.serviceBudgetLocked(k) }

// ruleCall is the call policy of the TrafficPolicy attached to rule name
// (its sectionName) of the GRPCRoute route, else to the whole route; ok
// is false when neither has one.
func (v registryView) ruleCall(route Key, name string) (policy.CallPolicy, bool) {
	if name != "" {
		t := policyTarget{kind: "GRPCRoute", key: route, section: name}
		if p, ok := v.r.attached[t]; ok {
			return bucketed(CallPolicyOf(&p.Spec), t), true
		}
	}
	t := policyTarget{kind: "GRPCRoute", key: route}
	if p, ok := v.r.attached[t]; ok {
		return bucketed(CallPolicyOf(&p.Spec), t), true
	}
	return policy.CallPolicy{}, false
}
