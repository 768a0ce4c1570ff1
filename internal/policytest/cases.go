package policytest

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Dial is a mode under test: a client of Service default/greeter, port
// 50051, served by addrs, with a TrafficPolicy of spec on it (OnGreeter
// is prepended; none if spec is empty).
type Dial func(t *testing.T, spec string, addrs ...netip.AddrPort) grpc.ClientConnInterface

// Run checks that the mode dial enforces a TrafficPolicy's rateLimit,
// fault and loadBalancer as every mode that honours them must.
func Run(t *testing.T, dial Dial) {
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
			b := StartBackend(t, nil)
			conn := dial(t, "rateLimit: {requestsPerSecond: 100, burst: 100}", b.Addr)
			Eventually(t, "a call is limited", func() bool {
				return Many(conn, SayHello, 200, &emptypb.Empty{})[codes.ResourceExhausted] > 0
			})
			before := b.Tries.Load()
			ok, failed, last, elapsed := RateLoad(conn, SayHello, 10*time.Second)
			want := 100 * elapsed.Seconds()
			t.Logf("rate limit 100/s, burst 100: %d calls through in %v (want %.0f), %v refused; last %v", ok, elapsed.Round(time.Millisecond), want, failed, last)
			if d := float64(ok) - want; d < -0.05*want || d > 0.05*want {
				t.Errorf("%d calls through in %v, want %.0f ± 5%%", ok, elapsed, want)
			}
			if len(failed) != 1 || failed[codes.ResourceExhausted] == 0 || !strings.Contains(status.Convert(last).Message(), "rate limit of Service default/greeter exceeded (100 requests per second, burst 100)") {
				t.Errorf("refused %v, last %v: want RESOURCE_EXHAUSTED naming the limit", failed, last)
			}
			if n := b.Tries.Load() - before; n != int64(ok) {
				t.Errorf("the backend got %d calls, want only the %d let through", n, ok)
			}
		},
	}, {
		// Fault abort 10% lands within ±2% over 10,000 calls, each failed
		// with a message saying it is the fault, without reaching the
		// backend.
		name: "fault abort 10% over 10,000 calls",
		run: func(t *testing.T) {
			b := StartBackend(t, nil)
			conn := dial(t, "fault: {abort: {code: Unavailable, percent: 10}}", b.Addr)
			var aborted error
			Eventually(t, "a call fails by fault", func() bool {
				aborted = conn.Invoke(context.Background(), SayHello, &emptypb.Empty{}, &emptypb.Empty{})
				return status.Code(aborted) == codes.Unavailable
			})
			if !strings.Contains(status.Convert(aborted).Message(), "fault injected: 10% of calls abort with Unavailable") {
				t.Errorf("an aborted call: %v, want a message saying it is the fault", aborted)
			}
			before := b.Tries.Load()
			const calls = 10000
			got := Many(conn, SayHello, calls, &emptypb.Empty{})
			share := float64(got[codes.Unavailable]) / calls
			t.Logf("fault abort 10%%: %.2f%% of %d calls failed (%v)", 100*share, calls, got)
			if got[codes.OK]+got[codes.Unavailable] != calls || share < 0.08 || share > 0.12 {
				t.Errorf("codes %v: want 10%% ± 2%% UNAVAILABLE, the rest OK", got)
			}
			if n := b.Tries.Load() - before; n != int64(got[codes.OK]) {
				t.Errorf("the backend got %d calls, want the %d not aborted", n, got[codes.OK])
			}
		},
	}, {
		// A fault delay holds the call before it is sent: with a 5 s
		// delay on every call, a caller's 300 ms deadline ends it
		// DEADLINE_EXCEEDED, and the backend never sees it.
		name: "fault delay holds the call",
		run: func(t *testing.T) {
			b := StartBackend(t, nil)
			conn := dial(t, "fault: {delay: {fixed: 5s, percent: 100}}", b.Addr)
			for range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				err := conn.Invoke(ctx, SayHello, &emptypb.Empty{}, &emptypb.Empty{})
				cancel()
				if status.Code(err) != codes.DeadlineExceeded {
					t.Errorf("a delayed call with a 300ms deadline: %v, want DEADLINE_EXCEEDED", err)
				}
			}
			if n := b.Tries.Load(); n != 0 {
				t.Errorf("the backend got %d delayed calls, want none", n)
			}
		},
	}, {
		// loadBalancer ring_hash on x-user: without the policy one user's
		// calls spread over the three backends (round_robin); with it
		// each user's calls go to one, and the users to more than one.
		name: "ring_hash sticks",
		run: func(t *testing.T) {
			addrs := []netip.AddrPort{StartEcho(t, "a"), StartEcho(t, "b"), StartEcho(t, "c")}
			plain := dial(t, "", addrs...)
			Eventually(t, "a user's calls reach every backend", func() bool { return len(BackendsOf(t, plain, "u0", 30)) == 3 })
			sticky := dial(t, "loadBalancer: {policy: ring_hash, hashHeader: x-user}", addrs...)
			Sticks(t, sticky)
		},
	}} {
		t.Run(tc.name, tc.run)
	}
}

