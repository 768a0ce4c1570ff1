package proxy

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/internal/callpolicy"
	"github.com/ballast-dev/ballast/policy"
)

// Bounds of the copies of requests kept to replay them on a retry, as
// Envoy's retry buffer bounds them: a call whose request is bigger than
// maxReplayPerCall, or that finds the proxy's maxReplayPerProxy taken by
// other calls, is not retried (it goes through once, unbuffered).
const (
	maxReplayPerCall  = 64 << 10
	maxReplayPerProxy = 4 << 20
)

// replayPool counts the bytes of every call's replay copy.
type replayPool struct{ used atomic.Int64 }

func (p *replayPool) reserve(n int64) bool {
	if p.used.Add(n) > maxReplayPerProxy {
		p.used.Add(-n)
		return false
	}
	return true
}

func (p *replayPool) release(n int64) { p.used.Add(-n) }

// retryResult is what became of a try that failed with a code its rule
// retries (the result label of ballast_proxy_retries_total).
type retryResult int

const (
	retried retryResult = iota
	attemptsExhausted
	budgetExhausted
	notBuffered
	numRetryResults
)

func (r retryResult) String() string {
	return [...]string{"retried", "attempts_exhausted", "budget_exhausted", "not_buffered"}[r]
}

// Which timeout ended a call (the timeout label of
// ballast_proxy_timeouts_total).
const (
	callTimeout = iota
	tryTimeout
)

// callRule is what one route rule's policy.CallPolicy asks of the calls it
// matches, made when the route is compiled: the calls of the rule share
// its retry budget and its rate limit's bucket.
type callRule struct {
	*callpolicy.Rule
	metrics *callMetrics
}

// newCallRules makes the callRule of each rule of r that asks for
// something, indexed by rule; nil if none does (then no call pays for
// call policies).
func newCallRules(r *policy.Router, m *callMetrics, buckets *callpolicy.Buckets) []*callRule {
	if m == nil {
		return nil
	}
	rules := callpolicy.Compile(r.Route().Rules, buckets)
	if rules == nil {
		return nil
	}
	out := make([]*callRule, len(rules))
	for i, cr := range rules {
		if cr != nil {
			out[i] = &callRule{Rule: cr, metrics: m}
		}
	}
	return out
}

// call is the state of a call whose rule has a call policy: its timers,
// its tries, and the copy of its request that a retry replays. A call
// without one has none (stream.call is nil), and pays nothing for it.
//
// Tries: the stream's inline upstream leg (stream.upl) carries the first;
// each retry gets a new leg, so a leg is never reused and whatever still
// points at a failed try's leg (a read loop, a window credit) finds it
// closed. cur is the current try's leg; down's request frames go to it.
//
// A try is retried only while nothing of its response has gone to the
// client: a trailers-only response with a retried code, a reset, or a
// lost connection before any response headers. Once response headers or
// data go to the client, or the call ends otherwise, the call is final:
// no try starts after that, and cur never changes again.
type call struct {
	rule *callRule
	s    *stream
	pool *replayPool
	// deadline is when the proxy ends the call with DEADLINE_EXCEEDED
	// (zero if the rule has no timeout); bound the earliest deadline of
	// the call, the client's own (grpc-timeout) included, which each try
	// carries upstream as its grpc-timeout.
	deadline, bound time.Time

	cur atomic.Pointer[leg]
	// started is the leg of the try last started: a try's leg may be
	// placed only once it is both current and started (after its
	// backoff).
	started atomic.Pointer[leg]
	final   atomic.Bool

	mu      sync.Mutex
	attempt int // tries started, the first is 1
	timer   *time.Timer
	try     *time.Timer
	backoff *time.Timer
	// head are the request headers as routed (filters applied), the
	// tries' grpc-timeout and grpc-previous-rpc-attempts aside; body the
	// request's DATA so far, ended whether it is all of it. replayable
	// says the copy is whole (within its bounds); reserved is what it
	// holds of the pool.
	head       []hpack.HeaderField
	body       []byte
	ended      bool
	replayable bool
	reserved   int64
	released   bool
	// timedOut says the call's timeout ended it (counted once);
	// tryDeadline is when the current try's timeout ends it (zero if
	// none).
	timedOut    bool
	tryDeadline time.Time
}

// upLeg is the leg of the call's current try.
func (s *stream) upLeg() *leg {
	if c := s.call.Load(); c != nil {
		return c.cur.Load()
	}
	return &s.upl
}

