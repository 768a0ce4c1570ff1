package proxy

import (
	"context"
	"testing"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds/client"
)

// BenchmarkProxyUnary measures one SayHello over one client connection to
// three greeters, balanced per call: direct (the client balances, as a
// proxyless client would) and through the proxy (the proxy balances). The
// difference is the proxy's cost per call; both sides run in this process,
// so allocs/op include client and server work too. The sequential runs
// measure latency; the parallel ones (16 calls in flight on one
// connection) keep the CPUs busy, so their ns/op is CPU time per call.
// The proxy's own allocations per call are proxied's allocs/op minus
// direct's. ns/op moves with other load on the machine; the CPU comparison
// that counts is `ballast bench` (docs/benchmarks.md), which runs the
// sidecar beside haproxy and nginx in the same run.
func BenchmarkProxyUnary(b *testing.B) {
	addrs := startGreeters(b, 3)
	direct, proxied := directAndProxied(addrs)
	b.Run("direct", func(b *testing.B) { benchmarkUnary(b, direct(b)) })
	b.Run("proxied", func(b *testing.B) { benchmarkUnary(b, proxied(b)) })
	b.Run("direct-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, direct(b)) })
	b.Run("proxied-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, proxied(b)) })
}

// directAndProxied dial the backends at addrs round robin: directly, or
// through a proxy started for the benchmark.
func directAndProxied(addrs []string) (direct, proxied func(*testing.B) *grpc.ClientConn) {
	direct = func(b *testing.B) *grpc.ClientConn {
		target, resolve := staticTarget(addrs)
		return dial(b, target, grpc.WithResolvers(resolve), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	}
	proxied = func(b *testing.B) *grpc.ClientConn {
		target, resolve := staticTarget(addrs)
		_, proxyAddr := startOutbound(b, target, Options{Resolvers: []resolver.Builder{resolve}})
		return dial(b, proxyAddr)
	}
	return direct, proxied
}

func benchmarkUnary(b *testing.B, conn *grpc.ClientConn) {
	client := pb.NewGreeterClient(conn)
	req := &pb.HelloRequest{Name: "bench"}
	if _, err := client.SayHello(b.Context(), req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := client.SayHello(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// reportCPU reports, when the returned func runs, the process's CPU time
// per op since reportCPU was called (cpu-ns/op): the clock's ns/op
// stretches with other load on the machine, CPU time much less, so two
// runs' cpu-ns/op compare where their ns/op do not. With it go the
// process's read and write system calls per op (reads/op, writes/op,
// those that found nothing to read included) and its threads' context
// switches (switches/op): on loopback, where a write runs the receiver's
// TCP input too, these are most of a proxy's cost. They count client and
// servers too, whose own PINGs and acks change when a proxy sits between
// them, so they compare a path across two versions of the proxy rather
// than proxied with direct.
func reportCPU(b *testing.B) func() {
	start, switches := cpuTime()
	reads, writes, io := ioCalls()
	return func() {
		if b.N == 0 {
			return
		}
		n := float64(b.N)
		used, nowSwitches := cpuTime()
		if used -= start; used > 0 {
			b.ReportMetric(float64(used.Nanoseconds())/n, "cpu-ns/op")
			b.ReportMetric(float64(nowSwitches-switches)/n, "switches/op")
		}
		if nowReads, nowWrites, ok := ioCalls(); ok && io {
			b.ReportMetric(float64(nowReads-reads)/n, "reads/op")
			b.ReportMetric(float64(nowWrites-writes)/n, "writes/op")
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
	defer reportCPU(b)()
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

// BenchmarkProxyStream measures one message round trip on a bidirectional
// stream, 16 streams in flight over one client connection to three
// backends (streams balanced per stream), as `ballast bench` scenario 2b
// does: direct and through the proxy. As in BenchmarkProxyUnary, client and
// servers run in this process, so the difference is the proxy's share.
func BenchmarkProxyStream(b *testing.B) {
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = startTestService(b, newTestService())
	}
	direct, proxied := directAndProxied(addrs)
	b.Run("direct-parallel", func(b *testing.B) { benchmarkStreamParallel(b, direct(b)) })
	b.Run("proxied-parallel", func(b *testing.B) { benchmarkStreamParallel(b, proxied(b)) })
}

func benchmarkStreamParallel(b *testing.B, conn *grpc.ClientConn) {
	client := testpb.NewTestServiceClient(conn)
	req := &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 16}},
		Payload:            &testpb.Payload{Body: make([]byte, 16)},
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	b.SetParallelism(8) // 16 streams on 2 CPUs
	b.RunParallel(func(pb *testing.PB) {
		stream, err := client.FullDuplexCall(b.Context())
		if err != nil {
			b.Error(err)
			return
		}
		defer stream.CloseSend()
		for pb.Next() {
			if err := stream.Send(req); err != nil {
				b.Error(err)
				return
			}
			if _, err := stream.Recv(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkProxyRoute measures the per-call routing of an xds:/// upstream:
// the route a Service without a GRPCRoute has (one rule, every call to its
// Cluster) against a 5-rule route whose last rule takes the call and
// splits it 90/10 over two Clusters of the same three greeters (the most
// matching work a call does), and the same calls direct. The proxy's own
// CPU per call is a proxied run's cpu-ns/op less direct's, so the sidecar's
// CPU with the 5-rule route over none is
// (5-rules - direct) / (none - direct), parallel runs, one run.
func BenchmarkProxyRoute(b *testing.B) {
	addrs := startGreeters(b, 3)
	clusters := map[string][]string{"greeter": addrs, "greeter-v2": addrs}
	none := update(policy.RouteTo("greeter", nil, "greeter"), clusters)
	five := update(fiveRules(), clusters)
	routed := func(b *testing.B, u client.Update) *grpc.ClientConn {
		routes := &staticRoutes{}
		routes.set(u)
		_, addr := startOutbound(b, routeTarget, Options{XDS: routes})
		return dial(b, addr)
	}
	direct, _ := directAndProxied(addrs)
	b.Run("none", func(b *testing.B) { benchmarkUnary(b, routed(b, none)) })
	b.Run("5-rules", func(b *testing.B) { benchmarkUnary(b, routed(b, five)) })
	b.Run("direct-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, direct(b)) })
	b.Run("none-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, routed(b, none)) })
	b.Run("5-rules-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, routed(b, five)) })
}

// BenchmarkRouteDecision is the routing step of one call alone, on the
// header block a grpc-go client sends: the 5-rule route of
// BenchmarkProxyRoute (its last rule takes the call) against a Service's
// one-rule route. It allocates nothing.
func BenchmarkRouteDecision(b *testing.B) {
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/helloworld.Greeter/SayHello"}, {Name: ":authority", Value: "greeter.default:50051"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "user-agent", Value: "grpc-go/1.85.0"},
		{Name: "te", Value: "trailers"}, {Name: "grpc-timeout", Value: "4999906u"},
	}
	s := &stream{path: "/helloworld.Greeter/SayHello", req: fields}
	for _, tc := range []struct {
		name  string
		route policy.Route
	}{{"none", policy.RouteTo("greeter", nil, "greeter")}, {"5-rules", fiveRules()}} {
		b.Run(tc.name, func(b *testing.B) {
			rt := policy.NewRouter(tc.route)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, _, err := rt.Decide(s.path, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// fiveRules is a 5-rule route whose last rule takes a SayHello without
// headers and splits it 90/10.
func fiveRules() policy.Route {
	return policy.Route{Name: "greeter", Rules: []policy.Rule{
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Exact, Value: "/helloworld.Greeter/SayGoodbye"}}, Backends: []policy.Backend{{Cluster: "greeter-v2", Weight: 1}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.RegularExpression, Value: `/other\.Service/.+`}}, Backends: []policy.Backend{{Cluster: "greeter-v2", Weight: 1}}},
		{Match: policy.Match{Path: policy.StringMatch{Type: policy.Prefix, Value: "/helloworld.Greeter/"}, Headers: []policy.HeaderMatch{{Name: "x-version", Value: policy.StringMatch{Type: policy.Exact, Value: "2"}}}}, Backends: []policy.Backend{{Cluster: "greeter-v2", Weight: 1}}},
		{Match: policy.Match{Headers: []policy.HeaderMatch{{Name: "x-user", Value: policy.StringMatch{Type: policy.RegularExpression, Value: "bob|carl"}}}}, Backends: []policy.Backend{{Cluster: "greeter-v2", Weight: 1}}},
		{Backends: []policy.Backend{{Cluster: "greeter", Weight: 90}, {Cluster: "greeter-v2", Weight: 10}}},
	}}
}
