// Package policytest holds what the tests of every mode share: backends on
// loopback that count the calls reaching them, loads that tally status
// codes, and the TrafficPolicy checks each mode must pass alike: Run
// (rateLimit, fault, loadBalancer) and the outlier-detection and
// circuit-breaker checks. A mode (the sidecar, the library, proxyless)
// runs them with its own way to dial a Service under a policy; one
// balancing decision serving every mode is then one set of checks, not a
// copy per mode.
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
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
)

// SayHello is the method the cases call; the backends answer any method.
const SayHello = "/helloworld.Greeter/SayHello"

// Backend is a gRPC server on loopback that answers every method: a unary
// call with an Empty, or the error its handler returns for it; a
// server-streaming call (/test.Stream/...) with two messages, unless the
// handler fails it first. Tries counts the calls that reached it.
type Backend struct {
	Addr  netip.AddrPort
	Tries atomic.Int64
}

// Handler decides a call's fate: the n-th call the backend got (from 1),
// of method; a nil error lets it succeed.
type Handler func(ctx context.Context, method string, n int64) error

// StartBackend runs a Backend until t ends; handle may be nil.
func StartBackend(t testing.TB, handle Handler) *Backend {
	t.Helper()
	lis := listen(t)
	b := &Backend{Addr: lis.Addr().(*net.TCPAddr).AddrPort()}
	serve(t, lis, func(stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		n := b.Tries.Add(1)
		method, _ := grpc.MethodFromServerStream(stream)
		if handle != nil {
			if err := handle(stream.Context(), method, n); err != nil {
				return err
			}
		}
		if strings.HasPrefix(method, "/test.Stream/") {
			if err := stream.SendMsg(&emptypb.Empty{}); err != nil {
				return err
			}
		}
		return stream.SendMsg(&emptypb.Empty{})
	})
	return b
}

// Failing answers UNAVAILABLE to 3 calls in every 10.
func Failing(_ context.Context, _ string, n int64) error {
	if n%10 < 3 {
		return status.Error(codes.Unavailable, "injected failure")
	}
	return nil
}

// AlwaysUnavailable answers UNAVAILABLE to every call.
func AlwaysUnavailable(context.Context, string, int64) error {
	return status.Error(codes.Unavailable, "injected failure")
}

// StartEcho serves every method on loopback until t ends: it answers an
// Empty with response headers naming the backend (x-backend) and echoing
// each request header it got as seen-<name>.
func StartEcho(t testing.TB, name string) netip.AddrPort {
	t.Helper()
	lis := listen(t)
	serve(t, lis, func(stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		md, _ := metadata.FromIncomingContext(stream.Context())
		hdr := metadata.Pairs("x-backend", name)
		for k, vs := range md {
			if !strings.HasPrefix(k, ":") {
				hdr["seen-"+k] = vs
			}
		}
		if err := stream.SetHeader(hdr); err != nil {
			return err
		}
		return stream.SendMsg(&emptypb.Empty{})
	})
	return lis.Addr().(*net.TCPAddr).AddrPort()
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func serve(t testing.TB, lis net.Listener, handle func(grpc.ServerStream) error) {
	gs := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error { return handle(stream) }))
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
}

// Many makes calls calls of method over conn, from 8 goroutines, with
// metadata md, and returns the status codes they ended with.
func Many(conn grpc.ClientConnInterface, method string, calls int, req proto.Message, md ...string) map[codes.Code]int {
	var mu sync.Mutex
	got := map[codes.Code]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= int64(calls) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := conn.Invoke(metadata.AppendToOutgoingContext(ctx, md...), method, req, &emptypb.Empty{})
				cancel()
				mu.Lock()
				got[status.Code(err)]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return got
}

// Echo calls method with metadata md and returns the response headers.
func Echo(ctx context.Context, conn grpc.ClientConnInterface, method string, md ...string) (metadata.MD, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var hdr metadata.MD
	err := conn.Invoke(metadata.AppendToOutgoingContext(ctx, md...), method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&hdr))
	return hdr, err
}

// Eventually polls cond until it holds, failing t after 20 seconds.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// RateLoad calls method over conn from 2 workers, each at most one call
// every 2 ms (up to 1,000 a second, ten times the limits tested), for d.
// It returns how many calls succeeded, the codes of the others with the
// last failure, and how long the load ran.
func RateLoad(conn grpc.ClientConnInterface, method string, d time.Duration) (ok int, failed map[codes.Code]int, last error, elapsed time.Duration) {
	var mu sync.Mutex
	failed = map[codes.Code]int{}
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for time.Now().Before(end) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
				cancel()
				mu.Lock()
				if err == nil {
					ok++
				} else {
					failed[status.Code(err)]++
					last = err
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond) // pacing the load, not synchronisation
			}
		})
	}
	wg.Wait()
	return ok, failed, last, time.Since(start)
}

// TrafficPolicy is TrafficPolicy default/name read from the YAML of its
// spec, as --files and the cluster source store it.
func TrafficPolicy(t testing.TB, name, spec string) *v1alpha1.TrafficPolicy {
	t.Helper()
	p := &v1alpha1.TrafficPolicy{}
	if err := yaml.UnmarshalStrict([]byte(spec), &p.Spec); err != nil {
		t.Fatal(err)
	}
	p.Name, p.Namespace, p.Generation = name, "default", 1
	p.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return p
}

// OnGreeter is the targetRefs line of a policy on Service greeter.
const OnGreeter = `targetRefs: [{group: "", kind: Service, name: greeter}]` + "\n"

// BackendTrafficPolicy is XBackendTrafficPolicy default/name read from
// the YAML of its spec.
func BackendTrafficPolicy(t testing.TB, name, spec string) *gatewayx.XBackendTrafficPolicy {
	t.Helper()
	p := &gatewayx.XBackendTrafficPolicy{}
	if err := yaml.UnmarshalStrict([]byte(spec), &p.Spec); err != nil {
		t.Fatal(err)
	}
	p.Name, p.Namespace, p.Generation = name, "default", 1
	p.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return p
}
