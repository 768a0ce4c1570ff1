package proxy

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/policytest"
	"github.com/ballast-dev/ballast/policy"
)

// callBackend is a policytest backend with its address as the proxy's
// tests write addresses.
type callBackend struct {
	*policytest.Backend
	addr string
}

func startCallBackend(t testing.TB, handle policytest.Handler) *callBackend {
	t.Helper()
	b := policytest.StartBackend(t, handle)
	return &callBackend{Backend: b, addr: b.Addr.String()}
}

// callRoute routes calls with header x-policy: yes by a rule with call
// policy cp, and all others by a rule without one, both to cluster "c".
func callRoute(cp policy.CallPolicy) policy.Route {
	to := []policy.Backend{{Cluster: "c", Weight: 1}}
	return policy.Route{Name: "greeter", Rules: []policy.Rule{
		{Name: "with-policy", Match: policy.Match{Headers: []policy.HeaderMatch{{Name: "x-policy", Value: policy.StringMatch{Type: policy.Exact, Value: "yes"}}}}, Backends: to, Call: cp},
		{Name: "without", Backends: to},
	}}
}

// connected waits until calls over conn reach every backend (round_robin
// only uses connected ones), and zeroes their counts.
func connected(t testing.TB, conn *grpc.ClientConn, backends ...*callBackend) {
	t.Helper()
	eventually(t, "calls reaching every backend", func() bool {
		policytest.Many(conn, sayHello, len(backends), &emptypb.Empty{})
		for _, b := range backends {
			if b.Tries.Load() == 0 {
				return false
			}
		}
		return true
	})
	for _, b := range backends {
		b.Tries.Store(0)
	}
}

func (p *runningProxy) retries(result string) float64 {
	return metricValue(p.metrics.retries.WithLabelValues("greeter.default:50051", result))
}

func (p *runningProxy) timeouts(kind string) float64 {
	return metricValue(p.metrics.timeouts.WithLabelValues("greeter.default:50051", kind))
}

const sayHello = "/helloworld.Greeter/SayHello"

// TestRetryUnavailable: one of three backends answers UNAVAILABLE to 30% of
// calls. Calls of a rule retrying UNAVAILABLE twice fail at most 0.5% of
// the time (a try fails 10% of the time), each failed try retried on
// another pick; calls of a rule without a policy fail about 10% of the
// time, each try once.
func TestRetryUnavailable(t *testing.T) {
	bad := startCallBackend(t, policytest.Failing)
	good1, good2 := startCallBackend(t, nil), startCallBackend(t, nil)
	cp := policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 2}}
	conn, p, _ := startRouted(t, update(callRoute(cp), map[string][]string{"c": {bad.addr, good1.addr, good2.addr}}))
	connected(t, conn, bad, good1, good2)

	const calls = 2000
	tries := func() int64 { return bad.Tries.Load() + good1.Tries.Load() + good2.Tries.Load() }
	before, badBefore, retriedBefore := tries(), bad.Tries.Load(), p.retries("retried")
	got := policytest.Many(conn, sayHello, calls, &emptypb.Empty{}, "x-policy", "yes")
	failed := calls - got[codes.OK]
	t.Logf("with retries: %v; %d tries, %d on the failing backend, %v retried", got, tries()-before, bad.Tries.Load()-badBefore, p.retries("retried")-retriedBefore)
	if failed > calls/200 {
		t.Errorf("%d of %d calls failed (%v), want at most 0.5%%", failed, calls, got)
	}
	if got[codes.OK]+got[codes.Unavailable] != calls {
		t.Errorf("codes %v, want only OK and UNAVAILABLE", got)
	}
	// Every failed try but the calls' last was retried: tries = calls + retries.
	retried := p.retries("retried") - retriedBefore
	if extra := float64(tries() - before - calls); extra != retried || retried < calls/20 {
		t.Errorf("%v tries beyond one per call, %v retries counted: want them equal, and about a tenth of %d calls", extra, retried, calls)
	}

	before = tries()
	got = policytest.Many(conn, sayHello, calls, &emptypb.Empty{})
	failed = calls - got[codes.OK]
	t.Logf("without: %v", got)
	if failed < calls/20 || failed > calls*3/20 || got[codes.Unavailable] != failed {
		t.Errorf("without a policy %d of %d calls failed (%v), want about 10%% UNAVAILABLE", failed, calls, got)
	}
	if n := tries() - before; n != calls {
		t.Errorf("without a policy: %d tries for %d calls, want one each", n, calls)
	}
}

