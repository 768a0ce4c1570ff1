// The shared check of the tests of a TrafficPolicy's outlier detection
// and circuit breaker in every mode: one pod failing every call must be
// ejected within two intervals and come back after the ejection time
// (after consecutive errors: at once, where a mode honours them); a call
// beyond maxRequests in flight must fail UNAVAILABLE saying why.

package policytest

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"
)

// Server answers SayHello; a Broken one fails every call UNAVAILABLE
// ("broken: ..."); with a Gate, each call waits until the gate closes.
type Server struct {
	pb.UnimplementedGreeterServer
	Broken   bool
	Gate     chan struct{}
	Calls    atomic.Int64
	InFlight atomic.Int64
}

// SayHello implements helloworld.Greeter.
func (s *Server) SayHello(ctx context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	s.Calls.Add(1)
	s.InFlight.Add(1)
	defer s.InFlight.Add(-1)
	if s.Broken {
		return nil, status.Error(codes.Unavailable, "broken: every call fails")
	}
	if s.Gate != nil {
		select {
		case <-s.Gate:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &pb.HelloReply{Message: "hello"}, nil
}

// Serve runs each server on loopback until the test ends and returns
// their addresses.
func Serve(t *testing.T, servers ...*Server) []netip.AddrPort {
	t.Helper()
	var out []netip.AddrPort
	for _, s := range servers {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		pb.RegisterGreeterServer(gs, s)
		done := make(chan struct{})
		go func() { defer close(done); gs.Serve(lis) }()
		t.Cleanup(func() { gs.Stop(); <-done })
		out = append(out, lis.Addr().(*net.TCPAddr).AddrPort())
	}
	return out
}

// The outlier detection of the ejection tests, as a TrafficPolicy's spec
// field (indented under spec): decided every Interval, more than half of
// at least 10 calls failed ejects, for EjectionTime.
const (
	Interval     = time.Second
	EjectionTime = 3 * time.Second
	Policy       = `  outlierDetection:
    interval: 1s
    baseEjectionTime: 3s
    maxEjectionTime: 3s
    maxEjectionPercent: 50
    failurePercentageEjection: {threshold: 50, minimumHosts: 3, requestVolume: 10}
`
)

// CheckEjection calls one at a time through client (of three pods, one
// Broken) and asserts that the broken pod took no call in the third
// Interval since the first call, so it was ejected within two, and that
// it takes calls again, but only once EjectionTime has passed since its
// last call before the ejection.
func CheckEjection(t *testing.T, client pb.GreeterClient) {
	t.Helper()
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "x"}, grpc.WaitForReady(true))
		return err
	}
	// Every pod connected: a round of calls reaches the broken one.
	deadline := time.Now().Add(20 * time.Second)
	for call() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no call reached the broken pod")
		}
	}
	// Each call is timed from when it began, close to its pick: its
	// return can lag the balancer by the test's scheduling, enough for the
	// ejection to start between the last failure and the test noting it.
	var failures []time.Duration // since the first call, of the calls the broken pod took
	start := time.Now()
	deadline = start.Add(EjectionTime + 10*Interval + 20*time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the broken pod was not ejected and back within the deadline; failed calls at %v", failures)
		}
		at := time.Since(start)
		err := call()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "broken") {
			t.Fatalf("call at %v: %v, want only the broken pod's UNAVAILABLE", at, err)
		}
		failures = append(failures, at)
		if n := len(failures); n > 1 && at-failures[n-2] >= Interval {
			break // back after a gap: ejected and returned
		}
	}
	n := len(failures)
	for _, at := range failures[:n-1] {
		if at >= 2*Interval {
			t.Errorf("the broken pod took a call %v after the first, in the third interval of %v: not ejected within two", at, Interval)
		}
	}
	if gap := failures[n-1] - failures[n-2]; gap < EjectionTime {
		t.Errorf("the broken pod was back %v after its last call before the ejection, within the ejection time %v", gap, EjectionTime)
	}
	t.Logf("ejected after %d failed calls within %v; back after %v", n-1, failures[n-2], failures[n-1]-failures[n-2])
}

// The consecutive-errors ejection of the tests, as a TrafficPolicy's spec
// field (indented under spec): ConsecutiveErrors failed calls in a row
// eject an endpoint for EjectionTime, without gRFC A50's algorithms.
const (
	ConsecutiveErrors = 3
	ConsecutivePolicy = `  outlierDetection:
    baseEjectionTime: 3s
    maxEjectionTime: 3s
    maxEjectionPercent: 50
    consecutiveErrors: 3
`
)

// CheckConsecutiveEjection calls one at a time through client (of three
// pods, one Broken) and asserts that the broken pod, failing every call,
// takes no call after its ConsecutiveErrors-th failure (one more may have
// been picked before the ejection reached the balancer) for EjectionTime,
// then takes calls again.
func CheckConsecutiveEjection(t *testing.T, client pb.GreeterClient) {
	t.Helper()
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "x"}, grpc.WaitForReady(true))
		return err
	}
	var failures []time.Duration // since the first failure, of the calls the broken pod took
	var start time.Time
	deadline := time.Now().Add(EjectionTime + 40*time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("the broken pod was not ejected and back within the deadline; failed calls at %v", failures)
		}
		err := call()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "broken") {
			t.Fatalf("call: %v, want only the broken pod's UNAVAILABLE", err)
		}
		if start.IsZero() {
			start = time.Now()
		}
		at := time.Since(start)
		failures = append(failures, at)
		if n := len(failures); n > 1 && at-failures[n-2] >= time.Second {
			break // back after a gap: ejected and returned
		}
	}
	n := len(failures)
	if before := n - 1; before < ConsecutiveErrors || before > ConsecutiveErrors+1 {
		t.Errorf("the broken pod failed %d calls before its ejection (at %v), want %d (or one more picked meanwhile)", before, failures[:n-1], ConsecutiveErrors)
	}
	if gap := failures[n-1] - failures[n-2]; gap < EjectionTime {
		t.Errorf("the broken pod was back %v after its last call before the ejection, within the ejection time %v", gap, EjectionTime)
	}
	t.Logf("ejected after %d failed calls in a row; back after %v", n-1, failures[n-1]-failures[n-2])
}

// CheckCircuitBreaker holds two calls in flight at srv (a Server with a
// Gate, the only endpoint, under maxRequests 2) and asserts that a third
// fails UNAVAILABLE, at once, with a message containing want, then opens
// the gate and asserts the held calls and a later one succeed.
func CheckCircuitBreaker(t *testing.T, srv *Server, client pb.GreeterClient, want string) {
	t.Helper()
	var wg sync.WaitGroup
	held := make([]error, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var once sync.Once
	open := func() { once.Do(func() { close(srv.Gate) }) }
	defer func() { open(); wg.Wait() }()
	for i := range held {
		wg.Go(func() {
			_, held[i] = client.SayHello(ctx, &pb.HelloRequest{Name: "held"}, grpc.WaitForReady(true))
		})
	}
	deadline := time.Now().Add(20 * time.Second)
	for srv.InFlight.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls in flight at the server, want 2", srv.InFlight.Load())
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "third"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) {
		t.Errorf("a third call while two are in flight: %v, want UNAVAILABLE containing %q", err, want)
	}
	if n := srv.Calls.Load(); n != 2 {
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
