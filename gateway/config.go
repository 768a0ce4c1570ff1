package gateway

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds"
	"github.com/ballast-dev/ballast/xds/client"
)

// config is what the gateway serves at one moment and what it says of
// it: computed whole from the registry, level-triggered.
type config struct {
	// ports are the ports to listen on, by number.
	ports map[int32]*portConfig
	// status is what the gateway reports.
	status Status
}

// portConfig is one port of a served Gateway: every listener of the port
// shares one socket, one protocol and one route.
type portConfig struct {
	port    int32
	gateway discovery.Key
	// tls is set for HTTPS: the certificates by listener hostname ("" is
	// the listener without one), which SNI picks from.
	tls []hostCert
	// update is the route and the Clusters it names, for the proxy.
	update client.Update
}

// hostCert is one HTTPS listener's certificate and the hostname it
// serves.
type hostCert struct {
	hostname string
	cert     *tls.Certificate
}

// target is the name the proxy's listener for the port asks routes for.
func (p *portConfig) target() string {
	return p.gateway.Namespace + "." + p.gateway.Name + ":" + strconv.Itoa(int(p.port))
}

// Status is what the gateway says of the objects it serves; the
// Conditions have no LastTransitionTime (the writer keeps the old one or
// sets it).
type Status struct {
	Classes  []ClassStatus
	Gateways []GatewayStatus
	Routes   []discovery.GatewayRouteStatus
}

// ClassStatus is the status of one GatewayClass of the gateway's
// controller.
type ClassStatus struct {
	Class      *gatewayv1.GatewayClass
	Conditions []metav1.Condition
}

// GatewayStatus is the status of one Gateway the gateway serves.
type GatewayStatus struct {
	Gateway *gatewayv1.Gateway
	Status  gatewayv1.GatewayStatus
}

// configOptions are what configure reads besides the registry.
type configOptions struct {
	controller gatewayv1.GatewayController
	// only, if set, is the one Gateway to serve.
	only *discovery.Key
	// addresses are the Gateway's addresses in status.
	addresses []gatewayv1.GatewayStatusAddress
	// unbindable are ports the last attempt could not listen on, and why.
	unbindable map[int32]string
	// noRoute, if valid, is the address of the gateway's own server that
	// answers UNIMPLEMENTED: the backend of every port's last rule.
	noRoute netip.AddrPort
	xds     xds.Options
}

// configure computes what to serve from the registry.
func configure(reg *discovery.Registry, opts configOptions) *config {
	out := &config{ports: map[int32]*portConfig{}}
	ours := map[string]bool{}
	for _, c := range reg.GatewayClasses() {
		if c.Spec.ControllerName != opts.controller {
			continue
		}
		ours[c.Name] = true
		out.status.Classes = append(out.status.Classes, classStatus(c, opts.controller))
	}
	for _, gw := range reg.Gateways() {
		k := discovery.Key{Namespace: gw.Namespace, Name: gw.Name}
		if !ours[string(gw.Spec.GatewayClassName)] || (opts.only != nil && *opts.only != k) {
			continue
		}
		gs := configureGateway(reg, gw, opts, out)
		out.status.Gateways = append(out.status.Gateways, gs.GatewayStatus)
		out.status.Routes = append(out.status.Routes, gs.routes...)
	}
	return out
}

// classStatus is a GatewayClass of the controller, Accepted.
func classStatus(c *gatewayv1.GatewayClass, controller gatewayv1.GatewayController) ClassStatus {
	return ClassStatus{Class: c, Conditions: []metav1.Condition{{
		Type: string(gatewayv1.GatewayClassConditionStatusAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayClassReasonAccepted), Message: "accepted by " + string(controller),
		ObservedGeneration: c.Generation,
	}}}
}

// gatewayResult is configureGateway's status of a Gateway and of its
// routes.
type gatewayResult struct {
	GatewayStatus
	routes []discovery.GatewayRouteStatus
}

