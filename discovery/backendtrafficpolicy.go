package discovery

import (
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/policy"
)

// The XBackendTrafficPolicy semantics (Gateway API's experimental
// gateway.networking.x-k8s.io/v1alpha1, GEP-3388), in one place. It maps
// onto the one policy model as a TrafficPolicy does, with less:
//   - its targets are Services (core group, kind Service); any other kind
//     is another implementation's business and is reported TargetNotFound;
//   - retryConstraint is a TrafficPolicy's retry.budget (the same shape):
//     it bounds the retries of the calls made to the Service, which a
//     TrafficPolicy's retry asks for (Gateway API's GRPCRoute has no retry
//     field): those on the Service and those on a rule of its routes;
//   - sessionPersistence is not honoured by any mode, and the Accepted
//     message says so.
// With a TrafficPolicy on the same Service the two merge field by field and
// the TrafficPolicy's field wins: its retry.budget, when it has one,
// overrides the retryConstraint (the TrafficPolicy is Ballast's own type,
// which states the retry and its budget together). Of two
// XBackendTrafficPolicies on one Service the older wins (GEP-713).

// XBackendTrafficPolicy defaults where the spec leaves a field out: the
// CRD's, so that --files reads a policy as the API server stores it.
const (
	defaultMinRetryCount    = 10
	defaultMinRetryInterval = time.Second
	maxBudgetInterval       = time.Hour
)

