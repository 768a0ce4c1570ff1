package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/xds"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// servePlane runs Ballast's control plane for reg on lis until the
// returned stop is called (also at cleanup).
func servePlane(t *testing.T, reg *discovery.Registry, lis net.Listener) (stop func()) {
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
	stop = func() { once.Do(func() { gs.Stop(); cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
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
	stop := servePlane(t, reg, lis)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d := NewSidecarListeners(conn, "ballast-proxy~default~client", quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()

	greeter := netip.MustParseAddrPort("10.96.0.10:50051")
	eventually(t, "synced", d.Synced)
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

	stop()
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

func TestSidecarTargetsRejectsBadListeners(t *testing.T) {
	anyOf := func(t *testing.T, l *listenerv3.Listener) *anypb.Any {
		a, err := anypb.New(l)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	notAListener, err := anypb.New(wrapperspb.String("x"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		resources func(t *testing.T) []*anypb.Any
		wantErr   string
	}{
		{"not a listener", func(*testing.T) []*anypb.Any { return []*anypb.Any{notAListener} }, "resource 0:"},
		{"api listener", func(t *testing.T) []*anypb.Any {
			return []*anypb.Any{anyOf(t, &listenerv3.Listener{Name: "greeter.default:50051"})}
		}, "listener greeter.default:50051: address:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := sidecarTargets(tt.resources(t))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
