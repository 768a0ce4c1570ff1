package kubernetes_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// zonedPod is a pod of zonedService: its zone and conditions.
type zonedPod struct {
	pod
	zone string
}

// zonedService is default/greeter with trafficDistribution PreferSameZone
// on port 50051, served by pods.
func zonedService(pods ...zonedPod) *discovery.Service {
	var eps []discovery.Endpoint
	for _, p := range pods {
		eps = append(eps, discovery.Endpoint{
			Address: p.Addr, Ready: p.ready, Serving: p.serving, Terminating: p.terminating,
			Zone: p.zone, Pod: p.Name,
		})
	}
	return &discovery.Service{Key: greeterKey, TrafficDistribution: discovery.PreferSameZone,
		Ports: []discovery.Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: eps}}}
}

// inZone is the share of calls that pods of a zone (named zone-*) answered.
func inZone(counts map[string]int, zone string) float64 {
	n, all := 0, 0
	for pod, k := range counts {
		all += k
		if strings.HasPrefix(pod, zone+"-") {
			n += k
		}
	}
	return float64(n) / float64(max(all, 1))
}

// TestZonePreference: a library client in zone a of a Service with
// trafficDistribution PreferSameZone and two ready pods in each of zones a
// and b sends at least 99% of its calls to zone a's pods (all of them,
// by construction); while it calls without pause, zone a's pods are marked
// not ready, then ready again, then deleted (terminating, stopped, gone),
// and it fails over to zone b and back without a failed call; so it does
// when new pods in zone a stop before discovery notices. A client with no
// zone spreads over both zones.
func TestZonePreference(t *testing.T) {
	for _, pol := range []struct {
		name, lbConfig string
		lb             policy.LB
	}{
		{policies[0].name, policies[0].lbConfig, policy.RoundRobin},
		{policies[1].name, policies[1].lbConfig, policy.LeastRequest},
	} {
		t.Run(pol.name, func(t *testing.T) {
			a := []*greetertest.Pod{greetertest.Start(t, "zone-a-0", greetertest.Options{}), greetertest.Start(t, "zone-a-1", greetertest.Options{})}
			b := []*greetertest.Pod{greetertest.Start(t, "zone-b-0", greetertest.Options{}), greetertest.Start(t, "zone-b-1", greetertest.Options{})}
			set := func(aState func(*greetertest.Pod) pod, withA bool) *discovery.Service {
				var ps []zonedPod
				if withA {
					for _, p := range a {
						ps = append(ps, zonedPod{aState(p), "zone-a"})
					}
				}
				for _, p := range b {
					ps = append(ps, zonedPod{ready(p), "zone-b"})
				}
				svc := zonedService(ps...)
				// A zoned client's service config is the resolver's
				// (balancer/priority over the Service's policy), so the
				// policy comes from the Service.
				svc.Annotations = map[string]string{policy.LBAnnotation: string(pol.lb)}
				return svc
			}
			reg := discovery.NewRegistry()
			reg.Set(set(ready, true))
			dialZone := func(zone string) *grpc.ClientConn {
				opts := append(kubernetes.DialOptions(reg, kubernetes.WithZone(zone)), grpc.WithTransportCredentials(insecure.NewCredentials()),
					grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[%s]}`, pol.lbConfig)))
				conn, err := grpc.NewClient(target, opts...)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				return conn
			}
			conn := dialZone("zone-a")
			greetertest.Eventually(t, 10*time.Second, func() bool { return sayHello(conn) == nil }, "the client never reached a pod")

			counts := greetertest.Spread(t, conn, 1000, 4)
			t.Logf("zone a client, zone a ready: %v", counts)
			if share := inZone(counts, "zone-a"); share < 0.99 {
				t.Fatalf("zone a's pods answered %.1f%% of calls (%v), want at least 99%%", 100*share, counts)
			}
			if counts := greetertest.Spread(t, dialZone(""), 400, 4); inZone(counts, "zone-a") > 0.9 || inZone(counts, "zone-b") > 0.9 {
				t.Errorf("a client with no zone: calls by pod %v, want both zones", counts)
			}

			load := greetertest.StartLoad(t, conn, 4)
			moved := func(zone string) func() bool {
				before := load.Counts()
				return func() bool {
					now := load.Counts()
					for _, p := range append(a, b...) {
						if strings.HasPrefix(p.Name, zone+"-") && now[p.Name] > before[p.Name] {
							return true
						}
					}
					return false
				}
			}
			reg.Set(set(notReady, true))
			greetertest.Eventually(t, 10*time.Second, moved("zone-b"), "calls never failed over to zone b when zone a's pods were not ready")
			greetertest.Eventually(t, 10*time.Second, func() bool { return a[0].OpenConns() == 0 && a[1].OpenConns() == 0 },
				"the client kept connections to zone a's not-ready pods")
			reg.Set(set(ready, true))
			greetertest.Eventually(t, 10*time.Second, func() bool { return a[0].OpenConns() > 0 || a[1].OpenConns() > 0 },
				"the client never returned to zone a once its pods were ready")
			greetertest.Eventually(t, 10*time.Second, moved("zone-a"), "calls never returned to zone a")

			// Deleted, as Kubernetes deletes a pod: terminating while it
			// finishes its calls, then stopped, then gone from the slice.
			reg.Set(set(draining, true))
			greetertest.Eventually(t, 10*time.Second, func() bool { return a[0].OpenConns() == 0 && a[1].OpenConns() == 0 },
				"the client kept connections to zone a's terminating pods")
			a[0].Stop()
			a[1].Stop()
			reg.Set(set(ready, false))
			greetertest.Eventually(t, 10*time.Second, moved("zone-b"), "calls stopped after zone a's pods were deleted")

			// New pods in zone a stop before discovery notices: the client
			// fails over on its own (balancer/priority), as grpc-go's xDS
			// client does between locality priorities.
			a = []*greetertest.Pod{greetertest.Start(t, "zone-a-2", greetertest.Options{}), greetertest.Start(t, "zone-a-3", greetertest.Options{})}
			reg.Set(set(ready, true))
			greetertest.Eventually(t, 10*time.Second, moved("zone-a"), "calls never reached zone a's new pods")
			a[0].Stop()
			a[1].Stop()
			greetertest.Eventually(t, 10*time.Second, moved("zone-b"), "calls never failed over to zone b when zone a's pods stopped before discovery noticed")
			counts, failed := load.Stop()
			t.Logf("under load: %v", counts)
			if len(failed) > 0 {
				t.Fatalf("%d calls failed during the failovers, first: %v", len(failed), failed[0])
			}
		})
	}
}
