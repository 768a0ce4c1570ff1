package xds

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// The server's translation of a changed Service is always what
// TranslateService says, but for the alias Listeners no client asked for;
// when only the endpoints changed, it keeps the Listeners, Routes and
// Clusters it already serves (the same objects, so nothing but the
// ClusterLoadAssignments is compared or re-sent).
func TestServerTranslateKeepsShape(t *testing.T) {
	base := func() *discovery.Service {
		return &discovery.Service{
			Key: discovery.Key{Namespace: "ns", Name: "svc"},
			Ports: []discovery.Port{
				{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: []discovery.Endpoint{
					{Address: netip.MustParseAddrPort("10.0.0.1:8080"), Ready: true, Serving: true, Zone: "a"},
					{Address: netip.MustParseAddrPort("10.0.0.2:8080"), Ready: true, Serving: true, Zone: "b"},
				}},
				{Name: "dns", Port: 53, Protocol: "UDP"},
			},
		}
	}
	tests := []struct {
		name   string
		change func(*discovery.Service)
		kept   bool // Listeners, Routes and Clusters kept from before
	}{
		{"an endpoint replaced", func(s *discovery.Service) {
			s.Ports[0].Endpoints[1].Address = netip.MustParseAddrPort("10.0.0.3:8080")
		}, true},
		{"an endpoint no longer ready", func(s *discovery.Service) { s.Ports[0].Endpoints[0].Ready = false }, true},
		{"every endpoint gone", func(s *discovery.Service) { s.Ports[0].Endpoints = nil }, true},
		{"nothing changed", func(*discovery.Service) {}, true},
		{"the port number changed", func(s *discovery.Service) { s.Ports[0].Port = 50052 }, false},
		{"a port added", func(s *discovery.Service) {
			s.Ports = append(s.Ports, discovery.Port{Name: "http", Port: 80, Protocol: "TCP"})
		}, false},
		{"the UDP port became TCP", func(s *discovery.Service) { s.Ports[1].Protocol = "TCP" }, false},
		{"the LB policy annotation set", func(s *discovery.Service) {
			s.Annotations = map[string]string{policy.LBAnnotation: "least_request"}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := NewServer(Config{Registry: discovery.NewRegistry(), Metrics: prometheus.NewRegistry(),
				Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			// A client asked for one alias of the port, which is built
			// while the port is there.
			asked := "svc.ns:50051"
			before, err := srv.translate(base(), servedService{aliases: []string{asked}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			svc := base()
			tt.change(svc)
			got, err := srv.translate(svc, before, nil)
			if err != nil {
				t.Fatal(err)
			}
			want, err := TranslateService(svc, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var wantAliases []string
			want.Listeners = slices.DeleteFunc(want.Listeners, func(l *listenerv3.Listener) bool {
				if l.Name == asked {
					wantAliases = append(wantAliases, asked)
					return false
				}
				return !slices.ContainsFunc(want.Routes, func(rc *routev3.RouteConfiguration) bool { return rc.Name == l.Name })
			})
			if !slices.Equal(got.aliases, wantAliases) {
				t.Errorf("aliases %q, want %q", got.aliases, wantAliases)
			}
			wantByType, err := packAll(byType(want))
			if err != nil {
				t.Fatal(err)
			}
			if len(got.resources) != len(wantByType) {
				t.Fatalf("%d resources, want %d", len(got.resources), len(wantByType))
			}
			for i, w := range wantByType {
				g := got.resources[i]
				if g.cache != w.cache || g.name != w.name || !proto.Equal(g.res, w.res) {
					t.Errorf("%s %s: %v, want %s %s: %v", typeName(g.cache), g.name, g.res, typeName(w.cache), w.name, w.res)
				}
				if w.cache == resourcev3.EndpointType {
					continue
				}
				old, _ := before.resources.get(w.cache, w.name)
				if same := old == g.res; same != tt.kept {
					t.Errorf("%s %s kept from before: %v, want %v", typeName(w.cache), w.name, same, tt.kept)
				}
			}
		})
	}
}
