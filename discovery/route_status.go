package discovery

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/policy"
)

// RouteStatus is what Ballast says of the GRPCRoute k: the version its
// source last wrote, and a RouteParentStatus under ControllerName for each
// of its parentRefs that is a Service, with conditions Accepted and
// ResolvedRefs (no LastTransitionTime: the writer keeps it or sets it).
// ok is false when the registry has no such route.
func (r *Registry) RouteStatus(k Key) (rt *gatewayv1.GRPCRoute, parents []gatewayv1.RouteParentStatus, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.routes[k]
	if !ok {
		return nil, nil, false
	}
	return e.current, routeStatus(e, r.viewLocked()), true
}

func routeStatus(e *versioned[*gatewayv1.GRPCRoute], v routeView) []gatewayv1.RouteParentStatus {
	rt := e.current
	resolved, resolvedReason, resolvedMsg := resolvedRefs(rt, v)
	var out []gatewayv1.RouteParentStatus
	for _, p := range rt.Spec.ParentRefs {
		k, port, isService := parentOf(rt, p)
		if !isService {
			continue
		}
		accepted := condition(rt, gatewayv1.RouteConditionAccepted, true, gatewayv1.RouteReasonAccepted, acceptedMessage(rt))
		svc, exists := v.service(k)
		switch {
		case e.invalid != nil:
			msg := e.invalidMessage("clients keep")
			accepted = condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonUnsupportedValue, msg)
		case k.Namespace != rt.Namespace:
			accepted = condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonUnsupportedValue,
				fmt.Sprintf("parent Service %s is in another namespace: only routes in a Service's own namespace are supported", k))
		case !exists:
			accepted = condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonNoMatchingParent,
				fmt.Sprintf("parent Service %s does not exist", k))
		case port != 0 && !slices.ContainsFunc(svc.Ports, func(sp Port) bool { return sp.Port == port }):
			accepted = condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonNoMatchingParent,
				fmt.Sprintf("parent Service %s has no port %d", k, port))
		}
		refs := condition(rt, gatewayv1.RouteConditionResolvedRefs, true, gatewayv1.RouteReasonResolvedRefs, "every backendRef resolves")
		if !resolved {
			refs = condition(rt, gatewayv1.RouteConditionResolvedRefs, false, resolvedReason, resolvedMsg)
		}
		out = append(out, gatewayv1.RouteParentStatus{
			ParentRef:      p,
			ControllerName: ControllerName,
			Conditions:     []metav1.Condition{accepted, refs},
		})
	}
	return out
}

func condition(rt *gatewayv1.GRPCRoute, t gatewayv1.RouteConditionType, ok bool, reason gatewayv1.RouteConditionReason, msg string) metav1.Condition {
	status := metav1.ConditionTrue
	if !ok {
		status = metav1.ConditionFalse
	}
	return metav1.Condition{Type: string(t), Status: status, Reason: string(reason), Message: truncate(msg), ObservedGeneration: rt.Generation}
}

// truncate keeps a message within the 32768 characters a condition holds.
func truncate(s string) string {
	if len(s) > 32000 {
		return s[:32000] + "..."
	}
	return s
}

// acceptedMessage says what of an accepted route some modes do not
// honour (policy.Capabilities), and which rules send no call anywhere.
func acceptedMessage(rt *gatewayv1.GRPCRoute) string {
	notes := []string{"accepted"}
	key := Key{Namespace: rt.Namespace, Name: rt.Name}
	for i, rule := range rt.Spec.Rules {
		where := ruleLabel(i, rule.Name)
		for _, f := range rule.Filters {
			var n string
			switch f.Type {
			case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
				n = policy.RequestHeaderModifier.Notice(where)
			case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
				n = policy.ResponseHeaderModifier.Notice(where)
			}
			if n != "" {
				notes = append(notes, n)
			}
		}
		var sum int64
		for _, b := range rule.BackendRefs {
			w := int64(1)
			if b.Weight != nil {
				w = int64(*b.Weight)
			}
			sum += w
		}
		if sum == 0 {
			notes = append(notes, fmt.Sprintf("%s of %s: no backendRef has a weight above 0, so its calls fail UNAVAILABLE", where, key))
		}
	}
	return strings.Join(notes, "; ")
}

// resolvedRefs checks every backendRef of rt: ok when all resolve, else
// the reason of the first that does not and a message naming each.
func resolvedRefs(rt *gatewayv1.GRPCRoute, v routeView) (ok bool, reason gatewayv1.RouteConditionReason, msg string) {
	key := Key{Namespace: rt.Namespace, Name: rt.Name}
	var problems []string
	for i, rule := range rt.Spec.Rules {
		for j, b := range rule.BackendRefs {
			rb, why := resolveBackend(key, b.BackendRef, v)
			if why == "" {
				continue
			}
			if reason == "" {
				reason = why
			}
			problems = append(problems, fmt.Sprintf("%s: backendRefs[%d]: %s (its share of calls fails UNAVAILABLE)", ruleLabel(i, rule.Name), j, rb.Unresolved))
		}
	}
	if len(problems) == 0 {
		return true, "", ""
	}
	return false, reason, strings.Join(problems, "; ")
}