// ValidateBackendPolicy reports the first thing in an
// XBackendTrafficPolicy's spec that the experimental CRD would reject, or
// that Ballast cannot read, naming the field.
func ValidateBackendPolicy(p *gatewayx.XBackendTrafficPolicy) error {
	s := &p.Spec
	if len(s.TargetRefs) == 0 {
		return fmt.Errorf("spec.targetRefs: at least one target is required")
	}
	for i, r := range s.TargetRefs {
		if r.Name == "" || r.Kind == "" {
			return fmt.Errorf("spec.targetRefs[%d]: kind and name are required", i)
		}
	}
	rc := s.RetryConstraint
	if rc == nil {
		return nil
	}
	interval := func(path string, d *gatewayv1.Duration, least time.Duration) error {
		if d == nil {
			return nil
		}
		v, err := v1alpha1.ParseDuration(*d)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if v < least || v > maxBudgetInterval {
			return fmt.Errorf("%s: %s is outside %s..%s", path, v, least, maxBudgetInterval)
		}
		return nil
	}
	if b := rc.Budget; b != nil {
		if b.Percent != nil && (*b.Percent < 0 || *b.Percent > 100) {
			return fmt.Errorf("spec.retryConstraint.budget.percent: %d is outside 0..100", *b.Percent)
		}
		if err := interval("spec.retryConstraint.budget.interval", b.Interval, time.Second); err != nil {
			return err
		}
	}
	if m := rc.MinRetryRate; m != nil {
		if m.Count != nil && *m.Count < 0 {
			return fmt.Errorf("spec.retryConstraint.minRetryRate.count: %d is negative", *m.Count)
		}
		if err := interval("spec.retryConstraint.minRetryRate.interval", m.Interval, time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// BackendBudgetOf is the retry budget a valid XBackendTrafficPolicy spec
// sets, with the CRD's defaults (a budget of 20% over 10s, at least 10
// retries a second); nil when it has no retryConstraint.
func BackendBudgetOf(s *gatewayx.BackendTrafficPolicySpec) *policy.RetryBudget {
	rc := s.RetryConstraint
	if rc == nil {
		return nil
	}
	var b v1alpha1.RetryBudget
	if rc.Budget != nil {
		if rc.Budget.Percent != nil {
			b.Percent = ptrTo(int32(*rc.Budget.Percent))
		}
		b.Interval = rc.Budget.Interval
	}
	b.MinRetryRate = &v1alpha1.RequestRate{Count: ptrTo(int32(defaultMinRetryCount))}
	perSecond := gatewayv1.Duration(defaultMinRetryInterval.String())
	b.MinRetryRate.Interval = &perSecond
	if m := rc.MinRetryRate; m != nil {
		b.MinRetryRate = &v1alpha1.RequestRate{Interval: m.Interval}
		if m.Count != nil {
			b.MinRetryRate.Count = ptrTo(int32(*m.Count))
		}
	}
	return budgetOf(&b)
}

func ptrTo[T any](v T) *T { return &v }

// backendTarget is the Service a targetRef of an XBackendTrafficPolicy
// names; ok is false for any other kind.
func backendTarget(p *gatewayx.XBackendTrafficPolicy, r gatewayv1.LocalPolicyTargetReference) (k Key, ok bool) {
	return Key{Namespace: p.Namespace, Name: string(r.Name)}, r.Group == "" && r.Kind == "Service"
}

// olderBackendPolicy orders XBackendTrafficPolicies as GEP-713 resolves
// conflicts: the older wins, then the first by namespace/name.
func olderBackendPolicy(a, b *gatewayx.XBackendTrafficPolicy) int {
	if c := a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time); c != 0 {
		return c
	}
	return compareKeys(objectKey(a), objectKey(b))
}

// backendAttachments is which XBackendTrafficPolicy applies to each
// Service: of those served, the oldest that names it.
func backendAttachments(served []*gatewayx.XBackendTrafficPolicy) map[Key]*gatewayx.XBackendTrafficPolicy {
	out := map[Key]*gatewayx.XBackendTrafficPolicy{}
	for _, p := range served {
		for _, r := range p.Spec.TargetRefs {
			k, ok := backendTarget(p, r)
			if !ok {
				continue
			}
			if cur, ok := out[k]; !ok || olderBackendPolicy(p, cur) < 0 {
				out[k] = p
			}
		}
	}
	return out
}

// withBudget is c with the retry budget b when c retries without a budget
// of its own: a TrafficPolicy's retry.budget wins over an
// XBackendTrafficPolicy's retryConstraint.
func withBudget(c policy.CallPolicy, b *policy.RetryBudget) policy.CallPolicy {
	if b == nil || c.Retry == nil || c.Retry.Budget != nil {
		return c
	}
	r := *c.Retry
	budget := *b
	r.Budget = &budget
	c.Retry = &r
	return c
}

// serviceBudgetLocked is the retry budget of the XBackendTrafficPolicy
// attached to the Service k; nil if none is or it has no retryConstraint.
func (r *Registry) serviceBudgetLocked(k Key) *policy.RetryBudget {
	if p, ok := r.backendAttached[k]; ok {
		return BackendBudgetOf(&p.Spec)
	}
	return nil
}

// BackendPolicyStatus is what Ballast says of the XBackendTrafficPolicy
// k, as PolicyStatus says of a TrafficPolicy: a PolicyAncestorStatus under
// ControllerName for each of its targetRefs (the target as ancestorRef)
// with condition Accepted: reason Accepted (its message saying what came
// of each field: overridden by a TrafficPolicy, nothing to bound, not
// applied by some modes), Invalid, TargetNotFound (a Service that does not
// exist, or a kind other than Service) or Conflicted (an older one on the
// same Service). ok is false when the registry has no such policy.
func (r *Registry) BackendPolicyStatus(k Key) (p *gatewayx.XBackendTrafficPolicy, ancestors []gatewayv1.PolicyAncestorStatus, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.backendPolicies[k]
	if !ok {
		return nil, nil, false
	}
	p = e.current
	cond := func(ok bool, reason gatewayv1.PolicyConditionReason, msg string) metav1.Condition {
		return policyAccepted(ok, reason, msg, p.Generation)
	}
	seen := map[gatewayv1.LocalPolicyTargetReference]bool{}
	for _, ref := range p.Spec.TargetRefs {
		if seen[ref] {
			continue
		}
		seen[ref] = true
		group, kind, ns := ref.Group, ref.Kind, gatewayv1.Namespace(p.Namespace)
		anc := gatewayv1.PolicyAncestorStatus{
			AncestorRef:    gatewayv1.ParentReference{Group: &group, Kind: &kind, Namespace: &ns, Name: ref.Name},
			ControllerName: ControllerName,
		}
		svc, isService := backendTarget(p, ref)
		var c metav1.Condition
		switch winner := r.backendAttached[svc]; {
		case e.invalid != nil:
			msg := e.invalidMessage("clients keep")
			c = cond(false, gatewayv1.PolicyReasonInvalid, msg)
		case !isService:
			c = cond(false, gatewayv1.PolicyReasonTargetNotFound, fmt.Sprintf(
				"target group %q kind %s: Ballast applies an XBackendTrafficPolicy to core Services only", ref.Group, ref.Kind))
		case r.services[svc] == nil:
			c = cond(false, gatewayv1.PolicyReasonTargetNotFound, fmt.Sprintf("target Service %s does not exist", svc))
		case winner != nil && (winner.Namespace != p.Namespace || winner.Name != p.Name):
			c = cond(false, gatewayv1.PolicyReasonConflicted, fmt.Sprintf(
				"XBackendTrafficPolicy %s/%s, older, applies to Service %s: of two policies on one target the older wins (GEP-713)", winner.Namespace, winner.Name, svc))
		default:
			notes := append([]string{"accepted"}, r.backendNoticesLocked(&e.served.Spec, svc)...)
			c = cond(true, gatewayv1.PolicyReasonAccepted, strings.Join(notes, "; "))
		}
		anc.Conditions = []metav1.Condition{c}
		ancestors = append(ancestors, anc)
	}
	return p, ancestors, true
}

// backendNoticesLocked say what comes of each field of an
// XBackendTrafficPolicy spec applied to the Service svc: a TrafficPolicy
// there that overrides the retryConstraint or asks for no retries, and the
// modes that do not honour a field.
func (r *Registry) backendNoticesLocked(s *gatewayx.BackendTrafficPolicySpec, svc Key) []string {
	var notes []string
	if s.RetryConstraint != nil {
		tp := r.attached[policyTarget{kind: "Service", key: svc}]
		switch {
		case tp != nil && tp.Spec.Retry != nil && tp.Spec.Retry.Budget != nil:
			notes = append(notes, fmt.Sprintf("spec.retryConstraint is overridden on Service %s by TrafficPolicy %s/%s's spec.retry.budget: on one Service a TrafficPolicy's field wins over an XBackendTrafficPolicy's", svc, tp.Namespace, tp.Name))
		case tp == nil || CallPolicyOf(&tp.Spec).Retry == nil:
			notes = append(notes, fmt.Sprintf("spec.retryConstraint bounds the retries a TrafficPolicy's spec.retry asks for (GRPCRoute has no retry field), and no TrafficPolicy on Service %s retries: only the rules of its routes whose own TrafficPolicy retries are bounded", svc))
		}
		if n := policy.BudgetedRetry.Notice("spec.retryConstraint"); n != "" {
			notes = append(notes, n)
		}
	}
	if s.SessionPersistence != nil {
		if n := policy.SessionAffinity.Notice("spec.sessionPersistence"); n != "" {
			notes = append(notes, n)
		}
	}
	return notes
}

// backendBudgetNotice is what a TrafficPolicy's Accepted message says of a
// Service target whose XBackendTrafficPolicy gives its retries their
// budget; empty when none does.
func (r *Registry) backendBudgetNoticeLocked(s *v1alpha1.TrafficPolicySpec, t policyTarget) string {
	if t.kind != "Service" || s.Retry == nil || s.Retry.Budget != nil {
		return ""
	}
	x, ok := r.backendAttached[t.key]
	if !ok || x.Spec.RetryConstraint == nil {
		return ""
	}
	return fmt.Sprintf("spec.retry has no budget: XBackendTrafficPolicy %s/%s's spec.retryConstraint bounds it", x.Namespace, x.Name)
}
