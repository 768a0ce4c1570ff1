package client

import (
	"reflect"
	"slices"
	"strconv"
	"testing"

	"github.com/ballast-dev/ballast/xds"
	wclusterv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/cluster/v3"
	wendpointv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/endpoint/v3"
	wlistenerv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/listener/v3"
	wroutev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/route/v3"
	"github.com/ballast-dev/ballast/xds/internal/cases"
)

// What the control plane renders, the decoders read back as the same
// model, for every golden case: listeners (API and sidecar) name the
// port's route, the route's virtual host serves every dial name with the
// same rules, and Clusters and endpoints come back as they went in.
func TestRoundTrip(t *testing.T) {
	for _, tc := range cases.Golden() {
		t.Run(tc.Name, func(t *testing.T) {
			opts := xds.Options{DefaultPolicy: tc.DefaultPolicy, ClusterDomain: tc.ClusterDomain, BareNameNamespace: tc.BareNameNamespace}
			for _, svc := range tc.Services {
				ports, err := xds.Model(svc, opts)
				if err != nil {
					t.Fatal(err)
				}
				res, err := xds.TranslateService(svc, opts)
				if err != nil {
					t.Fatal(err)
				}
				listeners := map[string]*listener{}
				for _, l := range append(res.Listeners, res.SidecarListeners...) {
					d, err := decodeListener(onWire[wlistenerv3.Listener](t, l))
					if err != nil {
						t.Fatalf("listener %s: %v", l.GetName(), err)
					}
					listeners[l.GetName()] = d
				}
				routes := map[string]*routeConfig{}
				for _, r := range res.Routes {
					d, err := decodeRouteConfig(onWire[wroutev3.RouteConfiguration](t, r))
					if err != nil {
						t.Fatal(err)
					}
					routes[d.name] = d
				}
				clusters := map[string]*cluster{}
				for _, c := range res.Clusters {
					d, err := decodeCluster(onWire[wclusterv3.Cluster](t, c))
					if err != nil {
						t.Fatal(err)
					}
					clusters[d.policy.Name] = d
				}
				for _, cla := range res.Endpoints {
					got, err := decodeEndpoints(onWire[wendpointv3.ClusterLoadAssignment](t, cla))
					if err != nil {
						t.Fatal(err)
					}
					found := false
					for _, m := range ports {
						if slices.Contains(m.Unavailable, got.Cluster) {
							found = true
							if len(got.Endpoints) != 0 {
								t.Errorf("unavailable cluster %s has endpoints %+v", got.Cluster, got.Endpoints)
							}
						}
						if m.Endpoints.Cluster == got.Cluster {
							found = true
							if !reflect.DeepEqual(got, m.Endpoints) {
								t.Errorf("endpoints of %s:\n got %+v\nwant %+v", got.Cluster, got, m.Endpoints)
							}
						}
					}
					if !found {
						t.Errorf("endpoints of %s, which the model has not", got.Cluster)
					}
				}
				for _, m := range ports {
					for _, name := range m.Route.Domains {
						l := listeners[name]
						if l == nil || l.route != m.Route.Name {
							t.Fatalf("listener %s: %+v, want one naming route %s", name, l, m.Route.Name)
						}
						rc := routes[l.route]
						if rc == nil {
							t.Fatalf("no route configuration %s", l.route)
						}
						got, ok := rc.hostFor(name)
						if !ok || !reflect.DeepEqual(got, m.Route) {
							t.Errorf("route for %s:\n got %+v\nwant %+v", name, got, m.Route)
						}
					}
					for _, ip := range svc.ClusterIPs {
						l := listeners[ip.String()+":"+itoa(m.Port)]
						if ip.Is6() {
							l = listeners["["+ip.String()+"]:"+itoa(m.Port)]
						}
						if l == nil || !l.sidecar.IsValid() || l.sidecar.Port() != m.Port || l.route != m.Route.Name {
							t.Errorf("sidecar listener of %s port %d: %+v, want one naming route %s", ip, m.Port, l, m.Route.Name)
						}
					}
					for _, name := range m.Unavailable {
						if c := clusters[name]; c == nil || c.eds != name {
							t.Errorf("unavailable cluster %s: %+v, want one with its own (empty) endpoints", name, c)
						}
					}
					c := clusters[m.Cluster.Name]
					if c == nil || !reflect.DeepEqual(c.policy, m.Cluster) || c.eds != m.Endpoints.Cluster {
						t.Errorf("cluster %s: %+v, want %+v with endpoints %s", m.Cluster.Name, c, m.Cluster, m.Endpoints.Cluster)
					}
				}
			}
		})
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }
