package discovery

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// GRPCRoutes attached to a Gateway (north-south): the same rules, matches,
// precedence, backends and ReferenceGrants as a route attached to a
// Service (route.go), plus what only a Gateway parent has: a parentRef
// names a listener (sectionName, port), the listener admits routes by
// namespace and kind, and the route's hostnames meet the listener's.

// GatewayListener is one listener of a Gateway that GRPCRoutes may attach
// to, as the gateway serving it judged it.
type GatewayListener struct {
	Name string
	Port int32
	// Hostname is the listener's hostname; empty admits every host.
	Hostname string
	// Allows reports whether the listener admits a GRPCRoute of the
	// namespace (allowedRoutes: namespaces and kinds).
	Allows func(namespace string) bool
}

// GatewayAttachment is what the GRPCRoutes that name a Gateway as a parent
// make of it.
type GatewayAttachment struct {
	// Ports are the rules served on each port of the Gateway, over every
	// listener of the port, in precedence order; a port without an
	// attached route has none.
	Ports []PortRoute
	// Attached counts the routes attached to each listener, by name.
	Attached map[string]int32
	// Routes are the GRPCRoutes that name the Gateway, as their source
	// last wrote them, with a RouteParentStatus under the gateway's
	// controller for each of their parentRefs to it.
	Routes []GatewayRouteStatus
}

// GatewayRouteStatus is what a Gateway says of one GRPCRoute.
type GatewayRouteStatus struct {
	Route   *gatewayv1.GRPCRoute
	Parents []gatewayv1.RouteParentStatus
}

// AttachToGateway attaches the GRPCRoutes that name gw as a parent to its
// listeners (those the gateway serves) and says what came of each
// parentRef, as controller.
func (r *Registry) AttachToGateway(gw *gatewayv1.Gateway, listeners []GatewayListener, controller gatewayv1.GatewayController) GatewayAttachment {
	r.mu.RLock()
	defer r.mu.RUnlock()
	v := r.viewLocked()
	gk := Key{Namespace: gw.Namespace, Name: gw.Name}
	out := GatewayAttachment{Attached: map[string]int32{}}
	byPort := map[int32][]attachedRule{}
	keys := make([]Key, 0, len(r.routes))
	for k := range r.routes {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	for _, k := range keys {
		e := r.routes[k]
		var parents []gatewayv1.RouteParentStatus
		resolved, reason, msg := resolvedRefs(e.current, v)
		refs := condition(e.current, gatewayv1.RouteConditionResolvedRefs, true, gatewayv1.RouteReasonResolvedRefs, "every backendRef resolves")
		if !resolved {
			refs = condition(e.current, gatewayv1.RouteConditionResolvedRefs, false, reason, msg)
		}
		var rules []attachedRule // of the served version, made once
		for _, p := range e.current.Spec.ParentRefs {
			if !namesGateway(e.current, p, gk) {
				continue
			}
			accepted := gatewayParent(e, p, listeners, func(l GatewayListener, hosts []string) {
				out.Attached[l.Name]++
				if rules == nil {
					rules = routeRules(e.served, v)
				}
				for _, h := range hosts {
					for _, ar := range rules {
						ar.out.Match.Hostname = h
						ar.host = len(h)
						if !strings.HasPrefix(h, "*") {
							ar.exactHost = len(h)
						}
						byPort[l.Port] = append(byPort[l.Port], ar)
					}
				}
			})
			parents = append(parents, gatewayv1.RouteParentStatus{
				ParentRef:      p,
				ControllerName: controller,
				Conditions:     []metav1.Condition{accepted, refs},
			})
		}
		if len(parents) > 0 {
			out.Routes = append(out.Routes, GatewayRouteStatus{Route: e.current, Parents: parents})
		}
	}
	for port, rules := range byPort {
		slices.SortStableFunc(rules, comparePrecedence)
		pr := PortRoute{Port: port}
		for i, r := range rules {
			// A route attached through two parentRefs, or to two
			// listeners of a port, adds its rules once.
			if i > 0 && sameAttached(rules[i-1], r) {
				continue
			}
			pr.Rules = append(pr.Rules, r.out)
		}
		out.Ports = append(out.Ports, pr)
	}
	slices.SortFunc(out.Ports, func(a, b PortRoute) int { return cmp.Compare(a.Port, b.Port) })
	return out
}

func sameAttached(a, b attachedRule) bool {
	return a.route == b.route && a.rule == b.rule && a.match == b.match && a.out.Match.Hostname == b.out.Match.Hostname
}

// gatewayParent attaches the route of e through parentRef p to each
// listener p selects that admits it and shares a hostname with it
// (attach is called with the hostnames), and is the Accepted condition
// that says so or why not.
func gatewayParent(e *versioned[*gatewayv1.GRPCRoute], p gatewayv1.ParentReference, listeners []GatewayListener, attach func(GatewayListener, []string)) metav1.Condition {
	rt := e.current
	if e.served == nil {
		return condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonUnsupportedValue, e.invalid.Error())
	}
	var selected, allowed int
	attached := 0
	for _, l := range listeners {
		if (p.SectionName != nil && string(*p.SectionName) != l.Name) || (p.Port != nil && *p.Port != l.Port) {
			continue
		}
		selected++
		if !l.Allows(rt.Namespace) {
			continue
		}
		allowed++
		hosts := intersectHostnames(l.Hostname, e.served.Spec.Hostnames)
		if len(hosts) == 0 {
			continue
		}
		attached++
		attach(l, hosts)
	}
	switch {
	case selected == 0:
		return condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonNoMatchingParent,
			fmt.Sprintf("the Gateway has no listener that %s names and serves", describeParent(p)))
	case allowed == 0:
		return condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonNotAllowedByListeners,
			fmt.Sprintf("no listener %s names admits GRPCRoutes from namespace %s (allowedRoutes)", describeParent(p), rt.Namespace))
	case attached == 0:
		return condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonNoMatchingListenerHostname,
			"none of the route's hostnames matches a listener's hostname")
	}
	msg := "accepted"
	if e.invalid != nil {
		msg = e.invalidMessage("the gateway keeps")
		return condition(rt, gatewayv1.RouteConditionAccepted, false, gatewayv1.RouteReasonUnsupportedValue, msg)
	}
	return condition(rt, gatewayv1.RouteConditionAccepted, true, gatewayv1.RouteReasonAccepted, msg)
}

