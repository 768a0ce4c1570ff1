package xds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballast-dev/ballast/discovery"
)

// withEndpointPort returns a copy of svc whose first endpoint has a new port,
// the shape of a typical EndpointSlice change.
func withEndpointPort(svc *discovery.Service, port uint16) *discovery.Service {
	cp := *svc
	cp.Ports = slices.Clone(svc.Ports)
	cp.Ports[0].Endpoints = slices.Clone(svc.Ports[0].Endpoints)
	e := &cp.Ports[0].Endpoints[0]
	e.Address = netip.AddrPortFrom(e.Address.Addr(), port)
	return &cp
}

// benchServer is a server, quiet and with metrics of its own, over a
// registry holding services; it serves nothing until it runs.
func benchServer(b *testing.B, services []*discovery.Service) (*Server, *discovery.Registry) {
	b.Helper()
	reg := discovery.NewRegistry()
	for _, s := range services {
		reg.Set(s)
	}
	srv, err := NewServer(Config{Registry: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	return srv, reg
}

// loadedServer is benchServer with every Service already translated.
func loadedServer(b *testing.B, services []*discovery.Service) (*Server, *discovery.Registry) {
	b.Helper()
	srv, reg := benchServer(b, services)
	keys := make([]discovery.Key, len(services))
	for i, s := range services {
		keys[i] = s.Key
	}
	srv.apply(keys, time.Now())
	return srv, reg
}

// BenchmarkServerEndpointChange is the server's work for one endpoint
// change with 1,000 Services × 10 endpoints loaded and no clients: retranslate
// the Service, diff it against what is served, update the endpoints cache.
// It also reports the heap the loaded server holds.
func BenchmarkServerEndpointChange(b *testing.B) {
	services := benchServices(1000, 10)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	srv, reg := loadedServer(b, services)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	loaded := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	keys := []discovery.Key{services[0].Key}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		reg.Set(withEndpointPort(services[0], uint16(10000+i%2)))
		srv.apply(keys, time.Now())
	}
	b.ReportMetric(loaded, "MiB-loaded")
	runtime.KeepAlive(srv)
}

// BenchmarkPushLatency measures one endpoint change from the registry to
// 100 delta clients subscribed to it, over loopback gRPC, with 1,000
// Services × 10 endpoints served: each op is registry Set → every client has
// received the change.
func BenchmarkPushLatency(b *testing.B) {
	const clients = 100
	services := benchServices(1000, 10)
	srv, reg := benchServer(b, services)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); srv.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	wg.Add(1)
	go func() { defer wg.Done(); gs.Serve(lis) }()
	defer gs.Stop()
	for !srv.Ready() {
		time.Sleep(time.Millisecond)
	}

	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	name := DialNames(services[0].Key, 50051, Options{})[2]
	received := make(chan struct{}, clients)
	for i := range clients {
		s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("bench-%d", i)},
			TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{name}}); err != nil {
			b.Fatal(err)
		}
		first, err := s.Recv() // the initial state, ACKed: the server sends more only after an ACK
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: first.GetNonce()}); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, err := s.Recv()
				if err != nil {
					return
				}
				s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: resp.GetNonce()})
				received <- struct{}{}
			}
		}()
	}
	var latencies []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		reg.Set(withEndpointPort(services[0], uint16(10000+i%2)))
		for range clients {
			<-received
		}
		latencies = append(latencies, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(latencies)
	if n := len(latencies); n > 0 {
		b.ReportMetric(float64(latencies[n/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(latencies[n*99/100].Microseconds()), "p99-µs")
	}
}
