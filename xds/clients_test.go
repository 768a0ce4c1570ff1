package xds

import (
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBadRequests: requests the control plane cannot serve end their
// stream with a status that says why, before the client table records
// anything of them, and the server goes on serving.
func TestBadRequests(t *testing.T) {
	p := startPlane(t)
	node := &corev3.Node{Id: "ballast~test"}
	many := make([]string, maxResourceNames+1)
	for i := range many {
		many[i] = fmt.Sprintf("s%d", i)
	}
	const secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	tests := []struct {
		name  string
		sotw  *discoveryv3.DiscoveryRequest
		delta *discoveryv3.DeltaDiscoveryRequest
		code  codes.Code
		msg   string
	}{
		{name: "unknown type URL", sotw: &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: secret},
			code: codes.InvalidArgument, msg: `unknown resource type "` + secret + `"`},
		{name: "no node", sotw: &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"a"}},
			code: codes.InvalidArgument, msg: "has no node id"},
		{name: "too many names", sotw: &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: many},
			code: codes.ResourceExhausted, msg: "over the limit of 100000"},
		{name: "delta: unknown type URL", delta: &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: secret},
			code: codes.InvalidArgument, msg: "unknown resource type"},
		{name: "delta: no node", delta: &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a"}},
			code: codes.InvalidArgument, msg: "has no node id"},
		{name: "delta: too many names", delta: &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: many},
			code: codes.ResourceExhausted, msg: "over the limit of 100000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.sotw != nil {
				s := adsStream(t, p.addr)
				if err := s.Send(tc.sotw); err != nil {
					t.Fatal(err)
				}
				_, err = s.Recv()
			} else {
				s := deltaStream(t, p.addr)
				if err := s.Send(tc.delta); err != nil {
					t.Fatal(err)
				}
				_, err = s.Recv()
			}
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("got %v, want %v naming %q", err, tc.code, tc.msg)
			}
			eventually(t, "the client table empty once the refused stream ended", func() bool {
				p.srv.clients.mu.Lock()
				defer p.srv.clients.mu.Unlock()
				return len(p.srv.clients.streams) == 0
			})
		})
	}
	// A good request on a new stream is served.
	s := adsStream(t, p.addr)
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("a good request after the bad ones: %v", err)
	}
}

// deltaStream opens a raw delta ADS stream to the server at addr, closed
// with the test.
func deltaStream(t *testing.T, addr string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	ads, ctx := adsService(t, addr)
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
