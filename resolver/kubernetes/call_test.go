package kubernetes_test

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// dialCalls dials greeter through the kubernetes:/// resolver, with its
// interceptors, over a registry where greeter is served by backends and
// routed by callRoute(cp).
func dialCalls(t *testing.T, cp policy.CallPolicy, backends ...*policytest.Backend) *grpc.ClientConn {
	t.Helper()
	var addrs []netip.AddrPort
	for _, b := range backends {
		addrs = append(addrs, b.Addr)
	}
	reg := discovery.NewRegistry()
	reg.Set(service("greeter", addrs...))
	routes := &staticRoutes{}
	to := []policy.Backend{{Cluster: cluster("greeter"), Weight: 1}}
	routes.set(greeterKey, policy.Route{Name: "greeter", Rules: []policy.Rule{
		{Name: "with-policy", Match: policy.Match{Headers: []policy.HeaderMatch{{Name: "x-policy", Value: policy.StringMatch{Type: policy.Exact, Value: "yes"}}}}, Backends: to, Call: cp},
		{Name: "without", Backends: to},
	}})
	conn, err := grpc.NewClient(target, append(kubernetes.DialOptions(reg, kubernetes.WithRoutes(routes)), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Wait until calls reach every backend (round_robin only uses
	// connected ones), then count from zero.
	deadline := time.Now().Add(10 * time.Second)
	for {
		policytest.Many(conn, helloMethod, len(backends), &emptypb.Empty{})
		all := true
		for _, b := range backends {
			all = all && b.Tries.Load() > 0
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("calls did not reach every backend")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, b := range backends {
		b.Tries.Store(0)
	}
	return conn
}

const helloMethod = policytest.SayHello

// TestCallRetryUnavailable: one of three backends answers UNAVAILABLE to
// 30% of calls. Calls of a rule retrying UNAVAILABLE twice fail at most
// 0.5% of the time, each failed try retried on another pick; calls of a
// rule without a policy fail about 10% of the time, each tried once.
func TestCallRetryUnavailable(t *testing.T) {
	bad, good1, good2 := policytest.StartBackend(t, policytest.Failing), policytest.StartBackend(t, nil), policytest.StartBackend(t, nil)
	conn := dialCalls(t, policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 2}}, bad, good1, good2)
	tries := func() int64 { return bad.Tries.Load() + good1.Tries.Load() + good2.Tries.Load() }

	const calls = 2000
	got := policytest.Many(conn, helloMethod, calls, &emptypb.Empty{}, "x-policy", "yes")
	t.Logf("with retries: %v in %d tries, %d on the failing backend", got, tries(), bad.Tries.Load())
	if failed := calls - got[codes.OK]; failed > calls/200 || got[codes.Unavailable] != failed {
		t.Errorf("%d of %d calls failed (%v), want at most 0.5%%, UNAVAILABLE", failed, calls, got)
	}
	if retries := tries() - calls; retries < calls/20 || retries > calls/5 {
		t.Errorf("%d retries for %d calls, want about a tenth", retries, calls)
	}

	before := tries()
	got = policytest.Many(conn, helloMethod, calls, &emptypb.Empty{})
	t.Logf("without: %v", got)
	if failed := calls - got[codes.OK]; failed < calls/20 || failed > calls*3/20 || got[codes.Unavailable] != failed {
		t.Errorf("without a policy %d of %d calls failed (%v), want about 10%% UNAVAILABLE", failed, calls, got)
	}
	if n := tries() - before; n != calls {
		t.Errorf("without a policy: %d tries for %d calls, want one each", n, calls)
	}
}

// TestCallRetryBudget: with one backend of three failing every call, the
// retries of a rule with a 20% budget stay within 20% of its calls.
func TestCallRetryBudget(t *testing.T) {
	bad, good1, good2 := policytest.StartBackend(t, policytest.AlwaysUnavailable), policytest.StartBackend(t, nil), policytest.StartBackend(t, nil)
	conn := dialCalls(t, policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 2,
		Budget: &policy.RetryBudget{Percent: 20, Interval: time.Hour}}}, bad, good1, good2)
	const calls = 1500
	got := policytest.Many(conn, helloMethod, calls, &emptypb.Empty{}, "x-policy", "yes")
	retries := bad.Tries.Load() + good1.Tries.Load() + good2.Tries.Load() - calls
	t.Logf("calls %v, %d retries", got, retries)
	if retries > calls/5 || retries < calls/10 {
		t.Errorf("%d retries for %d calls, want the 20%% budget used and kept", retries, calls)
	}
	if failed := calls - got[codes.OK]; failed == 0 || got[codes.Unavailable] != failed {
		t.Errorf("calls ended %v, want those the budget refused UNAVAILABLE", got)
	}
}

// TestCallTimeout: a rule's timeout ends its slow calls with
// DEADLINE_EXCEEDED saying so, and the server sees the deadline and the
// cancellation; a caller's sooner deadline stays; other rules' calls are
// not bounded by it.
func TestCallTimeout(t *testing.T) {
	slow := policytest.StartSlowBackend(t)
	conn := dialCalls(t, policy.CallPolicy{Timeout: 200 * time.Millisecond}, slow.Backend)
	policytest.CheckCallTimeout(t, conn, helloMethod, slow)
}

// TestCallTryTimeout: a try that outlives the per-try timeout is given up
// and, as the rule retries DEADLINE_EXCEEDED, tried again with
// grpc-previous-rpc-attempts.
func TestCallTryTimeout(t *testing.T) {
	var retriedSeen atomic.Int64
	release := make(chan struct{})
	backend := policytest.StartBackend(t, func(ctx context.Context, _ string, _ int64) error {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("grpc-previous-rpc-attempts"); len(v) == 1 && v[0] == "1" {
			retriedSeen.Add(1)
			return nil
		}
		if len(md.Get("x-policy")) == 0 {
			return nil // dialCalls' first calls
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	})
	t.Cleanup(func() { close(release) })
	conn := dialCalls(t, policy.CallPolicy{TryTimeout: 100 * time.Millisecond, Retry: &policy.Retry{Codes: []codes.Code{codes.DeadlineExceeded}, Attempts: 1}}, backend)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-policy", "yes"), 10*time.Second)
	defer cancel()
	if err := conn.Invoke(ctx, helloMethod, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("call whose first try hangs: %v, want OK from the retry", err)
	}
	if backend.Tries.Load() != 2 || retriedSeen.Load() != 1 {
		t.Errorf("%d tries, %d with grpc-previous-rpc-attempts 1; want 2 and 1", backend.Tries.Load(), retriedSeen.Load())
	}
}

// TestCallRetryBounds: a request over the replay bound is tried once; a
// small one up to the rule's attempts; a server-streaming call whose first
// try fails before any response is retried, its request replayed.
func TestCallRetryBounds(t *testing.T) {
	const (
		answer = iota
		failAll
		failFirstTry
	)
	var mode atomic.Int32
	backend := policytest.StartBackend(t, func(ctx context.Context, _ string, _ int64) error {
		md, _ := metadata.FromIncomingContext(ctx)
		retry := len(md.Get("grpc-previous-rpc-attempts")) > 0
		if m := mode.Load(); m == failAll || m == failFirstTry && !retry {
			return status.Error(codes.Unavailable, "injected failure")
		}
		return nil
	})
	conn := dialCalls(t, policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 2}}, backend)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-policy", "yes")

	mode.Store(failAll)
	if err := conn.Invoke(ctx, helloMethod, wrapperspb.Bytes(make([]byte, 64<<10+1)), &emptypb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("big call: %v, want UNAVAILABLE", err)
	}
	if n := backend.Tries.Swap(0); n != 1 {
		t.Fatalf("big call: %d tries, want 1", n)
	}
	if err := conn.Invoke(ctx, helloMethod, wrapperspb.Bytes(make([]byte, 1000)), &emptypb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("small call: %v, want UNAVAILABLE", err)
	}
	if n := backend.Tries.Swap(0); n != 3 {
		t.Fatalf("small call: %d tries, want 3", n)
	}

	mode.Store(failFirstTry)
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/test.Stream/Fetch")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	cs.CloseSend()
	n := 0
	for {
		err := cs.RecvMsg(&emptypb.Empty{})
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("server-streaming call whose first try fails: %v, want its retry's messages", err)
		}
		n++
	}
	if n != 2 || backend.Tries.Load() != 2 {
		t.Fatalf("server-streaming call: %d messages in %d tries, want 2 in 2", n, backend.Tries.Load())
	}
}

