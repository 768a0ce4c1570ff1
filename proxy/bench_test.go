package proxy

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/resolver"
)

// BenchmarkProxyUnary measures one SayHello over one client connection to
// three greeters, balanced per call: direct (the client balances, as a
// proxyless client would) and through the proxy (the proxy balances). The
// difference is the proxy's cost per call; both sides run in this process,
// so allocs/op include client and server work too. The sequential runs
// measure latency; the parallel ones (16 calls in flight on one
// connection) keep the CPUs busy, so their ns/op is CPU time per call.
func BenchmarkProxyUnary(b *testing.B) {
	addrs := startGreeters(b, 3)
	direct := func(b *testing.B) *grpc.ClientConn {
		target, resolve := staticTarget(addrs)
		return dial(b, target, grpc.WithResolvers(resolve), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	}
	proxied := func(b *testing.B) *grpc.ClientConn {
		target, resolve := staticTarget(addrs)
		_, proxyAddr := startOutbound(b, target, Options{Resolvers: []resolver.Builder{resolve}})
		return dial(b, proxyAddr)
	}
	b.Run("direct", func(b *testing.B) { benchmarkUnary(b, direct(b)) })
	b.Run("proxied", func(b *testing.B) { benchmarkUnary(b, proxied(b)) })
	b.Run("direct-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, direct(b)) })
	b.Run("proxied-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, proxied(b)) })
}

func benchmarkUnary(b *testing.B, conn *grpc.ClientConn) {
	client := pb.NewGreeterClient(conn)
	req := &pb.HelloRequest{Name: "bench"}
	if _, err := client.SayHello(b.Context(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.SayHello(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}

func benchmarkUnaryParallel(b *testing.B, conn *grpc.ClientConn) {
	client := pb.NewGreeterClient(conn)
	req := &pb.HelloRequest{Name: "bench"}
	if _, err := client.SayHello(b.Context(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(8) // 16 goroutines on 2 CPUs
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.SayHello(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