// listenerState is one listener as configure judges it.
type listenerState struct {
	spec   gatewayv1.Listener
	status gatewayv1.ListenerStatus
	// serve says the listener is valid and served.
	serve bool
	cert  *tls.Certificate
}

// configureGateway judges gw's listeners, attaches its routes, adds the
// ports it serves to out and returns its status.
func configureGateway(reg *discovery.Registry, gw *gatewayv1.Gateway, opts configOptions, out *config) gatewayResult {
	gk := discovery.Key{Namespace: gw.Namespace, Name: gw.Name}
	gen := gw.Generation
	cond := func(t string, ok bool, reason, msg string) metav1.Condition {
		s := metav1.ConditionTrue
		if !ok {
			s = metav1.ConditionFalse
		}
		return metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen}
	}
	ls := make([]*listenerState, len(gw.Spec.Listeners))
	for i, l := range gw.Spec.Listeners {
		ls[i] = judgeListener(reg, gw, l)
	}
	markConflicts(ls, cond)
	for _, l := range ls {
		if !l.serve {
			continue
		}
		if p, taken := out.ports[int32(l.spec.Port)]; taken && p.gateway != gk {
			l.serve = false
			l.status.Conditions = setCondition(l.status.Conditions, cond(string(gatewayv1.ListenerConditionAccepted), false, string(gatewayv1.ListenerReasonPortUnavailable),
				fmt.Sprintf("port %d is served by Gateway %s in this gateway process: run one gateway per Gateway (--gateway)", l.spec.Port, p.gateway)))
		} else if why, bad := opts.unbindable[int32(l.spec.Port)]; bad {
			l.serve = false
			l.status.Conditions = setCondition(l.status.Conditions, cond(string(gatewayv1.ListenerConditionAccepted), false, string(gatewayv1.ListenerReasonPortUnavailable), why))
		}
	}

	var served []discovery.GatewayListener
	for _, l := range ls {
		if !l.serve {
			continue
		}
		served = append(served, discovery.GatewayListener{
			Name: string(l.spec.Name), Port: int32(l.spec.Port), Hostname: deref(l.spec.Hostname),
			Allows: admits(gw, l.spec),
		})
	}
	att := reg.AttachToGateway(gw, served, opts.controller)

	// One route per port over its listeners' rules; the Clusters its
	// backends name.
	routed := map[int32]discovery.PortRoute{}
	for _, pr := range att.Ports {
		routed[pr.Port] = pr
	}
	for _, l := range ls {
		if !l.serve {
			continue
		}
		port := int32(l.spec.Port)
		pc := out.ports[port]
		if pc == nil {
			pc = &portConfig{port: port, gateway: gk}
			pc.update = portUpdate(reg, pc.target(), routed[port], opts.xds, opts.noRoute)
			out.ports[port] = pc
		}
		if l.cert != nil {
			pc.tls = append(pc.tls, hostCert{hostname: strings.ToLower(deref(l.spec.Hostname)), cert: l.cert})
		}
	}

	var status gatewayv1.GatewayStatus
	programmed := 0
	for _, l := range ls {
		l.status.AttachedRoutes = att.Attached[string(l.spec.Name)]
		if l.serve {
			programmed++
			l.status.Conditions = setCondition(l.status.Conditions, cond(string(gatewayv1.ListenerConditionProgrammed), true, string(gatewayv1.ListenerReasonProgrammed), "serving"))
		}
		status.Listeners = append(status.Listeners, l.status)
	}
	accepted := cond(string(gatewayv1.GatewayConditionAccepted), true, string(gatewayv1.GatewayReasonAccepted), "accepted")
	if programmed == 0 {
		accepted = cond(string(gatewayv1.GatewayConditionAccepted), false, string(gatewayv1.GatewayReasonListenersNotValid),
			"no listener is valid: see the listeners' conditions")
	} else if programmed < len(ls) {
		accepted = cond(string(gatewayv1.GatewayConditionAccepted), true, string(gatewayv1.GatewayReasonListenersNotValid),
			fmt.Sprintf("%d of %d listeners are not valid; the others are served", len(ls)-programmed, len(ls)))
	}
	if len(gw.Spec.Addresses) > 0 {
		accepted = cond(string(gatewayv1.GatewayConditionAccepted), false, string(gatewayv1.GatewayReasonUnsupportedAddress),
			"spec.addresses is not supported: the gateway's addresses are its pod's")
		programmed = 0
	}
	progCond := cond(string(gatewayv1.GatewayConditionProgrammed), true, string(gatewayv1.GatewayReasonProgrammed), "serving")
	if programmed == 0 {
		progCond = cond(string(gatewayv1.GatewayConditionProgrammed), false, string(gatewayv1.GatewayReasonInvalid), "no listener is served")
		for _, l := range ls {
			if l.serve {
				delete(out.ports, int32(l.spec.Port))
			}
		}
	} else {
		status.Addresses = opts.addresses
	}
	status.Conditions = []metav1.Condition{accepted, progCond}
	return gatewayResult{GatewayStatus: GatewayStatus{Gateway: gw, Status: status}, routes: att.Routes}
}

