package discovery

import (
	"context"
	"net/netip"
	"sync/atomic"
)

// ServicePort names one port of one Service.
type ServicePort struct {
	Key  Key
	Port int32
}

// ClusterIPIndex maps every ClusterIP:port of a Registry's Services to the
// Service port behind it: what a sidecar asks of an intercepted connection's
// original destination. It is rebuilt whole whenever the Registry changes
// and read without locks.
type ClusterIPIndex struct {
	reg   *Registry
	ports atomic.Pointer[map[netip.AddrPort]ServicePort]
}

// NewClusterIPIndex indexes reg's current Services; Run keeps it current.
func NewClusterIPIndex(reg *Registry) *ClusterIPIndex {
	x := &ClusterIPIndex{reg: reg}
	x.rebuild()
	return x
}

// Lookup returns the Service port at dst. An IPv4-mapped IPv6 address (as
// an IPv6 socket reports it) is the IPv4 address.
func (x *ClusterIPIndex) Lookup(dst netip.AddrPort) (ServicePort, bool) {
	sp, ok := (*x.ports.Load())[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]
	return sp, ok
}

// Run rebuilds the index after every Registry change until ctx ends.
func (x *ClusterIPIndex) Run(ctx context.Context) error {
	sub := x.reg.Subscribe()
	defer sub.Close()
	x.rebuild() // changes between NewClusterIPIndex and Subscribe
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

func (x *ClusterIPIndex) rebuild() {
	m := ClusterIPs(x.reg.List())
	x.ports.Store(&m)
}

// ClusterIPs maps each ClusterIP:port of services to its Service port.
// Headless Services (no ClusterIP) and non-TCP ports have no entry: there
// is nothing to intercept.
func ClusterIPs(services []*Service) map[netip.AddrPort]ServicePort {
	m := map[netip.AddrPort]ServicePort{}
	for _, s := range services {
		for _, ip := range s.ClusterIPs {
			if !ip.IsValid() || ip.IsUnspecified() {
				continue
			}
			for _, p := range s.Ports {
				if p.Protocol != "" && p.Protocol != "TCP" {
					continue
				}
				m[netip.AddrPortFrom(ip.Unmap(), uint16(p.Port))] = ServicePort{Key: s.Key, Port: p.Port}
			}
		}
	}
	return m
}
