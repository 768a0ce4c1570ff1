package discovery

import (
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"google.golang.org/grpc/codes"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/policy"
)

// The TrafficPolicy semantics (GEP-713 direct attachment), in one place:
// what a policy's spec asks of calls in the policy model, which target it
// attaches to, which of two policies on one target wins, and the status
// that says what came of it.

// TrafficPolicy defaults where the spec leaves a field out.
const (
	// defaultBudgetPercent and defaultBudgetInterval are Gateway API's
	// RetryConstraint defaults.
	defaultBudgetPercent  = 20
	defaultBudgetInterval = 10 * time.Second
)

// CallPolicyOf is what a valid TrafficPolicy spec asks of each call in
// the policy model. Retry needs attempts above 0 (absent means 1) and
// codes (absent means Unavailable): retry.attempts: 0 retries nothing.
func CallPolicyOf(s *v1alpha1.TrafficPolicySpec) policy.CallPolicy {
	var out policy.CallPolicy
	if r := s.RateLimit; r != nil {
		out.RateLimit = &policy.RateLimit{RequestsPerSecond: int(r.RequestsPerSecond), Burst: 1}
		if r.Burst != nil {
			out.RateLimit.Burst = int(*r.Burst)
		}
	}
	if f := s.Fault; f != nil {
		// A delay of 0 delays nothing: the model leaves it out, as the
		// xDS form does.
		fault := &policy.Fault{}
		if d := f.Delay; d != nil {
			if fault.Delay, _ = v1alpha1.ParseDuration(d.Fixed); fault.Delay > 0 {
				fault.DelayPercent = int(d.Percent)
			}
		}
		if a := f.Abort; a != nil {
			fault.AbortCode = codes.Code(v1alpha1.Codes[a.Code])
			fault.AbortPercent = int(a.Percent)
		}
		if fault.Delay > 0 || fault.AbortCode != 0 {
			out.Fault = fault
		}
	}
	if t := s.Timeouts; t != nil {
		if t.Request != nil {
			out.Timeout, _ = v1alpha1.ParseDuration(*t.Request)
		}
		if t.BackendRequest != nil {
			out.TryTimeout, _ = v1alpha1.ParseDuration(*t.BackendRequest)
		}
	}
	r := s.Retry
	if r == nil || (r.Attempts != nil && *r.Attempts == 0) {
		return out
	}
	retry := &policy.Retry{Attempts: 1}
	if r.Attempts != nil {
		retry.Attempts = int(*r.Attempts)
	}
	for _, name := range r.Codes {
		c := codes.Code(v1alpha1.Codes[name])
		if !slices.Contains(retry.Codes, c) {
			retry.Codes = append(retry.Codes, c)
		}
	}
	if len(retry.Codes) == 0 {
		retry.Codes = []codes.Code{codes.Unavailable}
	}
	slices.Sort(retry.Codes)
	if r.Backoff != nil {
		retry.Backoff, _ = v1alpha1.ParseDuration(*r.Backoff)
	}
	if r.Budget != nil {
		retry.Budget = budgetOf(r.Budget)
	}
	out.Retry = retry
	return out
}

// budgetOf is the model of a valid retry budget (RetryConstraint's shape,
// whether a TrafficPolicy's retry.budget or an XBackendTrafficPolicy's
// retryConstraint), with Gateway API's defaults.
func budgetOf(b *v1alpha1.RetryBudget) *policy.RetryBudget {
	budget := &policy.RetryBudget{Percent: defaultBudgetPercent, Interval: defaultBudgetInterval}
	if b.Percent != nil {
		budget.Percent = int(*b.Percent)
	}
	if b.Interval != nil {
		budget.Interval, _ = v1alpha1.ParseDuration(*b.Interval)
	}
	if m := b.MinRetryRate; m != nil && m.Count != nil {
		// The model counts the retries always allowed per budget
		// interval: a rate per another interval is scaled to it.
		per := budget.Interval
		if m.Interval != nil {
			per, _ = v1alpha1.ParseDuration(*m.Interval)
		}
		if per > 0 {
			budget.MinRetries = int(int64(*m.Count) * int64(budget.Interval) / int64(per))
		}
	}
	return budget
}

// BalancingOf is the balancing policy a valid TrafficPolicy spec asks
// for (LB and HashHeader); nil when it has no loadBalancer.
func BalancingOf(s *v1alpha1.TrafficPolicySpec) *policy.Cluster {
	lb := s.LoadBalancer
	if lb == nil {
		return nil
	}
	out := &policy.Cluster{LB: policy.LB(lb.Policy)}
	if lb.HashHeader != nil {
		out.HashHeader = *lb.HashHeader
	}
	return out
}

// policyTarget is what a targetRef names: a Service, a GRPCRoute (every
// rule) or one rule of a GRPCRoute by its name (section).
type policyTarget struct {
	kind    string // "Service" or "GRPCRoute"
	key     Key
	section string
}

func (t policyTarget) String() string {
	s := t.kind + " " + t.key.String()
	if t.section != "" {
		s += " rule " + t.section
	}
	return s
}

func targetOf(p *v1alpha1.TrafficPolicy, r gatewayv1.LocalPolicyTargetReferenceWithSectionName) policyTarget {
	t := policyTarget{kind: string(r.Kind), key: Key{Namespace: p.Namespace, Name: string(r.Name)}}
	if r.SectionName != nil {
		t.section = string(*r.SectionName)
	}
	return t
}