// judgeListener checks one listener alone: its protocol, the kinds of
// route it admits and, for HTTPS, its certificate.
func judgeListener(reg *discovery.Registry, gw *gatewayv1.Gateway, l gatewayv1.Listener) *listenerState {
	gen := gw.Generation
	cond := func(t gatewayv1.ListenerConditionType, ok bool, reason gatewayv1.ListenerConditionReason, msg string) metav1.Condition {
		s := metav1.ConditionTrue
		if !ok {
			s = metav1.ConditionFalse
		}
		return metav1.Condition{Type: string(t), Status: s, Reason: string(reason), Message: msg, ObservedGeneration: gen}
	}
	st := &listenerState{spec: l, serve: true}
	st.status.Name = l.Name
	accepted := cond(gatewayv1.ListenerConditionAccepted, true, gatewayv1.ListenerReasonAccepted, "accepted")
	resolved := cond(gatewayv1.ListenerConditionResolvedRefs, true, gatewayv1.ListenerReasonResolvedRefs, "every reference resolves")
	fail := func(c *metav1.Condition, reason gatewayv1.ListenerConditionReason, msg string) {
		st.serve = false
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, string(reason), msg
	}

	// Kinds: GRPCRoute is the one this gateway serves.
	grpc := gatewayv1.RouteGroupKind{Group: ptr(gatewayv1.Group(gatewayv1.GroupName)), Kind: "GRPCRoute"}
	st.status.SupportedKinds = []gatewayv1.RouteGroupKind{grpc}
	if l.AllowedRoutes != nil && len(l.AllowedRoutes.Kinds) > 0 {
		st.status.SupportedKinds = nil
		var bad []string
		for _, k := range l.AllowedRoutes.Kinds {
			group := gatewayv1.GroupName
			if k.Group != nil {
				group = string(*k.Group)
			}
			if group == gatewayv1.GroupName && k.Kind == "GRPCRoute" {
				st.status.SupportedKinds = []gatewayv1.RouteGroupKind{grpc}
			} else {
				bad = append(bad, group+"/"+string(k.Kind))
			}
		}
		if len(bad) > 0 {
			// The listener still serves the kinds it supports.
			resolved.Status, resolved.Reason = metav1.ConditionFalse, string(gatewayv1.ListenerReasonInvalidRouteKinds)
			resolved.Message = fmt.Sprintf("route kinds %s are not supported: this gateway serves GRPCRoutes", strings.Join(bad, ", "))
			if len(st.status.SupportedKinds) == 0 {
				st.serve = false
			}
		}
	}

	switch l.Protocol {
	case gatewayv1.HTTPProtocolType:
		// gRPC over cleartext HTTP/2 (h2c, prior knowledge).
	case gatewayv1.HTTPSProtocolType:
		cert, reason, msg := listenerCert(reg, gw, l)
		if cert == nil {
			fail(&resolved, reason, msg)
		}
		st.cert = cert
	default:
		// No route kind attaches to a protocol the gateway does not serve.
		st.status.SupportedKinds = []gatewayv1.RouteGroupKind{}
		fail(&accepted, gatewayv1.ListenerReasonUnsupportedProtocol,
			fmt.Sprintf("protocol %s is not supported: HTTP (gRPC over h2c) and HTTPS (TLS terminated, h2 by ALPN) are", l.Protocol))
	}
	st.status.Conditions = []metav1.Condition{accepted, resolved,
		cond(gatewayv1.ListenerConditionConflicted, false, gatewayv1.ListenerReasonNoConflicts, "no conflicts")}
	if !st.serve {
		st.status.Conditions = append(st.status.Conditions,
			cond(gatewayv1.ListenerConditionProgrammed, false, gatewayv1.ListenerReasonInvalid, "not served: see the other conditions"))
	}
	return st
}

