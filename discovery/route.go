package discovery

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/policy"
)

// The GRPCRoute semantics of Gateway API v1.6 (GAMMA: a route attached to
// a Service), every MUST of grpcroute_types.go, in one place: a route's
// validation, the precedence of its rules, method and header matches as
// the policy model's :path and header matches, weighted backendRefs and
// ReferenceGrants, and the status conditions that say what came of it.

// ControllerName is the controller Ballast writes route status as.
const ControllerName gatewayv1.GatewayController = "ballast.dev/mesh"

// PortRoute is how the calls to one port of a Service are routed: the
// rules of every GRPCRoute attached to it, in precedence order (a client
// takes the first that matches). A Service port with no route has none.
type PortRoute struct {
	Port  int32
	Rules []RouteRule
}

// RouteRule is one match of one GRPCRoute rule and where its calls go: a
// rule that ORs several matches is one RouteRule per match.
type RouteRule struct {
	// Name is the rule's name qualified by its route (see RuleName), by
	// which a policy attaches to it.
	Name string
	// Match selects the rule's calls; for a route attached to a Gateway
	// listener its Hostname is one of the hostnames the listener and the
	// route both accept (a rule per hostname), empty when neither names
	// any.
	Match policy.Match
	// Backends are the rule's backendRefs of non-zero weight. A rule
	// without any sends no call anywhere: its calls fail UNAVAILABLE.
	Backends                        []RouteBackend
	RequestHeaders, ResponseHeaders policy.HeaderModifier
	// Call is what the rule's calls ask of the client: the TrafficPolicy
	// attached to the rule, else to its route, else to the Service.
	Call policy.CallPolicy
}

// RouteBackend is one backendRef of a rule.
type RouteBackend struct {
	Service Key
	Port    int32
	Weight  uint32
	// Unresolved says why the backend cannot take calls (no such Service
	// or port, another namespace without a ReferenceGrant, a kind that is
	// not a Service); empty when it can. Its share of calls fails
	// UNAVAILABLE rather than going anywhere else.
	Unresolved string
}

// RuleName is the name of rule i of a GRPCRoute in the policy model:
// namespace/route/name for a named rule (what a policy's targetRef with
// sectionName names), namespace/route/rules[i] for one without.
func RuleName(route Key, i int, name *gatewayv1.SectionName) string {
	if name != nil && *name != "" {
		return route.String() + "/" + string(*name)
	}
	return fmt.Sprintf("%s/rules[%d]", route, i)
}

// ValidateRoute checks what Ballast needs of a GRPCRoute beyond what its
// CRD's schema checks at admission: every regular expression compiles
// (RE2), every matched header is one gRPC can match, every filter is one
// Ballast applies. A route that fails is not served: the last good version
// of it stays. The error names the route, the rule and the field.
func ValidateRoute(rt *gatewayv1.GRPCRoute) error {
	var errs []error
	key := Key{Namespace: rt.Namespace, Name: rt.Name}
	for i, rule := range rt.Spec.Rules {
		fail := func(field string, format string, args ...any) {
			errs = append(errs, &RouteFieldError{Route: key, Rule: ruleLabel(i, rule.Name),
				Path: fmt.Sprintf("spec.rules[%d].%s", i, field), Err: fmt.Errorf(format, args...)})
		}
		for j, m := range rule.Matches {
			if _, err := methodPath(m.Method); err != nil {
				fail(fmt.Sprintf("matches[%d].method", j), "%v", err)
			}
			for k, h := range m.Headers {
				field := fmt.Sprintf("matches[%d].headers[%d]", j, k)
				name := strings.ToLower(string(h.Name))
				if !policy.Matchable(name) {
					fail(field+".name", "gRPC cannot match header %q (pseudo-headers, -bin headers, te and grpc-* are not matchable)", h.Name)
				}
				switch t := headerType(h.Type); t {
				case gatewayv1.GRPCHeaderMatchExact:
				case gatewayv1.GRPCHeaderMatchRegularExpression:
					if _, err := regexp.Compile(h.Value); err != nil {
						fail(field+".value", "invalid regular expression: %v", err)
					}
				default:
					fail(field+".type", "unsupported header match type %q", t)
				}
			}
		}
		for j, f := range rule.Filters {
			field := fmt.Sprintf("filters[%d]", j)
			switch f.Type {
			case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
				if err := checkModifier(f.RequestHeaderModifier); err != nil {
					fail(field+".requestHeaderModifier", "%v", err)
				}
			case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
				if err := checkModifier(f.ResponseHeaderModifier); err != nil {
					fail(field+".responseHeaderModifier", "%v", err)
				}
			default:
				fail(field+".type", "filter %q is not supported (RequestHeaderModifier and ResponseHeaderModifier are)", f.Type)
			}
		}
		for j, b := range rule.BackendRefs {
			if len(b.Filters) > 0 {
				fail(fmt.Sprintf("backendRefs[%d].filters", j), "filters on a backendRef are not supported")
			}
			if b.Weight != nil && *b.Weight < 0 {
				fail(fmt.Sprintf("backendRefs[%d].weight", j), "weight %d is negative", *b.Weight)
			}
		}
	}
	return errors.Join(errs...)
}