// placeable reports whether l is the leg of the try to place now.
func (s *stream) placeable(l *leg) bool {
	c := s.call.Load()
	if c == nil {
		return l == &s.upl
	}
	return l == c.cur.Load() && l == c.started.Load()
}

// startCall begins enforcing cr on s, whose request headers after the
// route's filters are fields; it returns the first try's headers. A call
// that waited for the upstream's first route (waited) is not replayable:
// its first request frames went by before it had a rule.
func (s *stream) startCall(cr *callRule, fields []hpack.HeaderField, waited bool) []hpack.HeaderField {
	now := time.Now()
	c := &call{rule: cr, s: s, pool: s.up.replay, attempt: 1}
	c.head = append([]hpack.HeaderField(nil), fields...)
	c.replayable = cr.Retry != nil && !waited && s.up.replay != nil
	if !waited { // END_STREAM on the request headers
		dc := s.down.c
		dc.mu.Lock()
		c.ended = s.down.recvDone
		dc.mu.Unlock()
	}
	if cr.Timeout > 0 {
		c.deadline = now.Add(cr.Timeout)
	}
	c.bound = c.deadline
	for _, hf := range fields {
		if hf.Name != "grpc-timeout" {
			continue
		}
		if d, ok := parseTimeout(hf.Value); ok {
			if t := now.Add(d); c.bound.IsZero() || t.Before(c.bound) {
				c.bound = t
				if !c.deadline.IsZero() {
					c.deadline = t
				}
			}
		}
	}
	if cr.Retry != nil && cr.Retry.Budget != nil {
		cr.Retry.Budget.Call()
	}
	c.cur.Store(&s.upl)
	c.started.Store(&s.upl)
	first := c.headers(1, now)
	c.mu.Lock()
	s.call.Store(c)
	if !c.deadline.IsZero() {
		c.timer = time.AfterFunc(c.deadline.Sub(now), s.callTimedOut)
	}
	if cr.TryTimeout > 0 {
		c.tryDeadline = now.Add(cr.TryTimeout)
		c.try = time.AfterFunc(cr.TryTimeout, func() { s.tryTimedOut(1) })
	}
	c.mu.Unlock()
	return first
}

// headers are the request headers of try n starting at now: the call's
// bound, or the try's if it is sooner, as grpc-timeout, so the server
// knows when the proxy stops waiting; and, on a retry, how many tries
// came before (gRFC A6's grpc-previous-rpc-attempts).
func (c *call) headers(n int, now time.Time) []hpack.HeaderField {
	bound := c.bound
	if t := c.rule.TryTimeout; t > 0 && (bound.IsZero() || now.Add(t).Before(bound)) {
		bound = now.Add(t)
	}
	out := make([]hpack.HeaderField, 0, len(c.head)+2)
	for _, hf := range c.head {
		if (hf.Name == "grpc-timeout" && !bound.IsZero()) || hf.Name == "grpc-previous-rpc-attempts" {
			continue
		}
		out = append(out, hf)
	}
	if !bound.IsZero() {
		out = append(out, hpack.HeaderField{Name: "grpc-timeout", Value: encodeTimeout(bound.Sub(now))})
	}
	if n > 1 {
		out = append(out, hpack.HeaderField{Name: "grpc-previous-rpc-attempts", Value: strconv.Itoa(n - 1)})
	}
	return out
}

// finalLocked makes the call final: no try starts after this one. The
// replay copy is let go.
func (c *call) finalLocked() {
	c.final.Store(true)
	for _, t := range []*time.Timer{c.try, c.backoff} {
		if t != nil {
			t.Stop()
		}
	}
	c.dropReplayLocked()
}

func (c *call) dropReplayLocked() {
	c.replayable = false
	c.body = nil
	if c.reserved > 0 {
		c.pool.release(c.reserved)
		c.reserved = 0
	}
}

// finish makes the call final as it ends otherwise than by its current
// try's response (it failed, the client reset it, a connection was lost),
// and returns the leg of its last try.
func (c *call) finish() *leg {
	c.mu.Lock()
	c.finalLocked()
	c.mu.Unlock()
	return c.cur.Load()
}

// release stops the call's timers once the stream has ended.
func (c *call) release() {
	c.mu.Lock()
	c.finalLocked()
	c.released = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
}

