package xds

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	echopb "google.golang.org/grpc/examples/features/proto/echo"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/discovery/files"
)

// testServer answers SayHello and UnaryEcho after delay; when flaky, 3 of
// every 10 SayHello calls fail UNAVAILABLE.
type testServer struct {
	pb.UnimplementedGreeterServer
	echopb.UnimplementedEchoServer
	delay time.Duration
	flaky bool
	n     atomic.Int64
}

func (s *testServer) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	if s.flaky && s.n.Add(1)%10 < 3 {
		return nil, status.Error(codes.Unavailable, "flaky: this call fails")
	}
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return &pb.HelloReply{Message: "hello"}, nil
}

func (s *testServer) UnaryEcho(ctx context.Context, r *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return &echopb.EchoResponse{Message: r.GetMessage()}, nil
}

func (s *testServer) wait(ctx context.Context) error {
	if s.delay == 0 {
		return nil
	}
	t := time.NewTimer(s.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// serve runs each server on loopback as a pod named name-i.
func serve(t *testing.T, name string, servers ...*testServer) []files.Pod {
	t.Helper()
	var out []files.Pod
	var wg sync.WaitGroup
	var gss []*grpc.Server
	t.Cleanup(func() {
		for _, gs := range gss {
			gs.Stop()
		}
		wg.Wait()
	})
	for i, s := range servers {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		pb.RegisterGreeterServer(gs, s)
		echopb.RegisterEchoServer(gs, s)
		gss = append(gss, gs)
		wg.Go(func() { gs.Serve(lis) })
		out = append(out, files.Pod{Name: name + "-" + string(rune('0'+i)), Addr: netip.MustParseAddrPort(lis.Addr().String())})
	}
	return out
}

func failed(c tally) float64 {
	n := 0
	for _, k := range c.codes {
		n += k
	}
	return float64(n) / float64(c.calls)
}

// TestProxylessTrafficPolicyRetry: one of three pods answers UNAVAILABLE
// on 30% of calls. grpc-go's own xDS client, fed by the control plane,
// sees about a tenth of its calls fail; once a TrafficPolicy on the
// Service (read by --files) asks for retry {codes: [Unavailable],
// attempts: 2}, at most 0.5% of 2,000 calls fail; without it again, the
// failures come back.
func TestProxylessTrafficPolicyRetry(t *testing.T) {
	p := startPlane(t)
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("greeter.yaml", string(greetertest.ServiceYAML(t, "default", "greeter", serve(t, "greeter", &testServer{flaky: true}, &testServer{}, &testServer{}))))
	src := files.New(dir, p.reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	conn := dialXDS(t, p, "xds:///greeter.default:50051")

	without := calls(conn, 2000)
	t.Logf("without a policy: %.2f%% of %d calls failed (%v)", 100*failed(without), without.calls, without.codes)
	if f := failed(without); f < 0.05 || len(without.codes) != 1 || without.codes[codes.Unavailable] == 0 {
		t.Fatalf("without a policy %.2f%% failed (%v), want about 10%% UNAVAILABLE", 100*f, without.codes)
	}

	write("policy.yaml", `apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: greeter, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: greeter}]
  retry: {codes: [Unavailable], attempts: 2}
`)
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "200 calls in a row succeed", func() bool { return failed(calls(conn, 200)) == 0 })
	with := calls(conn, 2000)
	t.Logf("with retry {codes: [Unavailable], attempts: 2}: %.2f%% of %d calls failed (%v)", 100*failed(with), with.calls, with.codes)
	if f := failed(with); f > 0.005 {
		t.Errorf("with the retry policy %.2f%% of calls failed (%v; last %v), want at most 0.5%%", 100*f, with.codes, with.last)
	}

	write("policy.yaml", "# no policy\n")
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "calls fail again without the policy", func() bool { return failed(calls(conn, 200)) > 0 })
	for _, typ := range []string{"listener", "route", "cluster", "endpoints"} {
		if n := counterValue(t, p.metrics, "ballast_xds_nacks_total", typ); n != 0 {
			t.Errorf("the client NACKed %v %s responses", n, typ)
		}
	}
}

// TestProxylessTrafficPolicyTimeout: a TrafficPolicy with timeouts.request
// 200ms on the rule of a GRPCRoute that matches helloworld.Greeter fails
// SayHello against a server that takes 1s with DEADLINE_EXCEEDED (the
// caller allowed 10s), while UnaryEcho, of another rule, waits its second
// and succeeds. (How close to 200ms is the bench's to measure.)
func TestProxylessTrafficPolicyTimeout(t *testing.T) {
	p := startPlane(t)
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("slow.yaml", string(greetertest.ServiceYAML(t, "default", "slow", serve(t, "slow", &testServer{delay: time.Second}))))
	write("route.yaml", `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: slow, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: slow, port: 50051}]
  rules:
  - name: hello
    matches: [{method: {service: helloworld.Greeter}}]
    backendRefs: [{name: slow, port: 50051}]
  - name: rest
    backendRefs: [{name: slow, port: 50051}]
---
apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: hello, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: slow, sectionName: hello}]
  timeouts: {request: 200ms}
`)
	src := files.New(dir, p.reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	conn := dialXDS(t, p, "xds:///slow.default:50051")
	hello := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "x"})
		return err
	}
	echo := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := echopb.NewEchoClient(conn).UnaryEcho(ctx, &echopb.EchoRequest{Message: "x"})
		return err
	}
	eventually(t, "SayHello fails DEADLINE_EXCEEDED", func() bool { return status.Code(hello()) == codes.DeadlineExceeded })
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			if i%2 == 0 {
				errs[i] = hello()
			} else {
				errs[i] = echo()
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i%2 == 0 && status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("SayHello under a 200ms policy: %v, want DEADLINE_EXCEEDED", err)
		}
		if i%2 == 1 && err != nil {
			t.Errorf("UnaryEcho, of a rule without a policy: %v, want success after the server's 1s", err)
		}
	}
}
