package xds

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter/greetertest"
)

// zonePods are two greeters in each of zone-a and zone-b, named by zone.
type zonePods struct{ a, b []*greetertest.Pod }

func startZonePods(t *testing.T) zonePods {
	start := func(name string) *greetertest.Pod { return greetertest.Start(t, name, greetertest.Options{}) }
	return zonePods{
		a: []*greetertest.Pod{start("zone-a-0"), start("zone-a-1")},
		b: []*greetertest.Pod{start("zone-b-0"), start("zone-b-1")},
	}
}

// service is default/greeter (port 50051, trafficDistribution
// PreferSameZone) with zone b's pods ready and zone a's as a says: ready,
// not ready, terminating, or gone.
func (z zonePods) service(a string) *discovery.Service {
	var eps []discovery.Endpoint
	if a != "gone" {
		for _, p := range z.a {
			eps = append(eps, discovery.Endpoint{Address: p.Addr, Zone: "zone-a", Pod: p.Name,
				Ready: a == "ready", Serving: a != "not ready", Terminating: a == "terminating"})
		}
	}
	for _, p := range z.b {
		eps = append(eps, discovery.Endpoint{Address: p.Addr, Zone: "zone-b", Pod: p.Name, Ready: true, Serving: true})
	}
	return &discovery.Service{Key: discovery.Key{Namespace: "default", Name: "greeter"}, TrafficDistribution: discovery.PreferSameZone,
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

// movedTo is a condition: calls answered by a zone's pods since it was made.
func movedTo(load *greetertest.Load, zone string) func() bool {
	before := load.Counts()
	return func() bool {
		for pod, n := range load.Counts() {
			if strings.HasPrefix(pod, zone+"-") && n > before[pod] {
				return true
			}
		}
		return false
	}
}

// dialXDSZone is dialXDS for a client whose bootstrap puts it in zone.
func dialXDSZone(t *testing.T, p *plane, target, zone string) *grpc.ClientConn {
	t.Helper()
	bs, err := Bootstrap{Server: p.addr, Pod: "client-" + zone, Namespace: "default", Zone: zone}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bs)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestProxylessZonePreference: grpc-go's own xDS client, with zone-a in
// its bootstrap's locality, against the control plane serving a Service
// with trafficDistribution PreferSameZone and two ready pods in each of
// zones a and b: at least 99% of its calls stay in zone a (a zone-b
// client's in zone b, from the same control plane). Under load, zone a's
// pods marked not ready, ready again, then deleted (terminating, stopped,
// gone) move its calls to zone b and back with no failed call; and when
// new zone-a pods stop before discovery says so, grpc-go fails over to
// zone b by itself (zone b is its priority 1), again with no failed call.
func TestProxylessZonePreference(t *testing.T) {
	p := startPlane(t)
	z := startZonePods(t)
	p.reg.Set(z.service("ready"))
	const target = "xds:///greeter.default:50051"
	conn := dialXDSZone(t, p, target, "zone-a")
	eventually(t, "the client reaches a pod", func() bool { _, err := call(t.Context(), conn); return err == nil })

	counts := greetertest.Spread(t, conn, 1000, 4)
	t.Logf("zone-a client: %v", counts)
	if share := inZone(counts, "zone-a"); share < 0.99 {
		t.Fatalf("zone a's pods answered %.1f%% of a zone-a client's calls (%v), want at least 99%%", 100*share, counts)
	}
	other := dialXDSZone(t, p, target, "zone-b")
	eventually(t, "the zone-b client reaches a pod", func() bool { _, err := call(t.Context(), other); return err == nil })
	if counts := greetertest.Spread(t, other, 400, 4); inZone(counts, "zone-b") < 0.99 {
		t.Fatalf("a zone-b client's calls went %v, want at least 99%% to zone b", counts)
	}

	load := greetertest.StartLoad(t, conn, 4)
	p.reg.Set(z.service("not ready"))
	eventually(t, "calls fail over to zone b", movedTo(load, "zone-b"))
	eventually(t, "the client lets go of zone a", func() bool { return z.a[0].OpenConns() == 0 && z.a[1].OpenConns() == 0 })
	p.reg.Set(z.service("ready"))
	eventually(t, "calls return to zone a", movedTo(load, "zone-a"))

	// Deleted, as Kubernetes deletes pods: terminating while they finish
	// their calls, stopped, then gone from the slices.
	p.reg.Set(z.service("terminating"))
	eventually(t, "calls fail over to zone b", movedTo(load, "zone-b"))
	eventually(t, "the client lets go of zone a", func() bool { return z.a[0].OpenConns() == 0 && z.a[1].OpenConns() == 0 })
	z.a[0].Stop()
	z.a[1].Stop()
	p.reg.Set(z.service("gone"))

	// New pods in zone a, which then go away before discovery notices:
	// the client's own priority failover keeps the calls going.
	z.a = []*greetertest.Pod{greetertest.Start(t, "zone-a-2", greetertest.Options{}), greetertest.Start(t, "zone-a-3", greetertest.Options{})}
	p.reg.Set(z.service("ready"))
	eventually(t, "calls go to zone a's new pods", movedTo(load, "zone-a"))
	eventually(t, "zone b gets no more calls", func() bool {
		before := load.Counts()
		return !eventuallyWithin(200*time.Millisecond, movedTo(load, "zone-b")) && load.Counts()["zone-a-2"] > before["zone-a-2"]
	})
	z.a[0].Stop()
	z.a[1].Stop()
	eventually(t, "calls fail over to zone b by the client's priorities", movedTo(load, "zone-b"))
	p.reg.Set(z.service("gone"))
	counts, failed := load.Stop()
	t.Logf("under load: %v", counts)
	if len(failed) > 0 {
		t.Fatalf("%d calls failed during the failovers, first: %v", len(failed), failed[0])
	}
	for _, typ := range []string{"listener", "route", "cluster", "endpoints"} {
		if n := counterValue(t, p.metrics, "ballast_xds_nacks_total", typ); n != 0 {
			t.Errorf("the clients NACKed %v %s responses", n, typ)
		}
	}
}

// eventuallyWithin reports whether cond holds within d, polling.
func eventuallyWithin(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	return false
}
