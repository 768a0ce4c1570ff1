package route

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-dev/ballast/internal/callpolicy"
	"github.com/ballast-dev/ballast/policy"
)

// Call policies (policy.CallPolicy: timeouts, retries, rate limits and
// faults) are enforced by Filters' interceptors, per call, for the rule
// the interceptor chose.
//
// Not grpc-go's own retry (a service config's retryPolicy and
// retryThrottling), though it replays a call's messages the same way:
// its method configs are chosen by method name alone, so a rule that
// matches metadata, or two rules for one method that differ by it,
// cannot be said in one; its throttling is one token bucket per channel,
// not a budget per rule; and it has no per-try timeout. The interceptor
// knows the rule of each call (the one the picker then keeps), so each
// call gets exactly its rule's policy, and each retry is a new call
// through the picker: a new pick, as in the sidecar.

// maxReplayBytes bounds the request messages kept to replay a call on a
// retry, as the sidecar bounds its copy: a call whose request is bigger is
// not retried.
const maxReplayBytes = 64 << 10

// callRule is what a rule's policy.CallPolicy asks of the calls it
// matches, made once per published route: its calls share the retry
// budget and the rate limit's bucket.
type callRule struct{ *callpolicy.Rule }

// newCallRules makes the callRule of each rule of r that asks for
// something, indexed by rule; nil if none does. Rate limits take their
// buckets from buckets.
func newCallRules(r *policy.Router, buckets *callpolicy.Buckets) []*callRule {
	if r == nil {
		return nil
	}
	rules := callpolicy.Compile(r.Route().Rules, buckets)
	if rules == nil {
		return nil
	}
	out := make([]*callRule, len(rules))
	for i, cr := range rules {
		if cr != nil {
			out[i] = &callRule{cr}
		}
	}
	return out
}

// admit applies the rule's rate limit and fault to a call before it is
// sent (callpolicy.Rule.Admit): the error it fails with, after the fault's
// delay if it has one; nil to send it. The delay counts against the
// caller's deadline, not the rule's timeout, which starts as the call is
// sent (as a fault filter before Envoy's router).
func (cr *callRule) admit(caller context.Context) error {
	if !cr.Admits() {
		return nil
	}
	delay, fail := cr.Admit()
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-caller.Done():
			return status.FromContextError(caller.Err()).Err()
		}
	}
	if fail != nil {
		return fail.Err()
	}
	return nil
}

// withTimeout bounds ctx by the rule's timeout (a sooner deadline of the
// caller's stays).
func (cr *callRule) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if cr.Timeout > 0 {
		return context.WithTimeout(ctx, cr.Timeout)
	}
	return ctx, func() {}
}

// tryContext is the context of try n: bounded by the per-try timeout,
// and on a retry carrying how many tries came before (gRFC A6's
// grpc-previous-rpc-attempts).
func (cr *callRule) tryContext(ctx context.Context, n int) (context.Context, context.CancelFunc) {
	cancel := func() {}
	if cr.TryTimeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, cr.TryTimeout)
	}
	if n > 1 {
		ctx = metadata.AppendToOutgoingContext(ctx, "grpc-previous-rpc-attempts", strconv.Itoa(n-1))
	}
	return ctx, cancel
}

// again reports whether try n of a call, failed with err, is tried again,
// after waiting out its backoff; the call's context is ctx.
func (cr *callRule) again(ctx context.Context, n int, err error) bool {
	r := cr.Retry
	if r == nil || ctx.Err() != nil || !r.Retries(status.Code(err)) || n > r.Attempts() {
		return false
	}
	if r.Budget != nil && !r.Budget.Allow() {
		return false
	}
	t := time.NewTimer(r.Backoff(n))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// result is the call's error: the rule's timeout, if that is what ended
// it, says so. The server got the same deadline (grpc-timeout), so its
// CANCEL may arrive as the deadline passes, before the context's own
// timer has fired: the clock decides, not which came first.
func (cr *callRule) result(caller, ctx context.Context, err error) error {
	if err == nil || cr.Timeout <= 0 {
		return err
	}
	if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Canceled {
		return err
	}
	ours, _ := ctx.Deadline()
	if theirs, ok := caller.Deadline(); (ok && !theirs.After(ours)) || caller.Err() != nil || time.Now().Before(ours) {
		return err // the caller's deadline, or cancellation
	}
	return status.Errorf(codes.DeadlineExceeded, "ballast: the call's timeout (%v) elapsed: %v", cr.Timeout, status.Convert(err).Message())
}

// replayable reports whether a request message fits the replay bound
// (only protobuf messages are measured; others are not retried).
func replayable(msg any, held int) (int, bool) {
	m, ok := msg.(proto.Message)
	if !ok {
		return 0, false
	}
	n := proto.Size(m)
	return n, held+n <= maxReplayBytes
}

// unary runs a unary call under the rule.
func (cr *callRule) unary(caller context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if err := cr.admit(caller); err != nil {
		return err
	}
	ctx, cancel := cr.withTimeout(caller)
	defer cancel()
	retries := cr.Retry != nil
	if retries {
		if _, ok := replayable(req, 0); !ok {
			retries = false
		}
		if cr.Retry.Budget != nil {
			cr.Retry.Budget.Call()
		}
	}
	for n := 1; ; n++ {
		tctx, tcancel := cr.tryContext(ctx, n)
		err := invoker(tctx, method, req, reply, cc, opts...)
		tcancel()
		if err == nil || !retries || !cr.again(ctx, n, err) {
			return cr.result(caller, ctx, err)
		}
	}
}

// stream starts a streaming call under the rule. A call whose client
// sends one message (server streaming) is retried while no response has
// come, its request replayed; a client- or bidi-streaming call is not
// retried by the library: its messages go to the server as the
// application sends them, and a try that fails before they are all sent
// leaves the application holding the rest (SendMsg's io.EOF tells it to
// stop sending).
func (cr *callRule) stream(caller context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if err := cr.admit(caller); err != nil {
		return nil, err
	}
	ctx, cancel := cr.withTimeout(caller)
	rs := &retryStream{cr: cr, caller: caller, ctx: ctx, cancel: cancel, desc: desc, cc: cc, method: method, streamer: streamer, opts: opts,
		replay: cr.Retry != nil && !desc.ClientStreams}
	if rs.replay && cr.Retry.Budget != nil {
		cr.Retry.Budget.Call()
	}
	if err := rs.start(); err != nil {
		cancel()
		return nil, cr.result(caller, ctx, err)
	}
	return rs, nil
}

// retryStream is a streaming call under a rule: its current try, and what
// a retry replays.
type retryStream struct {
	cr               *callRule
	caller, ctx      context.Context
	cancel           context.CancelFunc
	desc             *grpc.StreamDesc
	cc               *grpc.ClientConn
	method           string
	streamer         grpc.Streamer
	opts             []grpc.CallOption
	replay           bool // retries are still possible
	n                int
	mu               sync.Mutex // guards cur against a retry while Header or Trailer read it
	cur              grpc.ClientStream
	tryCancel        context.CancelFunc
	sent             []any
	held             int
	closedSend, done bool
}

// start begins the next try and replays the request on it.
func (s *retryStream) start() error {
	s.n++
	tctx, tcancel := s.cr.tryContext(s.ctx, s.n)
	cs, err := s.streamer(tctx, s.desc, s.cc, s.method, s.opts...)
	if err != nil {
		tcancel()
		return err
	}
	for _, m := range s.sent {
		if err := cs.SendMsg(m); err != nil {
			break // the try's status comes with RecvMsg
		}
	}
	if s.closedSend {
		cs.CloseSend()
	}
	s.mu.Lock()
	if s.tryCancel != nil {
		s.tryCancel()
	}
	s.cur, s.tryCancel = cs, tcancel
	s.mu.Unlock()
	return nil
}

func (s *retryStream) current() grpc.ClientStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *retryStream) Header() (metadata.MD, error) { return s.current().Header() }
func (s *retryStream) Trailer() metadata.MD         { return s.current().Trailer() }
func (s *retryStream) Context() context.Context     { return s.current().Context() }

func (s *retryStream) CloseSend() error {
	s.closedSend = true
	return s.current().CloseSend()
}

func (s *retryStream) SendMsg(m any) error {
	if s.replay {
		n, ok := replayable(m, s.held)
		if ok {
			s.sent = append(s.sent, proto.Clone(m.(proto.Message)))
			s.held += n
		} else {
			s.replay, s.sent = false, nil
		}
	}
	return s.current().SendMsg(m)
}

func (s *retryStream) RecvMsg(m any) error {
	for {
		err := s.current().RecvMsg(m)
		if err == nil {
			s.replay, s.sent = false, nil // a response came: the call is committed
			return nil
		}
		if !errors.Is(err, io.EOF) && s.replay && s.cr.again(s.ctx, s.n, err) {
			if serr := s.start(); serr == nil {
				continue
			}
		}
		s.finish()
		if errors.Is(err, io.EOF) {
			return err
		}
		return s.cr.result(s.caller, s.ctx, err)
	}
}

// finish releases the call's timers once it has ended.
func (s *retryStream) finish() {
	if s.done {
		return
	}
	s.done = true
	s.mu.Lock()
	if s.tryCancel != nil {
		s.tryCancel()
	}
	s.mu.Unlock()
	s.cancel()
}

var _ grpc.ClientStream = (*retryStream)(nil)
