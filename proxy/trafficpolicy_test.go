package proxy

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
)

// sidecarWithPolicy runs the registry → Ballast's xDS → the sidecar's xDS
// client path for Service greeter on addrs with a TrafficPolicy of spec
// (none if empty), and dials the sidecar.
func sidecarWithPolicy(t *testing.T, spec string, addrs ...string) *grpc.ClientConn {
	t.Helper()
	return sidecarWithPolicies(t, spec, "", addrs...)
}

// sidecarWithPolicies is sidecarWithPolicy with an XBackendTrafficPolicy
// of backendSpec on greeter too (none if empty).
func sidecarWithPolicies(t *testing.T, spec, backendSpec string, addrs ...string) *grpc.ClientConn {
	t.Helper()
	const nodeID = "ballast~client.default"
	reg := discovery.NewRegistry()
	reg.Set(echoService("greeter", addrs...))
	if spec != "" {
		tp := &v1alpha1.TrafficPolicy{}
		if err := yaml.UnmarshalStrict([]byte(`targetRefs: [{group: "", kind: Service, name: greeter}]`+"\n"+spec), &tp.Spec); err != nil {
			t.Fatal(err)
		}
		tp.Name, tp.Namespace, tp.Generation = "greeter", "default", 1
		reg.SetPolicy(tp)
	}
	if backendSpec != "" {
		x := &gatewayx.XBackendTrafficPolicy{}
		if err := yaml.UnmarshalStrict([]byte(`targetRefs: [{group: "", kind: Service, name: greeter}]`+"\n"+backendSpec), &x.Spec); err != nil {
			t.Fatal(err)
		}
		x.Name, x.Namespace, x.Generation = "greeter", "default", 1
		reg.SetBackendPolicy(x)
	}
	cp := startBallastControlPlane(t, nodeID, reg.List()...)
	_, addr := startOutbound(t, XDSTarget("greeter", "default", 50051), Options{XDS: runXDSClient(t, cp, nodeID)})
	return dial(t, addr)
}

