package client

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/xds"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// plane is Ballast's control plane for a registry, served on loopback.
type plane struct {
	srv  *xds.Server
	addr string
	stop func()
}

// servePlane runs Ballast's control plane for reg on lis until the
// returned plane is stopped (also at cleanup).
func servePlane(t *testing.T, reg *discovery.Registry, lis net.Listener) *plane {
	t.Helper()
	srv, err := xds.NewServer(xds.Config{Registry: reg, Log: quiet, Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	srv.Register(gs)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); srv.Run(ctx) }()
	go func() { defer wg.Done(); gs.Serve(lis) }()
	var once sync.Once
	stop := func() { once.Do(func() { gs.Stop(); cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return &plane{srv: srv, addr: lis.Addr().String(), stop: stop}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// runClient runs a Client of cfg until the test ends.
func runClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	cfg.Log = quiet
	if cfg.Node.ID == "" {
		cfg.Node = Node{ID: "ballast~client.default"}
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func clusterIPService(name, ip string, port int32) *discovery.Service {
	return &discovery.Service{
		Key:        discovery.Key{Namespace: "default", Name: name},
		ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)},
		Ports:      []discovery.Port{{Port: port, Protocol: "TCP"}},
	}
}

// The sidecar learns which ClusterIP:port is which Service from the
// control plane, follows changes, and keeps its map while the control plane
// is down.
func TestSidecarListenersFollowTheControlPlane(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(clusterIPService("greeter", "10.96.0.10", 50051))
	lis := listen(t)
	addr := lis.Addr().String()
	cp := servePlane(t, reg, lis)
	d := runClient(t, Config{Server: addr, SidecarListeners: true})

	greeter := netip.MustParseAddrPort("10.96.0.10:50051")
	eventually(t, "synced", d.SidecarListenersSynced)
	if got, ok := d.Target(greeter); !ok || got != "xds:///greeter.default.svc.cluster.local:50051" {
		t.Fatalf("Target(%s) = %q, %v; want the Service's xds:/// target", greeter, got, ok)
	}
	if got, ok := d.Target(netip.MustParseAddrPort("[::ffff:10.96.0.10]:50051")); !ok || !strings.HasPrefix(got, "xds:///greeter.") {
		t.Fatalf("an IPv4-mapped destination is not found: %q, %v", got, ok)
	}
	if _, ok := d.Target(netip.MustParseAddrPort("10.96.0.10:80")); ok {
		t.Fatal("a port the Service does not have has a target")
	}

	other := netip.MustParseAddrPort("10.96.0.11:8080")
	reg.Set(clusterIPService("other", "10.96.0.11", 8080))
	eventually(t, "the new Service's listener", func() bool { _, ok := d.Target(other); return ok })

	cp.stop()
	if _, ok := d.Target(greeter); !ok {
		t.Fatal("the map was dropped when the control plane went away")
	}
	lis2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("re-listen on %s: %v", addr, err)
	}
	reg.Delete(discovery.Key{Namespace: "default", Name: "other"})
	servePlane(t, reg, lis2)
	eventually(t, "the restarted control plane's listeners", func() bool { _, ok := d.Target(other); return !ok })
	if _, ok := d.Target(greeter); !ok {
		t.Fatal("greeter lost after the control plane restarted")
	}
}
