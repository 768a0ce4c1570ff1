// Package sidecar is the shape of the listeners Ballast's control plane
// serves to sidecars: one per Service ClusterIP:port, as Envoy would listen
// on it, whose HttpConnectionManager names the port's RouteConfiguration.
// The control plane builds them and `ballast proxy` reads them, to map an
// intercepted connection's original destination to its Service without
// reading the Kubernetes API itself. The proxy's xDS client reads them
// with its own cut-down copy of Envoy's messages (xds/client's
// sidecarRoute, Route's twin), so the sidecar binary links neither this
// package nor go-control-plane.
package sidecar

import (
	"fmt"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Listener is the sidecar listener of addr, a ClusterIP:port. hcm is an
// HttpConnectionManager (in an Any) whose RDS names the Service port's
// RouteConfiguration.
func Listener(addr netip.AddrPort, hcm *anypb.Any) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name: addr.String(),
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address:       addr.Addr().String(),
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(addr.Port())},
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
		}}}},
	}
}

// Route reads a sidecar listener: its address, and the name of the
// RouteConfiguration it uses, which is also the name a proxyless client
// dials for that Service port.
func Route(l *listenerv3.Listener) (netip.AddrPort, string, error) {
	sa := l.GetAddress().GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: address: %w", l.GetName(), err)
	}
	if len(l.GetFilterChains()) != 1 || len(l.GetFilterChains()[0].GetFilters()) != 1 {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: want one filter chain with one filter", l.GetName())
	}
	m := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(m); err != nil {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: http_connection_manager: %w", l.GetName(), err)
	}
	route := m.GetRds().GetRouteConfigName()
	if route == "" {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: no RDS route name", l.GetName())
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue())), route, nil
}