// request keeps a copy of request DATA for replay, while the copy fits its
// bounds, and returns the leg it goes to now.
func (c *call) request(data []byte, end, trailers bool) *leg {
	if c.final.Load() {
		return c.cur.Load()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if trailers {
		// gRPC requests have no trailers; a request that does is not
		// replayed rather than replayed without them.
		c.dropReplayLocked()
	}
	if c.replayable && len(data) > 0 {
		n := int64(len(data))
		if len(c.body)+len(data) > maxReplayPerCall || !c.pool.reserve(n) {
			c.dropReplayLocked()
		} else {
			c.reserved += n
			c.body = append(c.body, data...)
		}
	}
	if end {
		c.ended = true
	}
	return c.cur.Load()
}

// responded is told of response headers arriving on from; it reports
// whether they go on to the client. Headers that end a try with a code the
// rule retries, before any response, start a retry instead.
func (s *stream) responded(c *call, from *leg, fields []hpack.HeaderField, end bool, b *batch) bool {
	if c.final.Load() {
		return from == c.cur.Load()
	}
	c.mu.Lock()
	if from != c.cur.Load() {
		c.mu.Unlock()
		return false // a try already given up
	}
	if end && !from.headersRecv {
		if code := grpcStatus(fields); code != codes.OK {
			if next := s.retryLocked(c, code); next != nil {
				c.mu.Unlock()
				fc := from.c
				fc.mu.Lock()
				from.headersRecv, from.recvDone = true, true
				from.checkDoneLocked(b)
				fc.mu.Unlock()
				s.retryAfter(c, next, code)
				return false
			}
		}
	}
	c.finalLocked()
	c.mu.Unlock()
	return true
}

// responding is told of response DATA arriving on from; it reports
// whether it goes on to the client (else it is from a try given up).
func (s *stream) responding(c *call, from *leg) bool {
	if c.final.Load() {
		return from == c.cur.Load()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if from != c.cur.Load() {
		return false
	}
	c.finalLocked()
	return true
}

// tryFailed is told that the try on from ended with code (reset, or its
// connection lost; from is closed already); it reports whether that is
// dealt with here, a retry or a try given up earlier, rather than ending
// the call.
func (s *stream) tryFailed(c *call, from *leg, code codes.Code) bool {
	c.mu.Lock()
	if from != c.cur.Load() {
		c.mu.Unlock()
		return true
	}
	if c.final.Load() {
		c.mu.Unlock()
		return false
	}
	next := s.retryLocked(c, code)
	c.mu.Unlock()
	if next == nil {
		return false
	}
	s.retryAfter(c, next, code)
	return true
}

// retryLocked decides whether the current try, failed with code, is
// tried again. If so it makes the next try's leg, with the replay of the
// request queued on it, and makes it current, and returns it; if not, the
// call is final.
func (s *stream) retryLocked(c *call, code codes.Code) *leg {
	r := c.rule.Retry
	if r == nil || !r.Retries(code) {
		c.finalLocked()
		return nil
	}
	result := retried
	switch {
	case c.attempt > r.Attempts():
		result = attemptsExhausted
	case !c.replayable:
		result = notBuffered
	case r.Budget != nil && !r.Budget.Allow():
		result = budgetExhausted
	}
	c.rule.metrics.retries[result].Inc()
	if result != retried {
		c.finalLocked()
		return nil
	}
	c.attempt++
	next := &leg{s: s, peer: &s.down, recvWindow: streamWindow}
	next.pending = c.replayLocked(c.attempt)
	s.open.Add(1) // before any leg of the call can close the last
	c.cur.Store(next)
	return next
}

// replayLocked is what try n sends first: the request headers, and the
// request's DATA so far in frames the peer takes.
func (c *call) replayLocked(n int) []item {
	items := make([]item, 0, 1+(len(c.body)+frameSize-1)/frameSize)
	items = append(items, item{fields: c.headers(n, time.Now()), end: c.ended && len(c.body) == 0})
	for rest := c.body; len(rest) > 0; {
		chunk := rest[:min(len(rest), frameSize)]
		rest = rest[len(chunk):]
		items = append(items, item{data: chunk, end: c.ended && len(rest) == 0})
	}
	return items
}

// retryAfter tells the balancer the failed try's pick failed, and starts
// the next try, next, after the backoff. The failed try's pick is the
// last one placed: next is current already, so no other try is placed
// until next starts.
func (s *stream) retryAfter(c *call, next *leg, code codes.Code) {
	s.up.parkMu.Lock()
	done := s.done
	s.done = nil
	s.up.parkMu.Unlock()
	if done != nil {
		done(balancer.DoneInfo{Err: status.Error(code, "ballast proxy: try failed; retrying"), BytesSent: true, BytesReceived: true})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.final.Load() {
		return
	}
	c.backoff = time.AfterFunc(c.rule.Retry.Backoff(c.attempt-1), func() { s.startTry(c, next) })
}

// startTry places the try whose leg is next, if it is still the call's.
func (s *stream) startTry(c *call, next *leg) {
	c.mu.Lock()
	if c.final.Load() || c.cur.Load() != next {
		c.mu.Unlock()
		return
	}
	n := c.attempt
	if c.rule.TryTimeout > 0 {
		c.tryDeadline = time.Now().Add(c.rule.TryTimeout)
		c.try = time.AfterFunc(c.rule.TryTimeout, func() { s.tryTimedOut(n) })
	}
	c.started.Store(next)
	c.mu.Unlock()
	fields := c.headers(n, time.Now()) // the timeouts from now, not from the failure
	s.up.parkMu.Lock()
	if !next.ready.Load() && len(next.pending) > 0 && next.pending[0].fields != nil {
		next.pending[0].fields = fields
	}
	h := s.host
	s.up.parkMu.Unlock()
	var b batch
	if h == nil {
		s.fail(codes.Unavailable, "ballast proxy: no host to retry on", &b)
	} else {
		h.route(s, &b)
	}
	b.flush()
}

// callTimedOut ends the call with DEADLINE_EXCEEDED: trailers to the
// client, RST_STREAM(CANCEL) to the upstream.
func (s *stream) callTimedOut() {
	c := s.call.Load()
	c.mu.Lock()
	done := c.released || c.timedOut
	c.timedOut = true
	c.mu.Unlock()
	if done {
		return
	}
	c.rule.metrics.timeouts[callTimeout].Inc()
	var b batch
	s.fail(codes.DeadlineExceeded, fmt.Sprintf("ballast proxy: the call's timeout (%v) elapsed", c.rule.Timeout), &b)
	b.flush()
}

// tryTimedOut gives up try n: it is cancelled upstream and, if the rule
// retries DEADLINE_EXCEEDED and nothing of its response reached the
// client, tried again; else the call ends with DEADLINE_EXCEEDED.
func (s *stream) tryTimedOut(n int) {
	c := s.call.Load()
	c.mu.Lock()
	if c.attempt != n || c.released {
		c.mu.Unlock()
		return
	}
	old := c.cur.Load()
	var next *leg
	if !c.final.Load() {
		next = s.retryLocked(c, codes.DeadlineExceeded)
	}
	c.mu.Unlock()
	c.rule.metrics.timeouts[tryTimeout].Inc()
	var b batch
	if next == nil {
		s.fail(codes.DeadlineExceeded, fmt.Sprintf("ballast proxy: the try's timeout (%v) elapsed", c.rule.TryTimeout), &b)
	} else {
		s.sendReset(old, http2.ErrCodeCancel, &b)
		s.retryAfter(c, next, codes.DeadlineExceeded)
	}
	b.flush()
}

// overdue handles the end of the try on from with code (a reset, or
// trailers) when it is the upstream's answer to a deadline the proxy set:
// the server got the call's or the try's bound as grpc-timeout, so at that
// bound it and the proxy's timer race, and the server's CANCEL or
// DEADLINE_EXCEEDED may come first. It is then taken as the proxy's own
// timeout, so the client gets the same answer either way. It reports
// whether it took it.
func (s *stream) overdue(c *call, from *leg, code codes.Code) bool {
	if code != codes.DeadlineExceeded && code != codes.Canceled {
		return false
	}
	now := time.Now()
	c.mu.Lock()
	current := from == c.cur.Load()
	n, tryOver := c.attempt, !c.tryDeadline.IsZero() && !now.Before(c.tryDeadline) && !c.final.Load()
	c.mu.Unlock()
	switch {
	case !current:
		return false
	case !c.deadline.IsZero() && !now.Before(c.deadline):
		s.callTimedOut()
	case tryOver:
		s.tryTimedOut(n)
	default:
		return false
	}
	return true
}

// parseTimeout reads a grpc-timeout value: up to 8 digits and a unit.
func parseTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// encodeTimeout writes d as a grpc-timeout value, in the finest unit that
// fits 8 digits, rounded up.
func encodeTimeout(d time.Duration) string {
	d = max(d, time.Nanosecond)
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if n := (d + u.unit - 1) / u.unit; n < 1e8 {
			return strconv.FormatInt(int64(n), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(min((d+time.Hour-1)/time.Hour, 1e8-1)), 10) + "H"
}
