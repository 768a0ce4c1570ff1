package retry

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ballast-dev/ballast/policy"
)

func TestNewRetriesListedCodesOnly(t *testing.T) {
	if New(nil) != nil || New(&policy.Retry{Codes: []codes.Code{codes.Unavailable}}) != nil || New(&policy.Retry{Attempts: 2}) != nil {
		t.Fatal("a retry with no attempts or no codes should be no policy")
	}
	p := New(&policy.Retry{Codes: []codes.Code{codes.Unavailable, codes.ResourceExhausted}, Attempts: 2})
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if want := c == codes.Unavailable || c == codes.ResourceExhausted; p.Retries(c) != want {
			t.Errorf("Retries(%v) = %v, want %v", c, !want, want)
		}
	}
}

func TestBackoffStaysUnderItsCap(t *testing.T) {
	for _, tc := range []struct {
		backoff, max time.Duration
		n            int
		limit        time.Duration
	}{
		{0, 0, 1, 25 * time.Millisecond},
		{0, 0, 3, 100 * time.Millisecond},
		{0, 0, 10, 250 * time.Millisecond},
		{10 * time.Millisecond, 15 * time.Millisecond, 2, 15 * time.Millisecond},
		{time.Second, 0, 200, 10 * time.Second},
	} {
		p := New(&policy.Retry{Codes: []codes.Code{codes.Unavailable}, Attempts: 1, Backoff: tc.backoff, MaxBackoff: tc.max})
		var top time.Duration
		for range 2000 {
			d := p.Backoff(tc.n)
			if d <= 0 || d > tc.limit {
				t.Fatalf("Backoff(%d) with base %v max %v = %v, want in (0, %v]", tc.n, tc.backoff, tc.max, d, tc.limit)
			}
			top = max(top, d)
		}
		if top < tc.limit/2 {
			t.Errorf("Backoff(%d) with base %v max %v never above %v in 2000 draws: not spread up to %v", tc.n, tc.backoff, tc.max, top, tc.limit)
		}
	}
}

func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		name        string
		budget      policy.RetryBudget
		calls, want int
	}{
		{"20 percent of 100 calls", policy.RetryBudget{Percent: 20, Interval: time.Minute}, 100, 20},
		{"min retries when calls are few", policy.RetryBudget{Percent: 20, Interval: time.Minute, MinRetries: 3}, 5, 3},
		{"percent above min", policy.RetryBudget{Percent: 50, Interval: time.Minute, MinRetries: 3}, 10, 5},
		{"zero percent", policy.RetryBudget{Interval: time.Minute}, 100, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBudget(tc.budget)
			now := time.Unix(0, 0)
			b.now = func() time.Time { return now }
			for range tc.calls {
				b.Call()
			}
			got := 0
			for b.Allow() {
				got++
				if got > tc.calls {
					t.Fatal("budget never runs out")
				}
			}
			if got != tc.want {
				t.Fatalf("%d retries allowed, want %d", got, tc.want)
			}
			now = now.Add(tc.budget.Interval)
			if b.Allow() != (tc.budget.MinRetries > 0) {
				t.Fatalf("a new window with no calls yet: Allow = %v, want %v (min retries %d)", !(tc.budget.MinRetries > 0), tc.budget.MinRetries > 0, tc.budget.MinRetries)
			}
		})
	}
}
