package client

import (
	"fmt"
	"net/netip"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/ballast-dev/ballast/xds/sidecar"
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
		addr, route, err := sidecar.Route(l)
		if err != nil {
			return nil, err
		}
		return &listener{name: l.GetName(), sidecar: addr, route: route}, nil
	}
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(&hcm); err != nil {
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