// BackendsOf makes n calls as user (header x-user) and counts the
// backends (StartEcho's names) that answered.
func BackendsOf(t *testing.T, conn grpc.ClientConnInterface, user string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		hdr, err := Echo(context.Background(), conn, SayHello, "x-user", user)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.Join(hdr.Get("x-backend"), ",")]++
	}
	return out
}

// Sticks checks ring_hash on x-user over conn: once the policy is in
// force (a user's calls stick to one backend, and the users' first calls
// reach more than one), each of 8 users' calls go to one backend, and the
// users to more than one.
func Sticks(t *testing.T, conn grpc.ClientConnInterface) {
	t.Helper()
	users := []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"}
	Eventually(t, "a user's calls stick to one backend, the users' to several", func() bool {
		if len(BackendsOf(t, conn, "u0", 30)) != 1 {
			return false
		}
		seen := map[string]bool{}
		for _, u := range users {
			for b := range BackendsOf(t, conn, u, 1) {
				seen[b] = true
			}
		}
		return len(seen) >= 2
	})
	used := map[string]bool{}
	for _, u := range users {
		got := BackendsOf(t, conn, u, 50)
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
}

// BudgetSpecs are the policies of CheckBudget: a TrafficPolicy retrying
// UNAVAILABLE once, and an XBackendTrafficPolicy whose retryConstraint
// bounds those retries to 20% of the calls.
const (
	BudgetRetry      = "retry: {codes: [Unavailable], attempts: 2}"
	BudgetConstraint = "retryConstraint: {budget: {percent: 20, interval: 1h}, minRetryRate: {count: 0, interval: 1s}}"
)

// CheckBudget checks that conn's mode keeps the retries of BudgetRetry
// within BudgetConstraint: bad fails every call and good answer, so
// 1,500 calls would retry about 500 times unbounded; the budget lets 300
// through and the calls it refuses end UNAVAILABLE.
func CheckBudget(t *testing.T, conn grpc.ClientConnInterface, bad *Backend, good ...*Backend) {
	t.Helper()
	tries := func() int64 {
		n := bad.Tries.Load()
		for _, b := range good {
			n += b.Tries.Load()
		}
		return n
	}
	before := tries()
	const calls = 1500
	got := Many(conn, SayHello, calls, &emptypb.Empty{})
	retries := tries() - before - calls
	t.Logf("calls %v, %d retries", got, retries)
	if retries > calls/5 || retries < calls/10 {
		t.Errorf("%d retries for %d calls, want the 20%% budget used and kept", retries, calls)
	}
	if failed := calls - got[codes.OK]; failed == 0 || got[codes.Unavailable] != failed {
		t.Errorf("calls ended %v, want those the budget refused UNAVAILABLE", got)
	}
}
