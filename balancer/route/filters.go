package route

import (
	"context"
	"reflect"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/ballast-dev/ballast/internal/callpolicy"
	"github.com/ballast-dev/ballast/policy"
)

// Filters apply the header filters of routes, which a balancer cannot: a
// picker runs after the call's metadata is fixed and never sees the
// response. Its interceptors make the route's decision before the call
// starts (the picker then keeps that rule), set, add and remove the rule's
// request headers, and change the response headers the application reads:
// those a grpc.Header call option receives, and a stream's Header.
//
// Routes are published per target (its canonical form, a ClientConn's
// CanonicalTarget and a resolver's Target.String) by whatever resolves
// it: the kubernetes:/// resolver.
type Filters struct {
	// scheme is the scheme of the targets routes are published for.
	scheme string
	// buckets are the rate limits' token buckets of every route: a
	// TrafficPolicy's bucket is per client, the process.
	buckets callpolicy.Buckets
	mu      sync.RWMutex
	targets map[string]*published
}

// published is the router of one target and how many resolvers publish
// it; ready is closed once one has (nil or not).
type published struct {
	router *policy.Router
	// calls are the router's rules' call policies (call.go), by rule;
	// nil when no rule has one.
	calls []*callRule
	refs  int
	ready chan struct{}
}

// entryLocked is target's entry, made if missing (f.mu held).
func (f *Filters) entryLocked(target string) *published {
	p := f.targets[target]
	if p == nil {
		p = &published{ready: make(chan struct{})}
		f.targets[target] = p
	}
	return p
}

// NewFilters returns Filters with no route, for targets of scheme: calls
// to other targets pass unfiltered.
func NewFilters(scheme string) *Filters {
	return &Filters{scheme: scheme, targets: map[string]*published{}}
}

// Acquire registers a publisher of target's route (a resolver); Release
// ends it.
func (f *Filters) Acquire(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entryLocked(target).refs++
}

// Release ends a publisher of target's route.
func (f *Filters) Release(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.targets[target]; p != nil {
		if p.refs--; p.refs == 0 {
			delete(f.targets, target)
		}
	}
}

// Publish sets target's route (nil for none); it must be the Router the
// balancer gets in State.Router, so that the picker keeps the rule the
// interceptor chose.
func (f *Filters) Publish(target string, r *policy.Router) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.entryLocked(target)
	switch {
	case r == nil:
		p.calls = nil
	case p.router == nil || !reflect.DeepEqual(*p.router.Route(), *r.Route()):
		// Compiled again only when the route changed, not with each
		// endpoint update, so that its rules' budgets keep counting.
		p.calls = newCallRules(r, &f.buckets)
	}
	p.router = r
	select {
	case <-p.ready:
	default:
		close(p.ready)
	}
}

// router is target's router and its rules' call policies. Until a
// resolver has published (the channel is idle, or its resolver has not
// read the registry yet) it has cc leave idle and waits, so that the
// first calls are filtered too.
func (f *Filters) router(ctx context.Context, cc *grpc.ClientConn) (*policy.Router, []*callRule) {
	target := cc.CanonicalTarget()
	if !strings.HasPrefix(target, f.scheme+":") {
		return nil, nil
	}
	f.mu.RLock()
	p := f.targets[target]
	f.mu.RUnlock()
	if p == nil {
		f.mu.Lock()
		p = f.entryLocked(target)
		f.mu.Unlock()
	}
	select {
	case <-p.ready:
	default:
		cc.Connect()
		select {
		case <-p.ready:
		case <-ctx.Done():
			return nil, nil // the call fails on its own
		}
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return p.router, p.calls
}

// DialOptions are the interceptors that apply the filters.
func (f *Filters) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(f.unary), grpc.WithChainStreamInterceptor(f.stream)}
}

// decision is the rule an interceptor chose for a call, carried to the
// picker in the call's context.
type decision struct {
	router *policy.Router
	rule   int
}

type decisionKey struct{}

// decide chooses the call's rule and applies its request filter; resp is
// the rule's response filter, nil when it has none, and call its call
// policy, nil when it has none.
func (f *Filters) decide(ctx context.Context, cc *grpc.ClientConn, method string) (_ context.Context, resp *policy.HeaderModifier, call *callRule) {
	r, calls := f.router(ctx, cc)
	if r == nil {
		return ctx, nil, nil
	}
	headers := policy.NoHeaders
	if r.MatchesHeaders() {
		headers = outgoing{ctx}
	}
	i := r.Match(method, headers)
	if i < 0 {
		return ctx, nil, nil // the picker fails the call
	}
	ctx = context.WithValue(ctx, decisionKey{}, decision{router: r, rule: i})
	if m := r.RequestHeaders(i); !m.Empty() {
		md, _ := metadata.FromOutgoingContext(ctx)
		if md == nil {
			md = metadata.MD{}
		}
		modify(md, m)
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	if m := r.ResponseHeaders(i); !m.Empty() {
		resp = m
	}
	if calls != nil {
		call = calls[i]
	}
	return ctx, resp, call
}

// modify applies m to md: Set replaces, Add appends, Remove deletes.
func modify(md metadata.MD, m *policy.HeaderModifier) {
	for _, h := range m.Set {
		md[h.Name] = []string{h.Value}
	}
	for _, h := range m.Add {
		md[h.Name] = append(md[h.Name], h.Value)
	}
	for _, name := range m.Remove {
		delete(md, name)
	}
}

func (f *Filters) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx, resp, call := f.decide(ctx, cc, method)
	var err error
	if call != nil {
		err = call.unary(ctx, method, req, reply, cc, invoker, opts...)
	} else {
		err = invoker(ctx, method, req, reply, cc, opts...)
	}
	if resp != nil {
		for _, o := range opts {
			if h, ok := o.(grpc.HeaderCallOption); ok && h.HeaderAddr != nil {
				md := h.HeaderAddr.Copy()
				if md == nil {
					md = metadata.MD{}
				}
				modify(md, resp)
				*h.HeaderAddr = md
			}
		}
	}
	return err
}

func (f *Filters) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx, resp, call := f.decide(ctx, cc, method)
	var s grpc.ClientStream
	var err error
	if call != nil {
		s, err = call.stream(ctx, desc, cc, method, streamer, opts...)
	} else {
		s, err = streamer(ctx, desc, cc, method, opts...)
	}
	if err != nil || resp == nil {
		return s, err
	}
	return &filteredStream{ClientStream: s, resp: resp}, nil
}

// filteredStream is a stream whose response headers pass the filter.
type filteredStream struct {
	grpc.ClientStream
	resp *policy.HeaderModifier
}

func (s *filteredStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if md != nil {
		md = md.Copy()
		modify(md, s.resp)
	}
	return md, err
}
