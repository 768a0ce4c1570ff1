package kubernetes_test

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// libraryWithPolicy is a kubernetes:/// client of Service greeter on
// addrs, annotated lb-policy round_robin, from a registry holding a
// TrafficPolicy of spec on it (none if empty); the registry is returned
// to change it.
func libraryWithPolicy(t *testing.T, spec string, addrs ...netip.AddrPort) (*grpc.ClientConn, *discovery.Registry) {
	t.Helper()
	reg := discovery.NewRegistry()
	svc := service("greeter", addrs...)
	svc.Annotations = map[string]string{policy.LBAnnotation: string(policy.RoundRobin)}
	reg.Set(svc)
	if spec != "" {
		reg.SetPolicy(trafficPolicy(t, "greeter", `targetRefs: [{group: "", kind: Service, name: greeter}]`+"\n"+spec))
	}
	conn, err := grpc.NewClient(target, append(kubernetes.DialOptions(reg), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, reg
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
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
				err := conn.Invoke(ctx, helloMethod, &emptypb.Empty{}, &emptypb.Empty{})
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

// TestLibraryTrafficPolicy: a TrafficPolicy's rateLimit, fault and
// loadBalancer, in the registry, are what a kubernetes:/// client with
// DialOptions enforces.
func TestLibraryTrafficPolicy(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{{
		// A rate limit of 100 rps holds within ±5% over 10 s: the calls
		// let through are 100 a second of the time the load ran; the
		// others fail RESOURCE_EXHAUSTED naming the limit, without
		// reaching the backend. The burst is a second's worth, so that
		// the load loop stalling on a busy machine loses no tokens; the
		// load starts with the bucket just emptied.
		name: "rate limit 100 rps over 10 s",
		run: func(t *testing.T) {
			b := startCallBackend(t, nil)
			conn, _ := libraryWithPolicy(t, "rateLimit: {requestsPerSecond: 100, burst: 100}", b.addr)
			eventually(t, "a call is limited", func() bool {
				return callMany(conn, helloMethod, 200, &emptypb.Empty{})[codes.ResourceExhausted] > 0
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
		// the client without reaching the backend.
		name: "fault abort 10% over 10,000 calls",
		run: func(t *testing.T) {
			b := startCallBackend(t, nil)
			conn, _ := libraryWithPolicy(t, "fault: {abort: {code: Unavailable, percent: 10}}", b.addr)
			eventually(t, "a call fails by fault", func() bool {
				return callMany(conn, helloMethod, 50, &emptypb.Empty{})[codes.Unavailable] > 0
			})
			before := b.tries.Load()
			const calls = 10000
			got := callMany(conn, helloMethod, calls, &emptypb.Empty{})
			share := float64(got[codes.Unavailable]) / calls
			t.Logf("fault abort 10%%: %.2f%% of %d calls failed (%v)", 100*share, calls, got)
			if got[codes.OK]+got[codes.Unavailable] != calls || share < 0.08 || share > 0.12 {
				t.Errorf("codes %v: want 10%% ± 2%% UNAVAILABLE, the rest OK", got)
			}
			if n := b.tries.Load() - before; n != int64(got[codes.OK]) {
				t.Errorf("the backend got %d calls, want the %d not aborted", n, got[codes.OK])
			}
		},
	}, {
		// A fault delay holds the call in the client: with a 5 s delay on
		// every call, a caller's 300 ms deadline ends it DEADLINE_EXCEEDED
		// and the backend never sees it.
		name: "fault delay holds the call",
		run: func(t *testing.T) {
			b := startCallBackend(t, nil)
			conn, _ := libraryWithPolicy(t, "fault: {delay: {fixed: 5s, percent: 100}}", b.addr)
			for range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				err := conn.Invoke(ctx, helloMethod, &emptypb.Empty{}, &emptypb.Empty{})
				cancel()
				if status.Code(err) != codes.DeadlineExceeded {
					t.Errorf("a delayed call with a 300ms deadline: %v, want DEADLINE_EXCEEDED", err)
				}
			}
			if n := b.tries.Load(); n != 0 {
				t.Errorf("the backend got %d delayed calls, want none", n)
			}
		},
	}, {
		// loadBalancer ring_hash on x-user, set on a running client: one
		// user's calls spread over the three backends under the
		// annotation's round_robin; once the policy says ring_hash each
		// user's calls go to one backend, and the users to more than one.
		name: "ring_hash sticks",
		run: func(t *testing.T) {
			addrs := []netip.AddrPort{startEcho(t, "a"), startEcho(t, "b"), startEcho(t, "c")}
			conn, reg := libraryWithPolicy(t, "", addrs...)
			backendsOf := func(user string, n int) map[string]int {
				out := map[string]int{}
				for range n {
					hdr, err := echoCall(conn, helloMethod, "x-user", user)
					if err != nil {
						t.Fatal(err)
					}
					out[strings.Join(hdr.Get("x-backend"), ",")]++
				}
				return out
			}
			eventually(t, "a user's calls reach every backend", func() bool { return len(backendsOf("u0", 30)) == 3 })
			reg.SetPolicy(trafficPolicy(t, "greeter", `targetRefs: [{group: "", kind: Service, name: greeter}]
loadBalancer: {policy: ring_hash, hashHeader: x-user}`))
			eventually(t, "a user's calls stick to one backend", func() bool { return len(backendsOf("u0", 30)) == 1 })
			used := map[string]bool{}
			for _, u := range []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"} {
				got := backendsOf(u, 50)
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

// TestLibraryBackendTrafficPolicyBudget: an XBackendTrafficPolicy's
// retryConstraint on greeter bounds the retries its TrafficPolicy asks
// for: with one backend of three failing every call, the library's
// retries stay within the 20% budget.
func TestLibraryBackendTrafficPolicyBudget(t *testing.T) {
	bad, good1, good2 := startCallBackend(t, alwaysUnavailable), startCallBackend(t, nil), startCallBackend(t, nil)
	conn, reg := libraryWithPolicy(t, "retry: {codes: [Unavailable], attempts: 2}", bad.addr, good1.addr, good2.addr)
	x := &gatewayx.XBackendTrafficPolicy{}
	if err := yaml.UnmarshalStrict([]byte(`targetRefs: [{group: "", kind: Service, name: greeter}]
retryConstraint: {budget: {percent: 20, interval: 1h}, minRetryRate: {count: 0, interval: 1s}}`), &x.Spec); err != nil {
		t.Fatal(err)
	}
	x.Name, x.Namespace, x.Generation = "greeter", "default", 1
	reg.SetBackendPolicy(x) // before the first call: the channel resolves on it
	const calls = 1500
	got := callMany(conn, helloMethod, calls, &emptypb.Empty{})
	retries := bad.tries.Load() + good1.tries.Load() + good2.tries.Load() - calls
	t.Logf("calls %v, %d retries", got, retries)
	if retries > calls/5 || retries < calls/10 {
		t.Errorf("%d retries for %d calls, want the 20%% budget used and kept", retries, calls)
	}
	if failed := calls - got[codes.OK]; failed == 0 || got[codes.Unavailable] != failed {
		t.Errorf("calls ended %v, want those the budget refused UNAVAILABLE", got)
	}
}