// TestRetryBudget: with one backend of three failing every call, retries
// of a rule with a 20% budget stay within 20% of its calls; those the
// budget refuses fail with the try's status.
func TestRetryBudget(t *testing.T) {
	bad := startCallBackend(t, policytest.AlwaysUnavailable)
	good1, good2 := startCallBackend(t, nil), startCallBackend(t, nil)
	cp := policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 2,
		Budget: &policy.RetryBudget{Percent: 20, Interval: time.Hour}}}
	conn, p, _ := startRouted(t, update(callRoute(cp), map[string][]string{"c": {bad.addr, good1.addr, good2.addr}}))
	connected(t, conn, bad, good1, good2)

	const calls = 1500
	got := policytest.Many(conn, sayHello, calls, &emptypb.Empty{}, "x-policy", "yes")
	retried, refused := p.retries("retried"), p.retries("budget_exhausted")
	t.Logf("calls %v; retried %v, refused by the budget %v", got, retried, refused)
	if retried > calls/5 {
		t.Errorf("%v retries for %d calls, over the 20%% budget", retried, calls)
	}
	if retried < calls/10 || refused == 0 {
		t.Errorf("%v retries, %v refused: want the budget used (a third of the first tries fail) and then refusing", retried, refused)
	}
	if failed := calls - got[codes.OK]; failed == 0 || got[codes.Unavailable] != failed {
		t.Errorf("calls ended %v, want the refused ones UNAVAILABLE", got)
	}
}

// TestCallTimeout: a rule's timeout ends its slow calls with
// DEADLINE_EXCEEDED from the proxy, cancelling them upstream, and tells the
// server the deadline; a client's sooner deadline is the one the server
// gets; calls of other rules are not bounded by it.
func TestCallTimeout(t *testing.T) {
	slow := policytest.StartSlowBackend(t)
	cp := policy.CallPolicy{Timeout: 200 * time.Millisecond}
	conn, p, _ := startRouted(t, update(callRoute(cp), map[string][]string{"c": {slow.Addr.String()}}))
	policytest.CheckCallTimeout(t, conn, sayHello, slow)
	// The proxy's timer ended the first call (its client waits 10s); the
	// second's 100ms deadline the client and the proxy both hold, and
	// either may end it first.
	if n := p.timeouts("call"); n < 1 || n > 2 {
		t.Errorf("ballast_proxy_timeouts_total{timeout=call} = %v, want 1 or 2", n)
	}
}

