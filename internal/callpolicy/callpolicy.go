// Package callpolicy is how the sidecar and the Go library apply a route
// rule's policy.CallPolicy: each compiles a route's rules once into Rules,
// which their calls then share (the retry budget, the rate limit's
// bucket), and asks a Rule whether a call may go (Admit) before sending
// it. Both data paths use it, so a rule means the same whichever client
// honours it; how a call is timed out and retried is theirs (frames in
// the sidecar, interceptors in the library), with package retry's policy.
package callpolicy

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/internal/retry"
	"github.com/ballast-dev/ballast/policy"
)

// Rule is one rule's call policy, ready for its calls. It is immutable
// but for the retry budget and the rate limit's bucket, which are safe
// for concurrent use.
type Rule struct {
	// Timeout bounds the call, TryTimeout each try; 0 for none.
	Timeout, TryTimeout time.Duration
	// Retry is nil when the rule retries nothing.
	Retry *retry.Policy

	limit   *rate.Limiter // nil for no rate limit
	limited *status.Status
	fault   *policy.Fault
	abort   *status.Status
}

// Compile makes the Rule of each of rules that asks for something,
// indexed by rule; nil if none does, so that calls of a route without
// call policies pay nothing for them. Rate limits take their bucket from
// buckets by name, so that the rules of one target share it and a route
// compiled again keeps counting in it.
func Compile(rules []policy.Rule, buckets *Buckets) []*Rule {
	var out []*Rule
	for i := range rules {
		cp := rules[i].Call
		r := &Rule{Timeout: max(cp.Timeout, 0), TryTimeout: max(cp.TryTimeout, 0), Retry: retry.New(cp.Retry)}
		if l := cp.RateLimit; l != nil && l.RequestsPerSecond > 0 {
			r.limit = buckets.get(*l)
			r.limited = status.New(codes.ResourceExhausted, fmt.Sprintf(
				"ballast: rate limit of %s exceeded (%d requests per second, burst %d)", bucketName(*l), l.RequestsPerSecond, max(l.Burst, 1)))
		}
		if f := cp.Fault; f != nil && ((f.Delay > 0 && f.DelayPercent > 0) || (f.AbortCode != codes.OK && f.AbortPercent > 0)) {
			r.fault = f
			if f.AbortCode != codes.OK {
				r.abort = status.New(f.AbortCode, fmt.Sprintf("ballast: fault injected: %d%% of calls abort with %v", f.AbortPercent, f.AbortCode))
			}
		}
		if r.Timeout == 0 && r.TryTimeout == 0 && r.Retry == nil && r.limit == nil && r.fault == nil {
			continue
		}
		if out == nil {
			out = make([]*Rule, len(rules))
		}
		out[i] = r
	}
	return out
}

func bucketName(l policy.RateLimit) string {
	if l.Bucket == "" {
		return "the route rule"
	}
	return l.Bucket
}

// Admits reports whether Admit can delay or fail a call of r: a rule with
// only timeouts and retries need not ask.
func (r *Rule) Admits() bool { return r.limit != nil || r.fault != nil }

// Admit decides, before a call of r is sent, what the rule's rate limit
// and fault make of it: fail, if not nil, is the status it ends with
// without being sent (over the rate limit: RESOURCE_EXHAUSTED naming the
// limit; or the fault's abort); delay is how long it waits first (the
// fault's delay; an abort comes after it, as in Envoy's fault filter). A
// call over the rate limit is neither delayed nor counted as a fault.
func (r *Rule) Admit() (delay time.Duration, fail *status.Status) {
	if r.limit != nil && !r.limit.Allow() {
		return 0, r.limited
	}
	f := r.fault
	if f == nil {
		return 0, nil
	}
	if f.Delay > 0 && roll(f.DelayPercent) {
		delay = f.Delay
	}
	if r.abort != nil && roll(f.AbortPercent) {
		fail = r.abort
	}
	return delay, fail
}

// roll is true for percent of its calls, at random.
func roll(percent int) bool { return percent >= 100 || (percent > 0 && rand.IntN(100) < percent) }

// Buckets are the rate limits' token buckets of one client, by name: a
// client keeps one Buckets for as long as it lives, so a bucket outlives
// the routes compiled with it.
type Buckets struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
}

// get is the bucket named l.Bucket (an unnamed limit gets its own), set
// to l's rate and burst: a bucket whose limit changed keeps its tokens.
func (b *Buckets) get(l policy.RateLimit) *rate.Limiter {
	limit, burst := rate.Limit(l.RequestsPerSecond), max(l.Burst, 1)
	if l.Bucket == "" || b == nil {
		return rate.NewLimiter(limit, burst)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*rate.Limiter{}
	}
	lim := b.m[l.Bucket]
	if lim == nil {
		lim = rate.NewLimiter(limit, burst)
		b.m[l.Bucket] = lim
		return lim
	}
	if lim.Limit() != limit {
		lim.SetLimit(limit)
	}
	if lim.Burst() != burst {
		lim.SetBurst(burst)
	}
	return lim
}