// listenerCert is the certificate of an HTTPS listener (TLS mode
// Terminate, its first certificateRef), or the reason and message of
// ResolvedRefs that say why there is none.
func listenerCert(reg *discovery.Registry, gw *gatewayv1.Gateway, l gatewayv1.Listener) (*tls.Certificate, gatewayv1.ListenerConditionReason, string) {
	if l.TLS == nil || len(l.TLS.CertificateRefs) == 0 {
		return nil, gatewayv1.ListenerReasonInvalidCertificateRef, "an HTTPS listener needs tls.certificateRefs"
	}
	if l.TLS.Mode != nil && *l.TLS.Mode != gatewayv1.TLSModeTerminate {
		return nil, gatewayv1.ListenerReasonInvalidCertificateRef, fmt.Sprintf("TLS mode %s is not supported on HTTPS: Terminate is", *l.TLS.Mode)
	}
	ref := l.TLS.CertificateRefs[0]
	group, kind := deref(ref.Group), "Secret"
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	k := discovery.Key{Namespace: gw.Namespace, Name: string(ref.Name)}
	if ref.Namespace != nil {
		k.Namespace = string(*ref.Namespace)
	}
	if group != "" || kind != "Secret" {
		return nil, gatewayv1.ListenerReasonInvalidCertificateRef, fmt.Sprintf("certificateRef %s/%s %s is not a Secret", group, kind, k)
	}
	if k.Namespace != gw.Namespace && !reg.Granted("Gateway", discovery.Key{Namespace: gw.Namespace, Name: gw.Name}, "", "Secret", k) {
		return nil, gatewayv1.ListenerReasonRefNotPermitted, fmt.Sprintf("Secret %s is in another namespace and no ReferenceGrant there allows it", k)
	}
	sec, ok := reg.Secret(k)
	if !ok {
		return nil, gatewayv1.ListenerReasonInvalidCertificateRef, fmt.Sprintf("Secret %s does not exist", k)
	}
	if sec.Type != corev1.SecretTypeTLS {
		return nil, gatewayv1.ListenerReasonInvalidCertificateRef, fmt.Sprintf("Secret %s is of type %q, not %s", k, sec.Type, corev1.SecretTypeTLS)
	}
	cert, err := tls.X509KeyPair(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, gatewayv1.ListenerReasonInvalidCertificateRef, fmt.Sprintf("Secret %s: %s and %s are not a certificate and its key: %v", k, corev1.TLSCertKey, corev1.TLSPrivateKeyKey, err)
	}
	return &cert, "", ""
}