// TestCallTrafficPolicy: a TrafficPolicy on the Service, in the registry,
// reaches a kubernetes:/// client with DialOptions: with retry {codes:
// [Unavailable], attempts: 2, budget 20%} and one pod of three failing 30%
// of calls, at most 0.5% of calls fail and retries stay within the budget;
// once the policy is gone, about 10% fail again.
func TestCallTrafficPolicy(t *testing.T) {
	bad, good1, good2 := policytest.StartBackend(t, policytest.Failing), policytest.StartBackend(t, nil), policytest.StartBackend(t, nil)
	reg := discovery.NewRegistry()
	reg.Set(service("greeter", bad.Addr, good1.Addr, good2.Addr))
	reg.SetPolicy(policytest.TrafficPolicy(t, "greeter", `
targetRefs: [{group: "", kind: Service, name: greeter}]
retry: {codes: [Unavailable], attempts: 2, budget: {percent: 20, interval: 1h}}
`))
	conn, err := grpc.NewClient(target, append(kubernetes.DialOptions(reg), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tries := func() int64 { return bad.Tries.Load() + good1.Tries.Load() + good2.Tries.Load() }
	deadline := time.Now().Add(10 * time.Second)
	for bad.Tries.Load() == 0 || good1.Tries.Load() == 0 || good2.Tries.Load() == 0 {
		policytest.Many(conn, helloMethod, 3, &emptypb.Empty{})
		if time.Now().After(deadline) {
			t.Fatal("calls did not reach every backend")
		}
	}

	const calls = 2000
	before := tries()
	got := policytest.Many(conn, helloMethod, calls, &emptypb.Empty{})
	retries := tries() - before - calls
	t.Logf("with the policy: %v, %d retries", got, retries)
	if failed := calls - got[codes.OK]; failed > calls/200 {
		t.Errorf("%d of %d calls failed (%v), want at most 0.5%%", failed, calls, got)
	}
	if retries < calls/20 || retries > calls/5 {
		t.Errorf("%d retries for %d calls, want about a tenth, within the 20%% budget", retries, calls)
	}

	reg.DeletePolicy(discovery.Key{Namespace: "default", Name: "greeter"})
	deadline = time.Now().Add(10 * time.Second)
	for {
		before = tries()
		got = policytest.Many(conn, helloMethod, 200, &emptypb.Empty{})
		if tries()-before == 200 && got[codes.Unavailable] > 0 {
			break // no retries: the policy is gone
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls still retried after the policy was deleted: %v in %d tries", got, tries()-before)
		}
	}
}
