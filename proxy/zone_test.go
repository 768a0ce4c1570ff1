package proxy

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/xds"
	"github.com/ballast-dev/ballast/xds/client"
)

// startXDSServer runs Ballast's control plane (xds.Server) over reg on
// loopback until the test ends, and returns its address.
func startXDSServer(t *testing.T, reg *discovery.Registry) string {
	t.Helper()
	srv, err := xds.NewServer(xds.Config{Registry: reg, Log: quiet, Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.Run(ctx) })
	wg.Go(func() { gs.Serve(lis) })
	t.Cleanup(func() { gs.Stop(); cancel(); wg.Wait() })
	return lis.Addr().String()
}

// TestXDSZonePreference: the sidecar, its xDS node in zone-a, proxies calls
// to a Service with trafficDistribution PreferSameZone and two ready pods
// in each of zones a and b, served by Ballast's control plane: at least
// 99% of the calls stay in zone a; under load, zone a's pods marked not
// ready, ready again, then deleted (terminating, stopped, gone), and new
// pods there stopped before discovery notices, move the calls to zone b
// and back with no failed call.
func TestXDSZonePreference(t *testing.T) {
	start := func(name string) *greetertest.Pod { return greetertest.Start(t, name, greetertest.Options{}) }
	a := []*greetertest.Pod{start("zone-a-0"), start("zone-a-1")}
	b := []*greetertest.Pod{start("zone-b-0"), start("zone-b-1")}
	service := func(state string) *discovery.Service {
		var eps []discovery.Endpoint
		if state != "gone" {
			for _, p := range a {
				eps = append(eps, discovery.Endpoint{Address: p.Addr, Zone: "zone-a", Pod: p.Name,
					Ready: state == "ready", Serving: state != "not ready", Terminating: state == "terminating"})
			}
		}
		for _, p := range b {
			eps = append(eps, discovery.Endpoint{Address: p.Addr, Zone: "zone-b", Pod: p.Name, Ready: true, Serving: true})
		}
		return &discovery.Service{Key: keyOf("default", "greeter"), TrafficDistribution: discovery.PreferSameZone,
			Ports: []discovery.Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: eps}}}
	}
	reg := discovery.NewRegistry()
	reg.Set(service("ready"))
	cp := startXDSServer(t, reg)
	c, err := client.New(client.Config{Server: cp, Log: quiet,
		Node: client.Node{ID: "ballast~client-0.default", Zone: "zone-a"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	_, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: c})
	conn := dial(t, addr)

	inZone := func(counts map[string]int, zone string) float64 {
		n, all := 0, 0
		for pod, k := range counts {
			all += k
			if strings.HasPrefix(pod, zone+"-") {
				n += k
			}
		}
		return float64(n) / float64(max(all, 1))
	}
	greetertest.Eventually(t, 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "zone"})
		return err == nil
	}, "no call went through the sidecar")
	counts := greetertest.Spread(t, conn, 1000, 4)
	t.Logf("zone-a sidecar: %v", counts)
	if share := inZone(counts, "zone-a"); share < 0.99 {
		t.Fatalf("zone a's pods answered %.1f%% of calls (%v), want at least 99%%", 100*share, counts)
	}

	load := greetertest.StartLoad(t, conn, 4)
	movedTo := func(zone string) func() bool {
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
	reg.Set(service("not ready"))
	greetertest.Eventually(t, 20*time.Second, movedTo("zone-b"), "calls never failed over to zone b")
	greetertest.Eventually(t, 20*time.Second, func() bool { return a[0].OpenConns() == 0 && a[1].OpenConns() == 0 },
		"the sidecar kept connections to zone a's not-ready pods")
	reg.Set(service("ready"))
	greetertest.Eventually(t, 20*time.Second, movedTo("zone-a"), "calls never returned to zone a")
	reg.Set(service("terminating"))
	greetertest.Eventually(t, 20*time.Second, movedTo("zone-b"), "calls never failed over to zone b when zone a's pods terminated")
	greetertest.Eventually(t, 20*time.Second, func() bool { return a[0].OpenConns() == 0 && a[1].OpenConns() == 0 },
		"the sidecar kept connections to zone a's terminating pods")
	a[0].Stop()
	a[1].Stop()
	reg.Set(service("gone"))
	greetertest.Eventually(t, 20*time.Second, movedTo("zone-b"), "calls stopped after zone a's pods were deleted")
	// New pods in zone a stop before discovery notices: the sidecar fails
	// over on its own (balancer/priority over the EDS priorities), as
	// grpc-go's xDS client does.
	a = []*greetertest.Pod{start("zone-a-2"), start("zone-a-3")}
	reg.Set(service("ready"))
	greetertest.Eventually(t, 20*time.Second, movedTo("zone-a"), "calls never reached zone a's new pods")
	a[0].Stop()
	a[1].Stop()
	greetertest.Eventually(t, 20*time.Second, movedTo("zone-b"), "calls never failed over to zone b when zone a's pods stopped before discovery noticed")
	counts, failed := load.Stop()
	t.Logf("under load: %v", counts)
	if len(failed) > 0 {
		t.Fatalf("%d calls failed during the failovers, first: %v", len(failed), failed[0])
	}
}