func describeParent(p gatewayv1.ParentReference) string {
	s := "the parentRef"
	if p.SectionName != nil {
		s += fmt.Sprintf(" (sectionName %s)", *p.SectionName)
	}
	if p.Port != nil {
		s += fmt.Sprintf(" (port %d)", *p.Port)
	}
	return s
}

// namesGateway reports whether parentRef p of rt names the Gateway gw
// (group and kind default to Gateway API's Gateway).
func namesGateway(rt *gatewayv1.GRPCRoute, p gatewayv1.ParentReference, gw Key) bool {
	if (p.Group != nil && *p.Group != gatewayv1.GroupName) || (p.Kind != nil && *p.Kind != "Gateway") {
		return false
	}
	ns := rt.Namespace
	if p.Namespace != nil {
		ns = string(*p.Namespace)
	}
	return ns == gw.Namespace && string(p.Name) == gw.Name
}

// intersectHostnames is the hostnames a route's calls may use on a
// listener: the route's own where the listener has none, the listener's
// where the route has none, else each route hostname that the listener's
// admits, a wildcard narrowed to the listener's more specific name. ""
// stands for any host. Empty means the route does not attach.
func intersectHostnames(listener string, route []gatewayv1.Hostname) []string {
	l := strings.ToLower(string(listener))
	if len(route) == 0 {
		return []string{l}
	}
	var out []string
	add := func(h string) {
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	for _, rh := range route {
		h := strings.ToLower(string(rh))
		switch {
		case l == "" || h == l:
			add(h)
		case wildcardMatches(l, h):
			add(h)
		case wildcardMatches(h, l):
			add(l)
		}
	}
	return out
}

// wildcardMatches reports whether the wildcard w (*.suffix) admits name,
// a name or a narrower wildcard with at least one more label.
func wildcardMatches(w, name string) bool {
	suffix, ok := strings.CutPrefix(w, "*")
	if !ok {
		return false
	}
	name = strings.TrimPrefix(name, "*")
	return len(name) > len(suffix) && strings.HasSuffix(name, suffix) && name != suffix
}