// TestTryTimeout: a try that outlives the rule's per-try timeout is
// cancelled and, as the rule retries DEADLINE_EXCEEDED, tried again; the
// retry carries grpc-previous-rpc-attempts.
func TestTryTimeout(t *testing.T) {
	var retriedSeen atomic.Int64
	release := make(chan struct{})
	backend := startCallBackend(t, func(ctx context.Context, _ string, _ int64) error {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("grpc-previous-rpc-attempts"); len(v) == 1 && v[0] == "1" {
			retriedSeen.Add(1)
			return nil
		}
		// The first try never answers, not even when its deadline passes:
		// only the proxy's per-try timer ends it.
		<-release
		return ctx.Err()
	})
	t.Cleanup(func() { close(release) }) // before the backend stops
	cp := policy.CallPolicy{TryTimeout: 100 * time.Millisecond, Retry: &policy.Retry{Codes: []codes.Code{codes.DeadlineExceeded}, Attempts: 1}}
	conn, p, _ := startRouted(t, update(callRoute(cp), map[string][]string{"c": {backend.addr}}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Invoke(metadata.AppendToOutgoingContext(ctx, "x-policy", "yes"), sayHello, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("call whose first try hangs: %v, want OK from the retry", err)
	}
	if backend.Tries.Load() != 2 || retriedSeen.Load() != 1 {
		t.Errorf("%d tries, %d with grpc-previous-rpc-attempts 1; want 2 and 1", backend.Tries.Load(), retriedSeen.Load())
	}
	if p.timeouts("try") != 1 || p.retries("retried") != 1 {
		t.Errorf("try timeouts %v, retries %v; want 1 and 1", p.timeouts("try"), p.retries("retried"))
	}
}

// TestRetryReplayBounds: a request over the per-call replay bound goes
// through once and is not retried; a small one is retried up to the rule's
// attempts.
func TestRetryReplayBounds(t *testing.T) {
	bad := startCallBackend(t, policytest.AlwaysUnavailable)
	cp := policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 2}}
	conn, p, _ := startRouted(t, update(callRoute(cp), map[string][]string{"c": {bad.addr}}))
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-policy", "yes")

	big := wrapperspb.Bytes(make([]byte, maxReplayPerCall+1))
	if err := conn.Invoke(ctx, sayHello, big, &emptypb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("big call: %v, want UNAVAILABLE", err)
	}
	if n := bad.Tries.Load(); n != 1 || p.retries("not_buffered") != 1 {
		t.Fatalf("big call: %d tries, not_buffered %v; want 1 and 1", n, p.retries("not_buffered"))
	}
	small := wrapperspb.Bytes(make([]byte, 1000))
	if err := conn.Invoke(ctx, sayHello, small, &emptypb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("small call: %v, want UNAVAILABLE", err)
	}
	if n := bad.Tries.Load() - 1; n != 3 || p.retries("retried") != 2 || p.retries("attempts_exhausted") != 1 {
		t.Fatalf("small call: %d tries, retried %v, exhausted %v; want 3, 2, 1", n, p.retries("retried"), p.retries("attempts_exhausted"))
	}
	eventually(t, "replay buffer released", func() bool { return p.upstreams.replay.used.Load() == 0 })
}

// TestZeroCallPolicyCostsNothing: a route whose rules ask for no call
// policy compiles to none, so its calls keep no state; a rule with a
// timeout and no retry keeps no copy of requests.
func TestZeroCallPolicyCostsNothing(t *testing.T) {
	if rules := newCallRules(policy.NewRouter(callRoute(policy.CallPolicy{})), &callMetrics{}, nil); rules != nil {
		t.Fatalf("call rules of a route without call policies: %v, want none", rules)
	}
	backend := startCallBackend(t, func(context.Context, string, int64) error {
		return status.Error(codes.Unavailable, "injected failure")
	})
	conn, p, _ := startRouted(t, update(callRoute(policy.CallPolicy{Timeout: time.Minute}), map[string][]string{"c": {backend.addr}}))
	got := policytest.Many(conn, sayHello, 100, wrapperspb.Bytes(make([]byte, 1000)), "x-policy", "yes")
	if got[codes.Unavailable] != 100 || backend.Tries.Load() != 100 {
		t.Fatalf("calls %v in %d tries, want 100 UNAVAILABLE in 100 tries", got, backend.Tries.Load())
	}
	if n := p.upstreams.replay.used.Load(); n != 0 {
		t.Fatalf("replay buffer holds %d bytes with no retry policy", n)
	}
}

// TestRetryStreamingRequest: a client-streaming call whose first try fails
// after its first message is retried with that message replayed, and the
// messages the client sends after the retry began follow it; one whose
// request outgrows the replay bound before the try fails is not retried.
func TestRetryStreamingRequest(t *testing.T) {
	lis := listen(t)
	var failAfter atomic.Int64
	gs := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		md, _ := metadata.FromIncomingContext(stream.Context())
		retry := len(md.Get("grpc-previous-rpc-attempts")) > 0
		var n, bytes int64
		for {
			m := &wrapperspb.BytesValue{}
			err := stream.RecvMsg(m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			n++
			bytes += int64(len(m.Value))
			if !retry && n == failAfter.Load() {
				return status.Error(codes.Unavailable, "injected failure")
			}
		}
		return stream.SendMsg(wrapperspb.Int64(n<<32 | bytes))
	}))
	served := make(chan struct{})
	go func() { defer close(served); gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-served })
	cp := policy.CallPolicy{Retry: &policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 1}}
	conn, p, _ := startRouted(t, update(callRoute(cp), map[string][]string{"c": {lis.Addr().String()}}))
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-policy", "yes")
	upload := func(sizes []int, between func(i int)) (int64, error) {
		cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, "/test.Upload/Upload")
		if err != nil {
			return 0, err
		}
		for i, size := range sizes {
			if err := cs.SendMsg(wrapperspb.Bytes(make([]byte, size))); err != nil {
				break // the status comes with RecvMsg
			}
			between(i)
		}
		cs.CloseSend()
		got := &wrapperspb.Int64Value{}
		err = cs.RecvMsg(got)
		return got.Value, err
	}

	failAfter.Store(1)
	got, err := upload([]int{1000, 2000, 3000}, func(i int) {
		if i == 0 { // the first try fails on this message: wait for its retry
			eventually(t, "the retry", func() bool { return p.retries("retried") == 1 })
		}
	})
	if err != nil || got != 3<<32|6000 {
		t.Fatalf("streamed call retried mid-request: got %d messages, %d bytes, err %v; want 3 messages, 6000 bytes, OK", got>>32, got&(1<<32-1), err)
	}

	failAfter.Store(2)
	_, err = upload([]int{40 << 10, 40 << 10, 10}, func(int) {})
	if status.Code(err) != codes.Unavailable || p.retries("not_buffered") != 1 || p.retries("retried") != 1 {
		t.Fatalf("streamed call over the replay bound: %v, not_buffered %v, retried %v; want UNAVAILABLE, 1, 1", err, p.retries("not_buffered"), p.retries("retried"))
	}
}

