package proxy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
)

// TestXDSGRPCRoute: a GRPCRoute attached to a Service, through Ballast's
// control plane (registry → policy model → xDS) and the sidecar's xDS
// client: a method and header match with its request and response
// filters as the server and client see them, a 90/10 split, and a backend
// that does not exist failing its half of the calls with UNAVAILABLE
// naming it.
func TestXDSGRPCRoute(t *testing.T) {
	const nodeID = "ballast~client.default"
	reg := discovery.NewRegistry()
	reg.Set(echoService("greeter", startEchoBackend(t, "v1")))
	reg.Set(echoService("greeter-v2", startEchoBackend(t, "v2")))
	reg.SetRoute(policytest.GRPCRoute(t, "canary", 1, policytest.CanaryRules))

	cp := startBallastControlPlane(t, nodeID, reg.List()...)
	_, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
	conn := dial(t, addr)

	policytest.CheckRoute(t, conn)
}

// echoService is Service default/name, port 50051 served by addrs.
func echoService(name string, addrs ...string) *discovery.Service {
	p := discovery.Port{Port: 50051, Protocol: "TCP"}
	for i, a := range addrs {
		p.Endpoints = append(p.Endpoints, discovery.Endpoint{Address: netip.MustParseAddrPort(a), Ready: true, Serving: true, Pod: fmt.Sprintf("%s-%d", name, i)})
	}
	return &discovery.Service{Key: discovery.Key{Namespace: "default", Name: name}, Ports: []discovery.Port{p}}
}