// RouteFieldError is a problem with one field of a GRPCRoute.
type RouteFieldError struct {
	Route Key
	Rule  string // "rule 0 (name)"
	Path  string // the field, e.g. spec.rules[0].matches[1].method
	Err   error
}

func (e *RouteFieldError) Error() string {
	return fmt.Sprintf("grpcroute %s: %s: %s: %v", e.Route, e.Rule, e.Path, e.Err)
}

func (e *RouteFieldError) Unwrap() error { return e.Err }

func ruleLabel(i int, name *gatewayv1.SectionName) string {
	if name != nil && *name != "" {
		return fmt.Sprintf("rule %d (%s)", i, *name)
	}
	return fmt.Sprintf("rule %d", i)
}

func checkModifier(m *gatewayv1.HTTPHeaderFilter) error {
	if m == nil {
		return fmt.Errorf("missing")
	}
	var names []string
	for _, h := range m.Set {
		names = append(names, string(h.Name))
	}
	for _, h := range m.Add {
		names = append(names, string(h.Name))
	}
	names = append(names, m.Remove...)
	for _, n := range names {
		if l := strings.ToLower(n); l == "" || l[0] == ':' || l == "te" || l == "content-type" || strings.HasPrefix(l, "grpc-") {
			return fmt.Errorf("header %q cannot be changed by a filter", n)
		}
	}
	return nil
}

func headerType(t *gatewayv1.GRPCHeaderMatchType) gatewayv1.GRPCHeaderMatchType {
	if t == nil {
		return gatewayv1.GRPCHeaderMatchExact
	}
	return *t
}

// methodPath is a method match as a match on :path (/service/method):
// Exact service and method as Exact /svc/method, an Exact service alone
// as the Prefix /svc/, anything else as a regular expression over the
// whole path (a missing part matches any one path segment). No method
// match is the Prefix "/", every call.
func methodPath(m *gatewayv1.GRPCMethodMatch) (policy.StringMatch, error) {
	if m == nil {
		return policy.StringMatch{Type: policy.Prefix, Value: "/"}, nil
	}
	svc, method := deref(m.Service), deref(m.Method)
	if svc == "" && method == "" {
		return policy.StringMatch{}, fmt.Errorf("neither service nor method is set")
	}
	typ := gatewayv1.GRPCMethodMatchExact
	if m.Type != nil {
		typ = *m.Type
	}
	switch typ {
	case gatewayv1.GRPCMethodMatchExact:
		if strings.Contains(svc, "/") || strings.Contains(method, "/") {
			return policy.StringMatch{}, fmt.Errorf("an Exact service or method cannot contain '/'")
		}
		switch {
		case method == "":
			return policy.StringMatch{Type: policy.Prefix, Value: "/" + svc + "/"}, nil
		case svc == "":
			return policy.StringMatch{Type: policy.RegularExpression, Value: "/[^/]+/" + regexp.QuoteMeta(method)}, nil
		}
		return policy.StringMatch{Type: policy.Exact, Value: "/" + svc + "/" + method}, nil
	case gatewayv1.GRPCMethodMatchRegularExpression:
		re := func(s string) (string, error) {
			if s == "" {
				return "[^/]+", nil
			}
			if _, err := regexp.Compile(s); err != nil {
				return "", fmt.Errorf("invalid regular expression %q: %v", s, err)
			}
			return "(?:" + s + ")", nil
		}
		s, err := re(svc)
		if err != nil {
			return policy.StringMatch{}, fmt.Errorf("service: %w", err)
		}
		me, err := re(method)
		if err != nil {
			return policy.StringMatch{}, fmt.Errorf("method: %w", err)
		}
		return policy.StringMatch{Type: policy.RegularExpression, Value: "/" + s + "/" + me}, nil
	}
	return policy.StringMatch{}, fmt.Errorf("unsupported method match type %q", typ)
}

func deref[T ~string](p *T) string {
	if p == nil {
		return ""
	}
	return string(*p)
}

