package xds

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/discovery/files"
)

// guardServer answers SayHello; a broken one fails every call
// UNAVAILABLE; with a gate, each call waits until the gate closes.
type guardServer struct {
	pb.UnimplementedGreeterServer
	broken   bool
	gate     chan struct{}
	calls    atomic.Int64
	inFlight atomic.Int64
}

func (s *guardServer) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	s.calls.Add(1)
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	if s.broken {
		return nil, status.Error(codes.Unavailable, "broken: every call fails")
	}
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &pb.HelloReply{Message: "hello"}, nil
}

// serveGuards runs each server on loopback as a pod named name-i.
func serveGuards(t *testing.T, name string, servers ...*guardServer) []files.Pod {
	t.Helper()
	var out []files.Pod
	for i, s := range servers {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		pb.RegisterGreeterServer(gs, s)
		done := make(chan struct{})
		go func() { defer close(done); gs.Serve(lis) }()
		t.Cleanup(func() { gs.Stop(); <-done })
		out = append(out, files.Pod{Name: name + "-" + string(rune('0'+i)), Addr: netip.MustParseAddrPort(lis.Addr().String())})
	}
	return out
}

// guardPolicy is a TrafficPolicy on Service name with the given spec
// fields (YAML, indented as spec's).
func guardPolicy(name, fields string) string {
	return `apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: ` + name + `, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: ` + name + `}]
` + fields
}

// The outlier detection of the ejection tests: decided every second,
// failure percentage over 50% of at least 10 calls ejects, for 3 s.
const (
	ejectInterval = time.Second
	ejectTime     = 3 * time.Second
	ejectionYAML  = `  outlierDetection:
    interval: 1s
    baseEjectionTime: 3s
    maxEjectionTime: 3s
    maxEjectionPercent: 50
    failurePercentageEjection: {threshold: 50, minimumHosts: 3, requestVolume: 10}
`
)

// ejection is what a client saw of a pod that fails every call while it
// called steadily: the call times (since the first call) that reached
// it, which are the calls that failed.
type ejection struct{ failures []time.Duration }

// watchEjection calls one at a time, counting the failed calls (those
// the broken pod took) per ejectInterval, until the broken pod has been
// ejected and has taken calls again, or the deadline.
func watchEjection(t *testing.T, call func(context.Context) error) ejection {
	t.Helper()
	var e ejection
	start := time.Now()
	deadline := start.Add(ejectTime + 10*ejectInterval + 20*time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := call(ctx)
		cancel()
		at := time.Since(start)
		if err != nil {
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "broken") {
				t.Fatalf("call at %v: %v, want only the broken pod's UNAVAILABLE", at, err)
			}
			if n := len(e.failures); n > 0 && at-e.failures[n-1] >= ejectInterval {
				e.failures = append(e.failures, at)
				return e // back after a gap: ejected and returned
			}
			e.failures = append(e.failures, at)
		}
	}
	t.Fatalf("the broken pod was not ejected and back within the deadline; failed calls at %v", e.failures)
	return e
}

// check asserts that the broken pod took no call in the third interval
// (so it was ejected within two), and that it was back only after the
// ejection time.
func (e ejection) check(t *testing.T) {
	t.Helper()
	n := len(e.failures)
	if n < 2 {
		t.Fatalf("failed calls at %v: want some before the ejection and one after", e.failures)
	}
	for _, at := range e.failures[:n-1] {
		if at >= 2*ejectInterval {
			t.Errorf("the broken pod took a call %v after the first, in the third interval of %v: not ejected within two", at, ejectInterval)
		}
	}
	if gap := e.failures[n-1] - e.failures[n-2]; gap < ejectTime {
		t.Errorf("the broken pod was back %v after its last call before the ejection, within the ejection time %v", gap, ejectTime)
	}
	t.Logf("ejected after %d failed calls within %v; back after %v", n-1, e.failures[n-2], e.failures[n-1]-e.failures[n-2])
}

// TestProxylessOutlierDetection: of three pods one fails every call.
// grpc-go's xDS client, fed a TrafficPolicy's outlierDetection (failure
// percentage) by the control plane, ejects it within two intervals and
// sends it calls again after the ejection time.
func TestProxylessOutlierDetection(t *testing.T) {
	p := startPlane(t)
	dir := t.TempDir()
	manifest := serviceYAML(t, "ejecting", serveGuards(t, "ejecting", &guardServer{broken: true}, &guardServer{}, &guardServer{})) +
		"---\n" + guardPolicy("ejecting", ejectionYAML)
	if err := os.WriteFile(filepath.Join(dir, "ejecting.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := files.New(dir, p.reg, files.Options{Logger: slog.New(slog.DiscardHandler)}).Load(); err != nil {
		t.Fatal(err)
	}
	conn := dialXDS(t, p, "xds:///ejecting.default:50051")
	client := pb.NewGreeterClient(conn)
	call := func(ctx context.Context) error {
		_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "x"}, grpc.WaitForReady(true))
		return err
	}
	// Every pod connected: a round of calls reached the broken one.
	eventually(t, "the broken pod takes a call", func() bool { return call(context.Background()) != nil })
	watchEjection(t, call).check(t)
}

// TestProxylessCircuitBreaker: with circuitBreaker.maxRequests 2, grpc-go's
// xDS client fails a third call while two are in flight, at once, with
// UNAVAILABLE saying the bound was reached; once they finish, calls go
// through.
func TestProxylessCircuitBreaker(t *testing.T) {
	p := startPlane(t)
	dir := t.TempDir()
	srv := &guardServer{gate: make(chan struct{})}
	manifest := serviceYAML(t, "guarded", serveGuards(t, "guarded", srv)) + "---\n" + guardPolicy("guarded", "  circuitBreaker: {maxRequests: 2}\n")
	if err := os.WriteFile(filepath.Join(dir, "guarded.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := files.New(dir, p.reg, files.Options{Logger: slog.New(slog.DiscardHandler)}).Load(); err != nil {
		t.Fatal(err)
	}
	conn := dialXDS(t, p, "xds:///guarded.default:50051")
	checkCircuitBreaker(t, srv, pb.NewGreeterClient(conn), "max requests 2 exceeded")
}

// checkCircuitBreaker holds two calls in flight at srv (its gate shut)
// and asserts that a third fails UNAVAILABLE with a message containing
// want, then opens the gate and asserts the held calls succeed.
func checkCircuitBreaker(t *testing.T, srv *guardServer, client pb.GreeterClient, want string) {
	t.Helper()
	var wg sync.WaitGroup
	held := make([]error, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opened := false
	open := func() {
		if !opened {
			opened = true
			close(srv.gate)
		}
	}
	defer func() { open(); wg.Wait() }()
	for i := range held {
		wg.Go(func() {
			_, held[i] = client.SayHello(ctx, &pb.HelloRequest{Name: "held"}, grpc.WaitForReady(true))
		})
	}
	eventually(t, "two calls in flight at the server", func() bool { return srv.inFlight.Load() == 2 })
	_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "third"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) {
		t.Errorf("a third call while two are in flight: %v, want UNAVAILABLE containing %q", err, want)
	}
	if n := srv.calls.Load(); n != 2 {
		t.Errorf("the server got %d calls, want the two held ones only", n)
	}
	open()
	wg.Wait()
	for _, err := range held {
		if err != nil {
			t.Errorf("a held call: %v, want success once the server answers", err)
		}
	}
	if _, err := client.SayHello(ctx, &pb.HelloRequest{Name: "after"}); err != nil {
		t.Errorf("a call once none is in flight: %v", err)
	}
}
