package discovery

import "slices"

// The values of a Service's spec.trafficDistribution that ask clients to
// keep calls close. Kubernetes defines them; any other value (a later
// one) asks for nothing, as kube-proxy reads it.
const (
	PreferSameZone = "PreferSameZone"
	// PreferClose is PreferSameZone's first name; both mean the same.
	PreferClose = "PreferClose"
	// PreferSameNode is honoured as PreferSameZone: a Ballast client is
	// told its zone, not its node, and a Node is in one zone, so the
	// client still stays as close as it can know.
	PreferSameNode = "PreferSameNode"
)

// PrefersZone reports whether a trafficDistribution asks clients to prefer
// endpoints in their own zone.
func PrefersZone(trafficDistribution string) bool {
	switch trafficDistribution {
	case PreferSameZone, PreferClose, PreferSameNode:
		return true
	}
	return false
}

// Preferred is the one zone-preference decision of every Ballast mode:
// which of a port's endpoints a client in zone should call. use are the
// endpoints to call: when the Service's trafficDistribution prefers the
// client's zone and that zone has routable endpoints (see Routable), those;
// otherwise every routable endpoint. rest are the other routable
// endpoints, the ones to fail over to when use stop answering before
// discovery says so (xDS sends them at a lower priority); empty when use
// is all of them.
//
// A client with no zone, or endpoints with none, have no preference to
// honour: such a client uses every routable endpoint.
func Preferred(eps []Endpoint, trafficDistribution, zone string) (use, rest []Endpoint) {
	routable := Routable(eps)
	if zone == "" || !PrefersZone(trafficDistribution) {
		return routable, nil
	}
	i := slices.IndexFunc(routable, func(e Endpoint) bool { return e.Zone == zone })
	if i < 0 {
		return routable, nil
	}
	for _, e := range routable {
		if e.Zone == zone {
			use = append(use, e)
		} else {
			rest = append(rest, e)
		}
	}
	return use, rest
}

// Preferred is [Preferred] over the port's endpoints.
func (p *Port) Preferred(trafficDistribution, zone string) (use, rest []Endpoint) {
	return Preferred(p.Endpoints, trafficDistribution, zone)
}

// Zones lists, sorted, the zones the endpoints of a Service's ports are
// in.
func (s *Service) Zones() []string {
	var out []string
	for _, p := range s.Ports {
		for _, e := range p.Endpoints {
			if e.Zone != "" && !slices.Contains(out, e.Zone) {
				out = append(out, e.Zone)
			}
		}
	}
	slices.Sort(out)
	return out
}