// routeView is what resolving routes reads from the registry.
type routeView interface {
	service(Key) (*Service, bool)
	granted(from Key, to Key) bool
	// ruleCall is the call policy attached to a rule of a route (by its
	// name) or to the whole route; ok is false when there is none.
	ruleCall(route Key, name string) (c policy.CallPolicy, ok bool)
	// serviceBudget is the retry budget an XBackendTrafficPolicy sets on
	// the calls to a Service; nil if none does.
	serviceBudget(svc Key) *policy.RetryBudget
}

// parentOf is the Service a parentRef of rt attaches it to, and the port
// (0: every port); ok is false for a parent that is not a Service (a
// Gateway's, another controller's business).
func parentOf(rt *gatewayv1.GRPCRoute, p gatewayv1.ParentReference) (k Key, port int32, ok bool) {
	if p.Group == nil || *p.Group != "" || p.Kind == nil || *p.Kind != "Service" {
		return Key{}, 0, false
	}
	ns := rt.Namespace
	if p.Namespace != nil {
		ns = string(*p.Namespace)
	}
	if p.Port != nil {
		port = *p.Port
	}
	return Key{Namespace: ns, Name: string(p.Name)}, port, true
}

// attachedRule is one match of one rule of a route attached to a port,
// with what orders it.
type attachedRule struct {
	route       *gatewayv1.GRPCRoute
	rule, match int
	// Characters of a matching non-wildcard hostname and of any matching
	// hostname (Gateway parents only), of service and method, and the
	// number of header matches.
	exactHost, host     int
	service, method, hd int
	out                 RouteRule
	// ownCall says a policy of the rule or route set out.Call; else the
	// Service's applies.
	ownCall bool
}

// resolveRoutes is the PortRoute of each port of svc that the given
// routes attach to, sorted by port. Routes are the last good version of
// each GRPCRoute.
func resolveRoutes(svc *Service, routes []*gatewayv1.GRPCRoute, v routeView) []PortRoute {
	byPort := map[int32][]attachedRule{}
	for _, rt := range routes {
		if rt.Namespace != svc.Namespace {
			continue // consumer routes are not supported: see routeStatus
		}
		ports := map[int32]bool{}
		for _, p := range rt.Spec.ParentRefs {
			k, port, ok := parentOf(rt, p)
			if !ok || k != svc.Key {
				continue
			}
			for _, sp := range svc.Ports {
				if (port == 0 || port == sp.Port) && (sp.Protocol == "" || sp.Protocol == "TCP") {
					ports[sp.Port] = true
				}
			}
		}
		if len(ports) == 0 {
			continue
		}
		rules := routeRules(rt, v)
		for port := range ports {
			byPort[port] = append(byPort[port], rules...)
		}
	}
	var out []PortRoute
	for port, rules := range byPort {
		slices.SortStableFunc(rules, comparePrecedence)
		pr := PortRoute{Port: port}
		for _, r := range rules {
			if !r.ownCall {
				r.out.Call = svc.Call
			} else {
				// An XBackendTrafficPolicy on the Service bounds the
				// retries of every call to it, a rule's own included.
				r.out.Call = withBudget(r.out.Call, v.serviceBudget(svc.Key))
			}
			pr.Rules = append(pr.Rules, r.out)
		}
		out = append(out, pr)
	}
	slices.SortFunc(out, func(a, b PortRoute) int { return cmp.Compare(a.Port, b.Port) })
	return out
}

// comparePrecedence orders rules as grpcroute_types.go says: more
// characters of a matching non-wildcard hostname, then of any matching
// hostname (both none for a Service's routes), then of a matching
// service, then of a matching method, then more header matches; then the
// older route, then the route first by namespace/name; then the rule and
// match order within the route.
func comparePrecedence(a, b attachedRule) int {
	return cmp.Or(
		-cmp.Compare(a.exactHost, b.exactHost),
		-cmp.Compare(a.host, b.host),
		-cmp.Compare(a.service, b.service),
		-cmp.Compare(a.method, b.method),
		-cmp.Compare(a.hd, b.hd),
		a.route.CreationTimestamp.Time.Compare(b.route.CreationTimestamp.Time),
		cmp.Compare(a.route.Namespace, b.route.Namespace),
		cmp.Compare(a.route.Name, b.route.Name),
		cmp.Compare(a.rule, b.rule),
		cmp.Compare(a.match, b.match),
	)
}

