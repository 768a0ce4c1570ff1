package proxy

import (
	"fmt"
	"net/netip"
)

// StaticDestinations maps fixed destinations to targets.
type StaticDestinations map[netip.AddrPort]string

// Target implements Destinations.
func (s StaticDestinations) Target(dst netip.AddrPort) (string, bool) {
	t, ok := s[unmap(dst)]
	return t, ok
}

// XDSTarget is the target a proxyless client dials for a Service port.
func XDSTarget(name, namespace string, port int32) string {
	return fmt.Sprintf("xds:///%s.%s:%d", name, namespace, port)
}

// KubernetesTarget is the target resolver/kubernetes resolves for a
// Service port, from a discovery Registry: what the proxy dials for a
// Service when it has no control plane.
func KubernetesTarget(name, namespace string, port int32) string {
	return fmt.Sprintf("kubernetes:///%s.%s:%d", name, namespace, port)
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
