package discovery

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Build computes the snapshot of a Service from the Service object and all of
// its EndpointSlices. It is the one place that reads Kubernetes semantics, so
// the API-server source and the file source agree: slices are merged, each
// Service port takes the slice port of the same name and protocol (this is how
// a named targetPort is resolved, per slice), nil conditions read as the API
// documents them (ready and serving unknown mean true, terminating unknown
// means false), and an address listed by two slices appears once, with the
// most available conditions either gives it (ready over serving over neither).
// Slices of other Services, FQDN slices and addresses that are not IPs are
// ignored.
func Build(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice) *Service {
	out := &Service{Key: Key{Namespace: svc.Namespace, Name: svc.Name}}
	if td := svc.Spec.TrafficDistribution; td != nil {
		out.TrafficDistribution = *td
	}
	for k, v := range svc.Annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out.ClusterIPs = append(out.ClusterIPs, a)
		}
	}
	if len(out.ClusterIPs) == 0 {
		if a, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
			out.ClusterIPs = append(out.ClusterIPs, a)
		}
	}
	for _, sp := range svc.Spec.Ports {
		port := Port{Name: sp.Name, Port: sp.Port, Protocol: string(cmp.Or(sp.Protocol, corev1.ProtocolTCP))}
		byAddr := map[netip.AddrPort]int{}
		for _, slice := range endpointSlices {
			if slice.Namespace != svc.Namespace || slice.Labels[discoveryv1.LabelServiceName] != svc.Name {
				continue
			}
			if slice.AddressType == discoveryv1.AddressTypeFQDN {
				continue
			}
			target, ok := slicePort(slice, port)
			if !ok {
				continue
			}
			for _, ep := range slice.Endpoints {
				for _, raw := range ep.Addresses {
					ip, err := netip.ParseAddr(raw)
					if err != nil {
						continue
					}
					e := endpointOf(ep, netip.AddrPortFrom(ip, uint16(target)))
					if i, seen := byAddr[e.Address]; seen {
						if availability(e) > availability(port.Endpoints[i]) {
							port.Endpoints[i] = e
						}
						continue
					}
					byAddr[e.Address] = len(port.Endpoints)
					port.Endpoints = append(port.Endpoints, e)
				}
			}
		}
		slices.SortFunc(port.Endpoints, func(a, b Endpoint) int { return a.Address.Compare(b.Address) })
		out.Ports = append(out.Ports, port)
	}
	// A port number may appear once per protocol (DNS serves 53 on TCP and
	// UDP); the tie-break keeps the order, and so snapshot equality, stable.
	slices.SortFunc(out.Ports, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
	})
	return out
}

// slicePort finds the target port number that a slice gives a Service port.
func slicePort(slice *discoveryv1.EndpointSlice, p Port) (int32, bool) {
	for _, sp := range slice.Ports {
		name := ""
		if sp.Name != nil {
			name = *sp.Name
		}
		proto := corev1.ProtocolTCP
		if sp.Protocol != nil {
			proto = *sp.Protocol
		}
		if name == p.Name && string(proto) == p.Protocol && sp.Port != nil {
			return *sp.Port, true
		}
	}
	return 0, false
}

func endpointOf(ep discoveryv1.Endpoint, addr netip.AddrPort) Endpoint {
	e := Endpoint{
		Address:     addr,
		Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
		Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
	}
	// The API documents a nil serving as true, independent of ready: a
	// terminating endpoint with ready=false and no serving field is draining.
	e.Serving = ep.Conditions.Serving == nil || *ep.Conditions.Serving
	if ep.Zone != nil {
		e.Zone = *ep.Zone
	}
	if ep.NodeName != nil {
		e.Node = *ep.NodeName
	}
	if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
		e.Pod = ep.TargetRef.Name
	}
	return e
}

// availability ranks an endpoint's conditions, so that of two slices naming
// the same address the one that lets it take more traffic wins.
func availability(e Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving:
		return 1
	}
	return 0
}