// routeRules are the rules of a valid route, one per match.
func routeRules(rt *gatewayv1.GRPCRoute, v routeView) []attachedRule {
	key := Key{Namespace: rt.Namespace, Name: rt.Name}
	var out []attachedRule
	for i, rule := range rt.Spec.Rules {
		base := RouteRule{Name: RuleName(key, i, rule.Name)}
		call, ownCall := v.ruleCall(key, deref(rule.Name))
		base.Call = call
		for _, f := range rule.Filters {
			switch f.Type {
			case gatewayv1.GRPCRouteFilterRequestHeaderModifier:
				base.RequestHeaders = modifier(f.RequestHeaderModifier)
			case gatewayv1.GRPCRouteFilterResponseHeaderModifier:
				base.ResponseHeaders = modifier(f.ResponseHeaderModifier)
			}
		}
		for _, b := range rule.BackendRefs {
			rb, _ := resolveBackend(key, b.BackendRef, v)
			if rb.Weight > 0 {
				base.Backends = append(base.Backends, rb)
			}
		}
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gatewayv1.GRPCRouteMatch{{}} // no matches: every call
		}
		for j, m := range matches {
			r := attachedRule{route: rt, rule: i, match: j, out: base, ownCall: ownCall}
			path, err := methodPath(m.Method)
			if err != nil {
				continue // not served: ValidateRoute refuses the route
			}
			r.out.Match.Path = path
			if m.Method != nil {
				r.service, r.method = len(deref(m.Method.Service)), len(deref(m.Method.Method))
			}
			seen := map[string]bool{}
			for _, h := range m.Headers {
				name := strings.ToLower(string(h.Name))
				if seen[name] {
					continue // only the first of equivalent names counts
				}
				seen[name] = true
				sm := policy.StringMatch{Type: policy.Exact, Value: h.Value}
				if headerType(h.Type) == gatewayv1.GRPCHeaderMatchRegularExpression {
					sm.Type = policy.RegularExpression
				}
				r.out.Match.Headers = append(r.out.Match.Headers, policy.HeaderMatch{Name: name, Value: sm})
			}
			r.hd = len(r.out.Match.Headers)
			out = append(out, r)
		}
	}
	return out
}

func modifier(m *gatewayv1.HTTPHeaderFilter) policy.HeaderModifier {
	var out policy.HeaderModifier
	if m == nil {
		return out
	}
	for _, h := range m.Set {
		out.Set = append(out.Set, policy.Header{Name: strings.ToLower(string(h.Name)), Value: h.Value})
	}
	for _, h := range m.Add {
		out.Add = append(out.Add, policy.Header{Name: strings.ToLower(string(h.Name)), Value: h.Value})
	}
	for _, n := range m.Remove {
		out.Remove = append(out.Remove, strings.ToLower(n))
	}
	return out
}

// resolveBackend is a backendRef of the route named route, and, when it
// cannot take calls, the reason condition ResolvedRefs gives for it.
func resolveBackend(route Key, b gatewayv1.BackendRef, v routeView) (RouteBackend, gatewayv1.RouteConditionReason) {
	rb := RouteBackend{Service: Key{Namespace: route.Namespace, Name: string(b.Name)}, Weight: 1}
	if b.Namespace != nil {
		rb.Service.Namespace = string(*b.Namespace)
	}
	if b.Port != nil {
		rb.Port = *b.Port
	}
	if b.Weight != nil {
		rb.Weight = uint32(max(*b.Weight, 0))
	}
	group, kind := deref(b.Group), "Service"
	if b.Kind != nil {
		kind = string(*b.Kind)
	}
	switch svc, ok := v.service(rb.Service); {
	case group != "" || kind != "Service":
		rb.Unresolved = fmt.Sprintf("backend %s/%s %s is not a Service", group, kind, rb.Service)
		return rb, gatewayv1.RouteReasonInvalidKind
	case rb.Service.Namespace != route.Namespace && !v.granted(route, rb.Service):
		rb.Unresolved = fmt.Sprintf("Service %s is in another namespace and no ReferenceGrant there allows it", rb.Service)
		return rb, gatewayv1.RouteReasonRefNotPermitted
	case !ok:
		rb.Unresolved = fmt.Sprintf("Service %s does not exist", rb.Service)
		return rb, gatewayv1.RouteReasonBackendNotFound
	case rb.Port == 0:
		rb.Unresolved = fmt.Sprintf("Service %s: backendRef has no port", rb.Service)
		return rb, gatewayv1.RouteReasonBackendNotFound
	case !slices.ContainsFunc(svc.Ports, func(p Port) bool { return p.Port == rb.Port }):
		rb.Unresolved = fmt.Sprintf("Service %s has no port %d", rb.Service, rb.Port)
		return rb, gatewayv1.RouteReasonBackendNotFound
	}
	return rb, ""
}

