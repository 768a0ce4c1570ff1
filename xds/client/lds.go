package client

import (
	"fmt"
	"net/netip"

	listenerv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/listener/v3"
	hcmv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/extensions/filters/network/http_connection_manager/v3"
)

// listener is a decoded Listener: either an API listener, the one a
// proxyless client asks for by the name it dials, or a sidecar listener,
// named by the ClusterIP:port it stands for. Either names the
// RouteConfiguration of its calls, or carries one inline.
type listener struct {
	name string
	// sidecar is the intercepted address of a sidecar listener; invalid for
	// an API listener.
	sidecar netip.AddrPort
	// route names the RouteConfiguration (RDS), or inline is it.
	route  string
	inline *routeConfig
}

// decodeListener reads a Listener.
func decodeListener(l *listenerv3.Listener) (*listener, error) {
	if l.GetApiListener() == nil {
		addr, route, err := sidecarRoute(l)
		if err != nil {
			return nil, err
		}
		return &listener{name: l.GetName(), sidecar: addr, route: route}, nil
	}
	var hcm hcmv3.HttpConnectionManager
	if err := unmarshalAny(l.GetApiListener().GetApiListener(), hcmType, &hcm); err != nil {
		return nil, fmt.Errorf("listener %s: api_listener: %w", l.GetName(), err)
	}
	out := &listener{name: l.GetName()}
	if rc := hcm.GetRouteConfig(); rc != nil {
		inline, err := decodeRouteConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
		}
		out.inline = inline
		return out, nil
	}
	if out.route = hcm.GetRds().GetRouteConfigName(); out.route == "" {
		return nil, fmt.Errorf("listener %s: no route configuration, neither RDS nor inline", l.GetName())
	}
	return out, nil
}

// sidecarRoute reads a sidecar listener (the shape xds/sidecar gives it):
// its address, and the name of the RouteConfiguration it uses, which is
// also the name a proxyless client dials for that Service port.
func sidecarRoute(l *listenerv3.Listener) (netip.AddrPort, string, error) {
	sa := l.GetAddress().GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: address: %w", l.GetName(), err)
	}
	if len(l.GetFilterChains()) != 1 || len(l.GetFilterChains()[0].GetFilters()) != 1 {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: want one filter chain with one filter", l.GetName())
	}
	var hcm hcmv3.HttpConnectionManager
	if err := unmarshalAny(l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig(), hcmType, &hcm); err != nil {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: http_connection_manager: %w", l.GetName(), err)
	}
	route := hcm.GetRds().GetRouteConfigName()
	if route == "" {
		return netip.AddrPort{}, "", fmt.Errorf("listener %s: no RDS route name", l.GetName())
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue())), route, nil
}
