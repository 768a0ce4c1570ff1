// Package customlb_test checks, with grpc-go's real xDS client, that a
// Cluster asking for peak-EWMA runs the balancer registered under
// "ballast_peak_ewma" in a client that has one. It is its own test binary
// because grpc-go's balancer registry is process-wide: the xds package's
// tests check the fallback in a binary without it.
package customlb_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/serviceconfig"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds"
)

// built counts the peak-EWMA stand-ins built; configs records their JSON.
var (
	built   atomic.Int64
	configs sync.Map
)

// standIn registers under the peak-EWMA name and balances with
// round_robin, so the test sees which policy the client chose.
type standIn struct{}

type standInConfig struct {
	serviceconfig.LoadBalancingConfig
}

func (standIn) Name() string { return policy.PeakEWMABalancer }

func (standIn) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	built.Add(1)
	return balancer.Get("round_robin").Build(cc, opts)
}

func (standIn) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	configs.Store(string(js), true)
	return standInConfig{}, nil
}

func init() { balancer.Register(standIn{}) }

func TestPeakEWMAPolicyReachesGoClients(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	reg := discovery.NewRegistry()
	srv, err := xds.NewServer(xds.Config{Registry: reg, Log: quiet, Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); srv.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	wg.Add(1)
	go func() { defer wg.Done(); gs.Serve(lis) }()
	defer gs.Stop()

	var eps []discovery.Endpoint
	for _, p := range greetertest.Serve(t, greetertest.Names("greeter", 2)...) {
		eps = append(eps, discovery.Endpoint{Address: p.Addr, Ready: true, Serving: true})
	}
	reg.Set(&discovery.Service{
		Key:         discovery.Key{Namespace: "default", Name: "greeter"},
		Annotations: map[string]string{policy.LBAnnotation: string(policy.PeakEWMA)},
		Ports:       []discovery.Port{{Port: 50051, Protocol: "TCP", Endpoints: eps}},
	})

	bs, err := xds.Bootstrap{Server: lis.Addr().String(), Pod: "client", Namespace: "default"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bs)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///greeter.default:50051", grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	callCtx, callCancel := context.WithTimeout(ctx, 20*time.Second)
	defer callCancel()
	seen := map[string]bool{}
	for len(seen) < 2 {
		r, err := pb.NewGreeterClient(conn).SayHello(callCtx, &pb.HelloRequest{Name: "x"})
		if err != nil {
			t.Fatalf("call failed (pods seen: %v): %v", seen, err)
		}
		seen[greeter.PodOf(r.GetMessage())] = true
	}
	if built.Load() == 0 {
		t.Fatal("the client never built the ballast_peak_ewma balancer; it fell back instead")
	}
	if _, ok := configs.Load("{}"); !ok {
		var got []string
		configs.Range(func(k, _ any) bool { got = append(got, k.(string)); return true })
		t.Fatalf("peak-EWMA config JSON = %v, want {}", got)
	}
}