// olderPolicy orders policies as GEP-713 resolves conflicts: the older
// wins, then the first by namespace/name.
func olderPolicy(a, b *v1alpha1.TrafficPolicy) int {
	if c := a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time); c != 0 {
		return c
	}
	return compareKeys(Key{a.Namespace, a.Name}, Key{b.Namespace, b.Name})
}

// attachments is which policy applies to each target: of the policies
// served, the oldest that names it.
func attachments(served []*v1alpha1.TrafficPolicy) map[policyTarget]*v1alpha1.TrafficPolicy {
	out := map[policyTarget]*v1alpha1.TrafficPolicy{}
	for _, p := range served {
		for _, r := range p.Spec.TargetRefs {
			t := targetOf(p, r)
			if cur, ok := out[t]; !ok || olderPolicy(p, cur) < 0 {
				out[t] = p
			}
		}
	}
	return out
}

// policyNotices say which fields of a spec some modes do not honour
// (policy.Capabilities), each named by its path.
func policyNotices(s *v1alpha1.TrafficPolicySpec) []string {
	var notes []string
	add := func(f policy.Feature, where string) {
		if n := f.Notice(where); n != "" {
			notes = append(notes, n)
		}
	}
	if s.Timeouts != nil && s.Timeouts.BackendRequest != nil {
		add(policy.PerTryTimeout, "spec.timeouts.backendRequest")
	}
	if r := s.Retry; r != nil {
		for i, name := range r.Codes {
			if !slices.Contains(policy.ProxylessRetryCodes, codes.Code(v1alpha1.Codes[name])) {
				add(policy.RetryCodes, fmt.Sprintf("spec.retry.codes[%d] (%s)", i, name))
			}
		}
		if r.Budget != nil {
			add(policy.BudgetedRetry, "spec.retry.budget")
		}
	}
	if s.RateLimit != nil {
		add(policy.RateLimited, "spec.rateLimit")
	}
	return notes
}

// policyAccepted is a policy's Accepted condition, of generation gen.
func policyAccepted(ok bool, reason gatewayv1.PolicyConditionReason, msg string, gen int64) metav1.Condition {
	status := metav1.ConditionTrue
	if !ok {
		status = metav1.ConditionFalse
	}
	return metav1.Condition{Type: string(gatewayv1.PolicyConditionAccepted), Status: status, Reason: string(reason),
		Message: truncate(msg), ObservedGeneration: gen}
}

// PolicyStatus is what Ballast says of the TrafficPolicy k: the version
// its source last wrote, and a PolicyAncestorStatus under ControllerName
// for each of its targetRefs (the target as ancestorRef), with condition
// Accepted: reason Accepted (its message naming the fields some modes do
// not honour), Invalid, TargetNotFound or Conflicted. ok is false when the
// registry has no such policy.
func (r *Registry) PolicyStatus(k Key) (p *v1alpha1.TrafficPolicy, ancestors []gatewayv1.PolicyAncestorStatus, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.policies[k]
	if !ok {
		return nil, nil, false
	}
	p = e.current
	cond := func(ok bool, reason gatewayv1.PolicyConditionReason, msg string) metav1.Condition {
		return policyAccepted(ok, reason, msg, p.Generation)
	}
	seen := map[policyTarget]bool{}
	for _, ref := range p.Spec.TargetRefs {
		t := targetOf(p, ref)
		if seen[t] {
			continue
		}
		seen[t] = true
		group, kind, ns := ref.Group, ref.Kind, gatewayv1.Namespace(p.Namespace)
		anc := gatewayv1.PolicyAncestorStatus{
			AncestorRef:    gatewayv1.ParentReference{Group: &group, Kind: &kind, Namespace: &ns, Name: ref.Name, SectionName: ref.SectionName},
			ControllerName: ControllerName,
		}
		var c metav1.Condition
		switch winner := r.attached[t]; {
		case e.invalid != nil:
			msg := e.invalidMessage("clients keep")
			c = cond(false, gatewayv1.PolicyReasonInvalid, msg)
		case !r.targetExistsLocked(t):
			c = cond(false, gatewayv1.PolicyReasonTargetNotFound, fmt.Sprintf("target %s does not exist", t))
		case winner != nil && (winner.Namespace != p.Namespace || winner.Name != p.Name):
			c = cond(false, gatewayv1.PolicyReasonConflicted, fmt.Sprintf(
				"TrafficPolicy %s/%s, older, applies to %s: of two policies on one target the older wins (GEP-713)", winner.Namespace, winner.Name, t))
		default:
			notes := append([]string{"accepted"}, policyNotices(&e.served.Spec)...)
			if n := r.backendBudgetNoticeLocked(&e.served.Spec, t); n != "" {
				notes = append(notes, n)
			}
			c = cond(true, gatewayv1.PolicyReasonAccepted, strings.Join(append(notes, clusterNotices(&e.served.Spec, t)...), "; "))
		}
		anc.Conditions = []metav1.Condition{c}
		ancestors = append(ancestors, anc)
	}
	return p, ancestors, true
}

// targetExistsLocked reports whether the registry holds t: the Service,
// the GRPCRoute, or a rule of that name in it.
func (r *Registry) targetExistsLocked(t policyTarget) bool {
	switch t.kind {
	case "Service":
		_, ok := r.services[t.key]
		return ok
	case "GRPCRoute":
		e, ok := r.routes[t.key]
		if !ok {
			return false
		}
		if t.section == "" {
			return true
		}
		return slices.ContainsFunc(e.current.Spec.Rules, func(rule gatewayv1.GRPCRouteRule) bool {
			return rule.Name != nil && string(*rule.Name) == t.section
		})
	}
	return false
}
