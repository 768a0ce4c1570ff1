package xds

import (
	"log/slog"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/xds/internal/cases"
)

func TestAliasKey(t *testing.T) {
	tests := []struct {
		name, bareNS string
		want         discovery.Key
		ok           bool
	}{
		{"greeter:50051", "", discovery.Key{Namespace: "default", Name: "greeter"}, true},
		{"greeter:50051", "apps", discovery.Key{Namespace: "apps", Name: "greeter"}, true},
		{"greeter:50051", "-", discovery.Key{}, false},
		{"greeter.apps:50051", "", discovery.Key{Namespace: "apps", Name: "greeter"}, true},
		{"greeter.apps.svc:50051", "", discovery.Key{Namespace: "apps", Name: "greeter"}, true},
		{"greeter.apps.svc.cluster.local:50051", "", discovery.Key{}, false}, // the canonical name
		{"greeter.apps.other:50051", "", discovery.Key{}, false},
		{"10.96.0.10:50051", "", discovery.Key{}, false}, // a sidecar listener
		{"greeter", "", discovery.Key{}, false},
		{":50051", "", discovery.Key{}, false},
		{".apps:50051", "", discovery.Key{}, false},
		{"xdstp://authority/envoy.config.listener.v3.Listener/greeter", "", discovery.Key{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.bareNS, func(t *testing.T) {
			got, ok := aliasKey(tt.name, Options{BareNameNamespace: tt.bareNS})
			if got != tt.want || ok != tt.ok {
				t.Fatalf("aliasKey(%q) = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// TestAliasListenersOnDemand: the server holds each port's Listener of its
// fully qualified name, and builds an alias's when a client asks for it,
// over state of the world or delta, also before its Service exists; the
// alias goes with its Service.
func TestAliasListenersOnDemand(t *testing.T) {
	greeter := &discovery.Service{Key: discovery.Key{Namespace: "default", Name: "greeter"}, Ports: []discovery.Port{{Port: 50051, Protocol: "TCP"}}}
	later := &discovery.Service{Key: discovery.Key{Namespace: "apps", Name: "later"}, Ports: []discovery.Port{{Port: 80, Protocol: "TCP"}}}
	node := &corev3.Node{Id: "ballast~client.default"}
	tests := []struct {
		name  string
		delta bool
		alias string
		svc   *discovery.Service
		set   bool // svc is set only once the client has asked
	}{
		{"sotw, bare name", false, "greeter:50051", greeter, false},
		{"sotw, name.ns", false, "greeter.default:50051", greeter, false},
		{"delta, name.ns.svc", true, "greeter.default.svc:50051", greeter, false},
		{"sotw, before the Service exists", false, "later.apps:80", later, true},
		{"delta, before the Service exists", true, "later.apps.svc:80", later, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startPlane(t)
			if !tt.set {
				p.reg.Set(tt.svc)
				waitResources(t, p, resourcev3.ListenerType, 1)
			}
			if _, ok := p.srv.caches[resourcev3.ListenerType].GetResources()[tt.alias]; ok {
				t.Fatalf("%s built before any client asked for it", tt.alias)
			}
			// recv returns the names of the Listeners of the next response.
			var recv func() []string
			if tt.delta {
				s := deltaStream(t, p.addr)
				if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: []string{tt.alias}}); err != nil {
					t.Fatal(err)
				}
				recv = func() []string {
					resp, err := s.Recv()
					if err != nil {
						t.Fatal(err)
					}
					var names []string
					for _, r := range resp.GetResources() {
						l := &listenerv3.Listener{}
						if err := r.GetResource().UnmarshalTo(l); err != nil {
							t.Fatal(err)
						}
						names = append(names, l.GetName())
					}
					if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: resp.GetNonce()}); err != nil {
						t.Fatal(err)
					}
					return names
				}
			} else {
				s := adsStream(t, p.addr)
				req := &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType, ResourceNames: []string{tt.alias}}
				if err := s.Send(req); err != nil {
					t.Fatal(err)
				}
				recv = func() []string {
					resp, err := s.Recv()
					if err != nil {
						t.Fatal(err)
					}
					// The ACK, which opens the next watch.
					if err := s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResourceNames: []string{tt.alias},
						VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
						t.Fatal(err)
					}
					return listenerNames(t, resp)
				}
			}
			if tt.set {
				// State of the world answers a first request at once, with
				// nothing; delta waits for the resource.
				if !tt.delta {
					if got := recv(); len(got) != 0 {
						t.Fatalf("before the Service exists: listeners %q, want none", got)
					}
					eventually(t, "the ACK's watch", func() bool { return p.srv.caches[resourcev3.ListenerType].NumWatches(tt.alias) == 1 })
				} else {
					eventually(t, "the watch", func() bool { return p.srv.caches[resourcev3.ListenerType].NumWatches(tt.alias) == 1 })
				}
				p.reg.Set(tt.svc)
			}
			if got := recv(); !slices.Equal(got, []string{tt.alias}) {
				t.Fatalf("listeners %q, want %s", got, tt.alias)
			}
			if n := p.srv.caches[resourcev3.ListenerType].NumResources(); n != 2 {
				t.Fatalf("%d Listeners held, want 2: the canonical one and the alias asked for", n)
			}
			p.reg.Delete(tt.svc.Key)
			waitResources(t, p, resourcev3.ListenerType, 0)
		})
	}
}

// TestServedListenersCanonical: of every golden case's Listeners, the
// server holds, when no client has asked for an alias, one per port: the
// one named as the port's RouteConfiguration, which is the fully
// qualified name, routes or not.
func TestServedListenersCanonical(t *testing.T) {
	for _, tt := range cases.Golden() {
		t.Run(tt.Name, func(t *testing.T) {
			opts := Options{DefaultPolicy: tt.DefaultPolicy, ClusterDomain: tt.ClusterDomain, BareNameNamespace: tt.BareNameNamespace}
			srv, err := NewServer(Config{Registry: discovery.NewRegistry(), Translate: opts, Metrics: prometheus.NewRegistry(),
				Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			for _, svc := range tt.Services {
				res, err := TranslateService(svc, opts)
				if err != nil {
					t.Fatal(err)
				}
				got, aliases := srv.servedListeners(res, nil)
				var names, want []string
				for _, l := range got {
					names = append(names, l.Name)
				}
				for _, p := range tcpPorts(svc) {
					want = append(want, ClusterName(svc.Key, p.Port, opts))
				}
				slices.Sort(want)
				if !slices.Equal(names, want) || len(aliases) != 0 {
					t.Errorf("%s: Listeners %q, aliases %q; want %q and none", svc.Key, names, aliases, want)
				}
			}
		})
	}
}