// markConflicts marks listeners that share a port but not a protocol
// (ProtocolConflict), and those that share a port, a protocol and a
// hostname (HostnameConflict); neither is served.
func markConflicts(ls []*listenerState, cond func(t string, ok bool, reason, msg string) metav1.Condition) {
	for i, a := range ls {
		for j, b := range ls {
			if i == j || a.spec.Port != b.spec.Port {
				continue
			}
			var reason gatewayv1.ListenerConditionReason
			switch {
			case a.spec.Protocol != b.spec.Protocol:
				reason = gatewayv1.ListenerReasonProtocolConflict
			case strings.EqualFold(deref(a.spec.Hostname), deref(b.spec.Hostname)):
				reason = gatewayv1.ListenerReasonHostnameConflict
			default:
				continue
			}
			a.serve = false
			a.status.Conditions = setCondition(a.status.Conditions, cond(string(gatewayv1.ListenerConditionConflicted), true, string(reason),
				fmt.Sprintf("listener %s has port %d too (%s)", b.spec.Name, b.spec.Port, reason)))
			a.status.Conditions = setCondition(a.status.Conditions, cond(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: conflicted"))
		}
	}
}

// admits is the listener's allowedRoutes.namespaces as a test of a
// route's namespace. A Selector admits no namespace: namespace labels
// are not read yet.
func admits(gw *gatewayv1.Gateway, l gatewayv1.Listener) func(string) bool {
	from := gatewayv1.NamespacesFromSame
	if l.AllowedRoutes != nil && l.AllowedRoutes.Namespaces != nil && l.AllowedRoutes.Namespaces.From != nil {
		from = *l.AllowedRoutes.Namespaces.From
	}
	switch from {
	case gatewayv1.NamespacesFromAll:
		return func(string) bool { return true }
	case gatewayv1.NamespacesFromSame:
		return func(ns string) bool { return ns == gw.Namespace }
	}
	return func(string) bool { return false }
}

// portUpdate is the route of a port (its rules over every listener) and
// the Clusters and endpoints of the Service ports its backends name.
//
// A call no rule matches must fail UNIMPLEMENTED at a Gateway (the
// Gateway API's listener rules), where the data path fails it
// UNAVAILABLE: the route's last rule, matching every call, sends it to
// the gateway's own server that answers so.
func portUpdate(reg *discovery.Registry, name string, pr discovery.PortRoute, opts xds.Options, noRoute netip.AddrPort) client.Update {
	route, unavailable := pr.Model(name, []string{name}, func(k discovery.Key, port int32) string {
		return xds.ClusterName(k, port, opts)
	})
	u := client.Update{Route: route, Clusters: map[string]policy.Cluster{}, Endpoints: map[string]policy.Endpoints{}}
	if noRoute.IsValid() {
		u.Route.Rules = append(slices.Clip(u.Route.Rules), policy.Rule{Name: noRouteCluster, Backends: []policy.Backend{{Cluster: noRouteCluster, Weight: 1}}})
		u.Clusters[noRouteCluster] = policy.Cluster{Name: noRouteCluster, LB: policy.RoundRobin}
		u.Endpoints[noRouteCluster] = policy.Endpoints{Cluster: noRouteCluster, Endpoints: []policy.Endpoint{{Address: noRoute}}}
	}
	for _, c := range unavailable {
		u.Clusters[c] = policy.Cluster{Name: c, LB: policy.RoundRobin}
		u.Endpoints[c] = policy.Endpoints{Cluster: c}
	}
	seen := map[discovery.Key]bool{}
	for _, r := range pr.Rules {
		for _, b := range r.Backends {
			if b.Unresolved != "" || seen[b.Service] {
				continue
			}
			seen[b.Service] = true
			svc, ok := reg.Get(b.Service)
			if !ok {
				continue
			}
			models, err := xds.Model(svc, opts)
			if err != nil {
				continue // a bad lb-policy annotation: its calls fail UNAVAILABLE
			}
			for _, m := range models {
				u.Clusters[m.Cluster.Name] = m.Cluster
				u.Endpoints[m.Cluster.Name] = m.Endpoints
			}
		}
	}
	return u
}

// setCondition replaces the condition of c's type in cs, or appends it.
func setCondition(cs []metav1.Condition, c metav1.Condition) []metav1.Condition {
	if i := slices.IndexFunc(cs, func(x metav1.Condition) bool { return x.Type == c.Type }); i >= 0 {
		cs[i] = c
		return cs
	}
	return append(cs, c)
}

func deref[T ~string](p *T) string {
	if p == nil {
		return ""
	}
	return string(*p)
}

func ptr[T any](v T) *T { return &v }