// grantAllows reports whether a ReferenceGrant in to's namespace lets
// GRPCRoutes of from's namespace refer to the Service to.
func grantAllows(g *gatewayv1.ReferenceGrant, from, to Key) bool {
	return grantAllowsKind(g, "GRPCRoute", from, "", "Service", to)
}

// grantAllowsKind reports whether the ReferenceGrant g lets objects of
// Gateway API kind fromKind in from's namespace refer to the object to,
// of group toGroup and kind toKind.
func grantAllowsKind(g *gatewayv1.ReferenceGrant, fromKind string, from Key, toGroup, toKind string, to Key) bool {
	if g.Namespace != to.Namespace {
		return false
	}
	fromOK := slices.ContainsFunc(g.Spec.From, func(f gatewayv1.ReferenceGrantFrom) bool {
		return f.Group == gatewayv1.GroupName && string(f.Kind) == fromKind && string(f.Namespace) == from.Namespace
	})
	toOK := slices.ContainsFunc(g.Spec.To, func(t gatewayv1.ReferenceGrantTo) bool {
		return string(t.Group) == toGroup && string(t.Kind) == toKind && (t.Name == nil || string(*t.Name) == to.Name)
	})
	return fromOK && toOK
}

// Model is the port's route in the policy model, named name and served
// under domains, each backend named by cluster (its Service port's Cluster
// name in the client's form), and the Clusters with no endpoints that it
// sends the calls that must fail to (see UnavailableCluster).
func (pr PortRoute) Model(name string, domains []string, cluster func(Key, int32) string) (policy.Route, []string) {
	out := policy.Route{Name: name, Domains: domains}
	var unavailable []string
	fail := func(reason string) string {
		c := UnavailableCluster(name, reason)
		if !slices.Contains(unavailable, c) {
			unavailable = append(unavailable, c)
		}
		return c
	}
	for _, r := range pr.Rules {
		rule := policy.Rule{Name: r.Name, Match: r.Match, RequestHeaders: r.RequestHeaders, ResponseHeaders: r.ResponseHeaders, Call: r.Call}
		for _, b := range r.Backends {
			c := cluster(b.Service, b.Port)
			if b.Unresolved != "" {
				c = fail(fmt.Sprintf("%s:%d", b.Service, b.Port))
			}
			rule.Backends = append(rule.Backends, policy.Backend{Cluster: c, Weight: b.Weight})
		}
		if len(rule.Backends) == 0 {
			// No backend of weight above 0: the rule's calls fail. xDS
			// has no weighted_clusters of total weight 0 (grpc-go NACKs
			// them), so they go to a Cluster that has no endpoints.
			rule.Backends = []policy.Backend{{Cluster: fail("no-backend"), Weight: 1}}
		}
		out.Rules = append(out.Rules, rule)
	}
	return out, unavailable
}

// UnavailableCluster names the Cluster, with no endpoints, that the calls
// of route which must fail are sent to: the share of a backend that does
// not resolve (reason is its Service and port) or a rule with no backend.
// Every xDS client fails a call to a Cluster without endpoints at once
// with UNAVAILABLE; a Cluster that does not exist would instead hold a
// grpc-go channel's whole configuration, every route of it, until the
// client's resource timeout (15s) declares it missing. The name has a "/",
// which no Service's Cluster name has, so it never names a Service's
// Cluster, and the kubernetes:/// library, which finds no Service by that
// name, fails the share too.
func UnavailableCluster(route, reason string) string {
	return route + "/unavailable/" + reason
}

// Route is the route of a Service port (by number) in the policy model,
// for the kubernetes:/// library (resolver/kubernetes.WithRoutes): its
// backends are named name.namespace:port, and ok is false for a port
// without a route and without a TrafficPolicy on its Service.
func (r *Registry) Route(k Key, port int32) (policy.Route, bool) {
	svc, ok := r.Get(k)
	if !ok {
		return policy.Route{}, false
	}
	name := fmt.Sprintf("%s.%s:%d", k.Name, k.Namespace, port)
	pr, ok := svc.Route(port)
	if !ok {
		if reflect.ValueOf(svc.Call).IsZero() {
			return policy.Route{}, false
		}
		// No route, but a policy on the Service: every call goes to the
		// port, under the Service's call policy.
		rt := policy.RouteTo(name, []string{name}, name)
		rt.Rules[0].Call = svc.Call
		return rt, true
	}
	rt, _ := pr.Model(name, []string{name}, func(b Key, p int32) string {
		return fmt.Sprintf("%s.%s:%d", b.Name, b.Namespace, p)
	})
	return rt, true
}
