package proxy

import (
	"testing"

	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
)

// BenchmarkProxyUnary measures one SayHello over one client connection to
// three greeters, balanced per call: direct (the client balances, as a
// proxyless client would) and through the proxy (the proxy balances). The
// difference is the proxy's cost per call; both sides run in this process,
// so allocs/op include client and server work too.
func BenchmarkProxyUnary(b *testing.B) {
	addrs := startGreeters(b, 3)
	b.Run("direct", func(b *testing.B) {
		target, resolve := staticTarget(addrs)
		conn := dial(b, target, resolve, grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
		benchmarkUnary(b, conn)
	})
	b.Run("proxied", func(b *testing.B) {
		target, resolve := staticTarget(addrs)
		_, proxyAddr := startOutbound(b, target, Options{DialOptions: []grpc.DialOption{resolve}})
		benchmarkUnary(b, dial(b, proxyAddr))
	})
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
