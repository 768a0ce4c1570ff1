package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/ballast-dev/ballast/discovery"
)

// StaticDestinations maps fixed destinations to targets.
type StaticDestinations map[netip.AddrPort]string

// Target implements Destinations.
func (s StaticDestinations) Target(dst netip.AddrPort) (string, bool) {
	t, ok := s[unmap(dst)]
	return t, ok
}

// ServiceIndex maps every ClusterIP:port of the Services in a Registry to
// a target for the Service port: its xds:/// target (XDSTarget), so an
// intercepted connection to a ClusterIP is balanced by the same xDS
// resources a proxyless client would use, or, with no control plane, its
// kubernetes:/// target (KubernetesTarget), resolved from the same
// Registry. It is rebuilt whole whenever the Registry changes and read
// without locks.
type ServiceIndex struct {
	reg     *discovery.Registry
	target  ServiceTarget
	targets atomic.Pointer[map[netip.AddrPort]string]
}

// ServiceTarget names the target of a Service port.
type ServiceTarget func(k discovery.Key, port int32) string

// NewServiceIndex indexes reg's current Services; Run keeps it current.
func NewServiceIndex(reg *discovery.Registry, target ServiceTarget) *ServiceIndex {
	x := &ServiceIndex{reg: reg, target: target}
	x.rebuild()
	return x
}

// Target implements Destinations.
func (x *ServiceIndex) Target(dst netip.AddrPort) (string, bool) {
	t, ok := (*x.targets.Load())[unmap(dst)]
	return t, ok
}

// Run rebuilds the index after every Registry change until ctx ends.
func (x *ServiceIndex) Run(ctx context.Context) error {
	sub := x.reg.Subscribe()
	defer sub.Close()
	x.rebuild() // changes between NewServiceIndex and Subscribe
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.C():
			sub.Drain()
			x.rebuild()
		}
	}
}

func (x *ServiceIndex) rebuild() {
	m := ServiceTargets(x.reg.List(), x.target)
	x.targets.Store(&m)
}

// ServiceTargets maps each ClusterIP:port of services to its target.
// Headless Services (no ClusterIP) and non-TCP ports have no entry: there
// is nothing to intercept.
func ServiceTargets(services []*discovery.Service, target ServiceTarget) map[netip.AddrPort]string {
	m := map[netip.AddrPort]string{}
	for _, s := range services {
		for _, ip := range s.ClusterIPs {
			if !ip.IsValid() || ip.IsUnspecified() {
				continue
			}
			for _, p := range s.Ports {
				if p.Protocol != "" && p.Protocol != "TCP" {
					continue
				}
				m[netip.AddrPortFrom(ip.Unmap(), uint16(p.Port))] = target(s.Key, p.Port)
			}
		}
	}
	return m
}

// XDSTarget is the target a proxyless client dials for a Service port.
func XDSTarget(k discovery.Key, port int32) string {
	return fmt.Sprintf("xds:///%s.%s:%d", k.Name, k.Namespace, port)
}

// KubernetesTarget is the target resolver/kubernetes resolves for a
// Service port, from a discovery Registry.
func KubernetesTarget(k discovery.Key, port int32) string {
	return fmt.Sprintf("kubernetes:///%s.%s:%d", k.Name, k.Namespace, port)
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