// rateLoad calls over conn from 2 workers, each at most one call every
// 2 ms (up to 1,000 a second, ten times the limits tested), for d. It
// returns how many calls succeeded, the codes of the others with the last
// failure, and how long the load ran.
func rateLoad(conn *grpc.ClientConn, d time.Duration) (ok int, failed map[codes.Code]int, last error, elapsed time.Duration) {
	var mu sync.Mutex
	failed = map[codes.Code]int{}
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for time.Now().Before(end) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := conn.Invoke(ctx, sayHello, &emptypb.Empty{}, &emptypb.Empty{})
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

// TestSidecarTrafficPolicy: a TrafficPolicy's rateLimit, fault and
// loadBalancer, through Ballast's control plane and the sidecar's xDS
// client, are what the sidecar enforces.
func TestSidecarTrafficPolicy(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{{
		// A rate limit of 100 rps holds within ±5% over 10 s: the calls
		// let through are 100 a second of the time the load ran; the
		// others fail RESOURCE_EXHAUSTED naming the limit, without
		// reaching the backend. The burst is a second's worth, so that
		// the load loop stalling on a busy machine (the bucket fills
		// while nobody asks) loses no tokens; the load starts with the
		// bucket just emptied.
		name: "rate limit 100 rps over 10 s",
		run: func(t *testing.T) {
			b := startCallBackend(t, nil)
			conn := sidecarWithPolicy(t, "rateLimit: {requestsPerSecond: 100, burst: 100}", b.addr)
			eventually(t, "a call is limited", func() bool {
				return callMany(conn, sayHello, 200, &emptypb.Empty{})[codes.ResourceExhausted] > 0
			})
			before := b.tries.Load()
			ok, failed, last, elapsed := rateLoad(conn, 10*time.Second)
			want := 100 * elapsed.Seconds()
			t.Logf("rate limit 100/s, burst 100: %d calls through in %v (want %.0f), %v refused; last %v", ok, elapsed.Round(time.Millisecond), want, failed, last)
			if d := float64(ok) - want; d < -0.05*want || d > 0.05*want {
				t.Errorf("%d calls through in %v, want %.0f ± 5%%", ok, elapsed, want)
			}
			if len(failed) != 1 || failed[codes.ResourceExhausted] == 0 || !strings.Contains(status.Convert(last).Message(), "rate limit of Service default/greeter exceeded (100 requests per second, burst 100)") {
				t.Errorf("refused %v, last %v: want RESOURCE_EXHAUSTED naming the limit", failed, last)
			}
			if n := b.tries.Load() - before; n != int64(ok) {
				t.Errorf("the backend got %d calls, want only the %d let through", n, ok)
			}
		},
	}, {
		// Fault abort 10% lands within ±2% over 10,000 calls, failed by
		// the sidecar without reaching the backend.
		name: "fault abort 10% over 10,000 calls",
		run: func(t *testing.T) {
			b := startCallBackend(t, nil)
			conn := sidecarWithPolicy(t, "fault: {abort: {code: Unavailable, percent: 10}}", b.addr)
			eventually(t, "a call succeeds", func() bool { return callMany(conn, sayHello, 1, &emptypb.Empty{})[codes.OK] == 1 })
			before := b.tries.Load()
			const calls = 10000
			got := callMany(conn, sayHello, calls, &emptypb.Empty{})
			share := float64(got[codes.Unavailable]) / calls
			t.Logf("fault abort 10%%: %.2f%% of %d calls failed (%v)", 100*share, calls, got)
			if got[codes.OK]+got[codes.Unavailable] != calls || share < 0.08 || share > 0.12 {
				t.Errorf("codes %v: want 10%% ± 2%% UNAVAILABLE, the rest OK", got)
			}
			if n := b.tries.Load() - before; n != int64(got[codes.OK]) {
				t.Errorf("the backend got %d calls, want the %d not aborted", n, got[codes.OK])
			}
			err := conn.Invoke(context.Background(), sayHello, &emptypb.Empty{}, &emptypb.Empty{})
			for i := 0; err == nil && i < 1000; i++ {
				err = conn.Invoke(context.Background(), sayHello, &emptypb.Empty{}, &emptypb.Empty{})
			}
			if !strings.Contains(status.Convert(err).Message(), "fault injected: 10% of calls abort with Unavailable") {
				t.Errorf("an aborted call: %v, want a message saying it is the fault", err)
			}
		},
	}, {
		// A fault delay holds the call in the sidecar: with a 5 s delay
		// on every call, a caller's 300 ms deadline passes before the
		// call is sent, and the backend never sees it.
		name: "fault delay holds the call",
		run: func(t *testing.T) {
			b := startCallBackend(t, nil)
			conn := sidecarWithPolicy(t, "fault: {delay: {fixed: 5s, percent: 100}}", b.addr)
			for range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				err := conn.Invoke(ctx, sayHello, &emptypb.Empty{}, &emptypb.Empty{})
				cancel()
				if status.Code(err) != codes.DeadlineExceeded {
					t.Errorf("a delayed call with a 300ms deadline: %v, want DEADLINE_EXCEEDED", err)
				}
			}
			if n := b.tries.Load(); n != 0 {
				t.Errorf("the backend got %d delayed calls, want none yet", n)
			}
		},
	}, {
		// loadBalancer ring_hash on x-user: without the policy one user's
		// calls spread over the three backends (round_robin); with it
		// each user's calls go to one, and the users to more than one.
		name: "ring_hash sticks",
		run: func(t *testing.T) {
			addrs := []string{startEchoBackend(t, "a"), startEchoBackend(t, "b"), startEchoBackend(t, "c")}
			backendsOf := func(conn *grpc.ClientConn, user string, n int) map[string]int {
				out := map[string]int{}
				for range n {
					hdr, err := echoCall(context.Background(), conn, sayHello, "x-user", user)
					if err != nil {
						t.Fatal(err)
					}
					out[strings.Join(hdr.Get("x-backend"), ",")]++
				}
				return out
			}
			plain := sidecarWithPolicy(t, "", addrs...)
			eventually(t, "a user's calls reach every backend", func() bool { return len(backendsOf(plain, "u0", 30)) == 3 })

			sticky := sidecarWithPolicy(t, "loadBalancer: {policy: ring_hash, hashHeader: x-user}", addrs...)
			eventually(t, "every backend is connected", func() bool {
				seen := map[string]bool{}
				for _, u := range []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"} {
					for b := range backendsOf(sticky, u, 1) {
						seen[b] = true
					}
				}
				return len(seen) >= 2
			})
			used := map[string]bool{}
			for _, u := range []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"} {
				got := backendsOf(sticky, u, 50)
				if len(got) != 1 {
					t.Errorf("user %s: calls went to %v, want one backend", u, got)
				}
				for b := range got {
					used[b] = true
				}
			}
			if len(used) < 2 {
				t.Errorf("8 users all went to %v, want more than one backend", used)
			}
		},
	}} {
		t.Run(tc.name, tc.run)
	}
}

// TestSidecarBackendTrafficPolicyBudget: an XBackendTrafficPolicy's
// retryConstraint on greeter, through Ballast's xDS, bounds the retries its
// TrafficPolicy asks for: with one backend of three failing every call,
// the sidecar's retries stay within the 20% budget, and it refuses the
// rest.
func TestSidecarBackendTrafficPolicyBudget(t *testing.T) {
	bad, good1, good2 := startCallBackend(t, alwaysUnavailable), startCallBackend(t, nil), startCallBackend(t, nil)
	conn := sidecarWithPolicies(t, "retry: {codes: [Unavailable], attempts: 2}",
		"retryConstraint: {budget: {percent: 20, interval: 1h}, minRetryRate: {count: 0, interval: 1s}}",
		bad.addr, good1.addr, good2.addr)
	connected(t, conn, bad, good1, good2)
	const calls = 1500
	got := callMany(conn, sayHello, calls, &emptypb.Empty{})
	retries := bad.tries.Load() + good1.tries.Load() + good2.tries.Load() - calls
	t.Logf("calls %v, %d retries", got, retries)
	if retries > calls/5 || retries < calls/10 {
		t.Errorf("%d retries for %d calls, want the 20%% budget used and kept", retries, calls)
	}
	if failed := calls - got[codes.OK]; failed == 0 || got[codes.Unavailable] != failed {
		t.Errorf("calls ended %v, want those the budget refused UNAVAILABLE", got)
	}
}
