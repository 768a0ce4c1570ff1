// Package retry is how the sidecar and the Go library try a failed call
// again under a policy.Retry: which status codes qualify, how long to wait
// before each retry (gRFC A6's jittered exponential backoff) and the
// budget that keeps retries to a share of the calls. Both data paths use
// it, so a rule's retries mean the same whichever client honours them.
package retry

import (
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ballast-dev/ballast/policy"
)

// Defaults of policy.Retry and policy.RetryBudget fields left zero: xDS's
// backoff (25 ms, capped at ten times the base) and Gateway API's budget
// interval.
const (
	DefaultBackoff        = 25 * time.Millisecond
	DefaultBudgetInterval = 10 * time.Second
)

// Policy is a policy.Retry ready for use on every call of a rule. It is
// immutable but for its Budget, which is safe for concurrent use.
type Policy struct {
	codes      uint32 // bit c set: code c is retried
	attempts   int
	backoff    time.Duration
	maxBackoff time.Duration
	// Budget, if set, bounds the rule's retries; every call of the rule
	// must be counted with Budget.Call.
	Budget *Budget
}

// New makes the Policy of r; nil for nil r or one that retries nothing.
func New(r *policy.Retry) *Policy {
	if r == nil || r.Attempts <= 0 || len(r.Codes) == 0 {
		return nil
	}
	p := &Policy{attempts: r.Attempts, backoff: r.Backoff, maxBackoff: r.MaxBackoff}
	for _, c := range r.Codes {
		if c < 32 {
			p.codes |= 1 << c
		}
	}
	if p.backoff <= 0 {
		p.backoff = DefaultBackoff
	}
	if p.maxBackoff <= 0 {
		p.maxBackoff = 10 * p.backoff
	}
	p.maxBackoff = max(p.maxBackoff, p.backoff)
	if r.Budget != nil {
		p.Budget = NewBudget(*r.Budget)
	}
	return p
}

// Retries reports whether a try that failed with c is tried again.
func (p *Policy) Retries(c codes.Code) bool { return c < 32 && p.codes&(1<<c) != 0 }

// Attempts is the number of tries after the first.
func (p *Policy) Attempts() int { return p.attempts }

// Backoff is how long to wait before retry n (1 for the first): a random
// time up to min(Backoff·2^(n-1), MaxBackoff), as gRFC A6 says, so the
// retries of calls that failed together spread out.
func (p *Policy) Backoff(n int) time.Duration {
	limit := p.maxBackoff
	if n <= 0 {
		n = 1
	}
	if n < 32 {
		limit = min(p.backoff<<(n-1), p.maxBackoff)
		if limit <= 0 { // overflow
			limit = p.maxBackoff
		}
	}
	return time.Duration(rand.Int64N(int64(limit)) + 1)
}

// Budget keeps a rule's retries within a share of its calls: over each
// Interval (a fixed window, counted from the first call in it), retries
// may be at most Percent of the calls, but MinRetries are always allowed.
// A fixed window rather than a sliding one: the bound holds for every
// window exactly, at the price of a burst allowed at a window's start
// (MinRetries' worth), which MinRetries allows anyway.
type Budget struct {
	percent    int
	interval   time.Duration
	minRetries int
	// now is the clock; tests replace it.
	now func() time.Time

	mu      sync.Mutex
	start   time.Time
	calls   int
	retries int
}

// NewBudget makes the Budget of b.
func NewBudget(b policy.RetryBudget) *Budget {
	interval := b.Interval
	if interval <= 0 {
		interval = DefaultBudgetInterval
	}
	return &Budget{percent: max(b.Percent, 0), interval: interval, minRetries: max(b.MinRetries, 0), now: time.Now}
}

// rollLocked starts a new window if the current one is over.
func (b *Budget) rollLocked() {
	now := b.now()
	if b.start.IsZero() || now.Sub(b.start) >= b.interval {
		b.start, b.calls, b.retries = now, 0, 0
	}
}

// Call counts a call of the rule (its first try).
func (b *Budget) Call() {
	b.mu.Lock()
	b.rollLocked()
	b.calls++
	b.mu.Unlock()
}

// Allow reports whether one more retry fits the budget, and counts it if
// so.
func (b *Budget) Allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rollLocked()
	if b.retries < b.minRetries || (b.retries+1)*100 <= b.percent*b.calls {
		b.retries++
		return true
	}
	return false
}