func TestGRPCTimeoutValues(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "1n"},
		{200 * time.Millisecond, "200000u"},
		{99999999 * time.Nanosecond, "99999999n"},
		{10 * time.Second, "10000000u"},
		{100 * time.Second, "100000m"},
		{1000 * time.Hour, "3600000S"},
	} {
		got := encodeTimeout(tc.d)
		if got != tc.want {
			t.Errorf("encodeTimeout(%v) = %q, want %q", tc.d, got, tc.want)
		}
		if back, ok := parseTimeout(got); !ok || back < tc.d {
			t.Errorf("parseTimeout(%q) = %v, %v; want at least %v", got, back, ok, tc.d)
		}
	}
	for _, bad := range []string{"", "1", "1x", "-1S", "123456789S"} {
		if _, ok := parseTimeout(bad); ok {
			t.Errorf("parseTimeout(%q) accepted", bad)
		}
	}
}

// TestXDSTrafficPolicy: a TrafficPolicy on a Service, through Ballast's
// control plane (registry → xDS: retry_policy, the budget in the route's
// metadata, max_stream_duration) and the sidecar's xDS client, is what the
// sidecar enforces: one pod of three failing 30% of calls, at most 0.5% of
// calls fail, the retries within the policy's 20% budget.
func TestXDSTrafficPolicy(t *testing.T) {
	const nodeID = "ballast~client.default"
	bad, good1, good2 := startCallBackend(t, policytest.Failing), startCallBackend(t, nil), startCallBackend(t, nil)
	reg := discovery.NewRegistry()
	reg.Set(echoService("greeter", bad.addr, good1.addr, good2.addr))
	tp := &v1alpha1.TrafficPolicy{}
	if err := yaml.UnmarshalStrict([]byte(`
targetRefs: [{group: "", kind: Service, name: greeter}]
timeouts: {request: 10s}
retry: {codes: [Unavailable], attempts: 2, budget: {percent: 20, interval: 1h}}
`), &tp.Spec); err != nil {
		t.Fatal(err)
	}
	tp.Name, tp.Namespace, tp.Generation = "greeter", "default", 1
	reg.SetPolicy(tp)

	cp := startBallastControlPlane(t, nodeID, reg.List()...)
	p, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
	conn := dial(t, addr)
	connected(t, conn, bad, good1, good2)

	const calls = 2000
	got := policytest.Many(conn, sayHello, calls, &emptypb.Empty{})
	retried := p.retries("retried")
	t.Logf("calls %v; retried %v, attempts exhausted %v, refused by the budget %v", got, retried, p.retries("attempts_exhausted"), p.retries("budget_exhausted"))
	if failed := calls - got[codes.OK]; failed > calls/200 {
		t.Errorf("%d of %d calls failed (%v), want at most 0.5%%", failed, calls, got)
	}
	if retried < calls/20 || retried > calls/5 {
		t.Errorf("%v retries for %d calls (and connected's few), want about a tenth, within the 20%% budget", retried, calls)
	}
}
