package client

import (
	"net/netip"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	wlistenerv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/listener/v3"
	"github.com/ballast-dev/ballast/xds/sidecar"
)

// onWire is m, one of Envoy's messages (as the control plane renders
// them), as the client reads it: marshalled and unmarshalled into the
// client's own message T.
func onWire[T any, PT interface {
	*T
	proto.Message
}](t testing.TB, m proto.Message) PT {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := PT(new(T))
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// A sidecar listener that is not the shape xds/sidecar gives it is an
// error naming the listener and what is wrong, and a good one names its
// address and route, as the control plane wrote them.
func TestSidecarRoute(t *testing.T) {
	hcm := mustAny(t, &hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{
		Rds: &hcmv3.Rds{RouteConfigName: "cart.shop.svc.cluster.local:80"}}})
	good := sidecar.Listener(netip.MustParseAddrPort("10.96.0.10:80"), hcm)
	noChain := proto.Clone(good).(*listenerv3.Listener)
	noChain.FilterChains = nil
	badAddr := proto.Clone(good).(*listenerv3.Listener)
	badAddr.Address.GetSocketAddress().Address = "cart.shop"
	noRDS := sidecar.Listener(netip.MustParseAddrPort("10.96.0.10:80"), mustAny(t, &hcmv3.HttpConnectionManager{}))
	notHCM := sidecar.Listener(netip.MustParseAddrPort("10.96.0.10:80"), mustAny(t, &listenerv3.Listener{}))
	tests := []struct {
		name      string
		l         *listenerv3.Listener
		wantAddr  netip.AddrPort
		wantRoute string
		wantErr   string
	}{
		{name: "good", l: good, wantAddr: netip.MustParseAddrPort("10.96.0.10:80"), wantRoute: "cart.shop.svc.cluster.local:80"},
		{name: "no filter chain", l: noChain, wantErr: "listener 10.96.0.10:80: want one filter chain with one filter"},
		{name: "hostname address", l: badAddr, wantErr: "listener 10.96.0.10:80: address:"},
		{name: "no RDS", l: noRDS, wantErr: "listener 10.96.0.10:80: no RDS route name"},
		{name: "not a connection manager", l: notHCM, wantErr: "http_connection_manager: mismatched message type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, route, err := sidecarRoute(onWire[wlistenerv3.Listener](t, tt.l))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || addr != tt.wantAddr || route != tt.wantRoute {
				t.Fatalf("got %v %q %v, want %v %q", addr, route, err, tt.wantAddr, tt.wantRoute)
			}
		})
	}
}
