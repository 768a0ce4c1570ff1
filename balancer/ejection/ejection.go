// Package ejection takes failing endpoints of a Cluster out of balancing
// in the sidecar and the Go library, from a TrafficPolicy's
// outlierDetection (policy.OutlierDetection), with one balancer over the
// Cluster's: gRFC A50's success-rate and failure-percentage ejection,
// decided every interval from the calls' outcomes, and ejection after
// consecutive errors, which gRFC A50 lacks, decided at each failed call.
// Balancer assembles the chain both clients run for a Cluster.
//
// It is Ballast's own rather than grpc-go's outlier detection balancer,
// which is internal to grpc-go and registered only by its xDS package
// (google.golang.org/grpc/xds): linking that package for one balancer
// would put grpc-go's whole xDS client, its credentials (OAuth2, JOSE,
// SPIFFE, ALTS) and their protobuf registrations into every sidecar, whose
// idle memory is mostly the pages of its binary.
//
// The balancer ejects as grpc-go's does: it wraps the SubConns its child
// makes and, while an endpoint is ejected, tells the child's health
// listener that its SubConns are in TRANSIENT_FAILURE, so the child
// balances over the others (round_robin, least_request, p2c, peak-EWMA
// and ring_hash alike); when the ejection ends, the SubConns' real health
// goes back to the child.
package ejection

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/ballast-dev/ballast/internal/serializer"
	"github.com/ballast-dev/ballast/policy"
)

// Name is the balancer's registered name.
const Name = "ballast_outlier_detection"

func init() { balancer.Register(builder{}) }

// Balancer is the balancer a Cluster's calls run in the sidecar and the
// library, by registered name, with its config: the first balancer of the
// Cluster's policy that grpc-go has registered, as a channel picks it;
// with outlier detection that asks for any ejection, this package's
// balancer over it.
func Balancer(cl policy.Cluster, od *policy.OutlierDetection) (string, serviceconfig.LoadBalancingConfig, error) {
	for _, bc := range cl.Balancers() {
		bb := balancer.Get(bc.Name)
		if bb == nil {
			continue
		}
		var cfg serviceconfig.LoadBalancingConfig
		if p, ok := bb.(balancer.ConfigParser); ok {
			var err error
			if cfg, err = p.ParseConfig(bc.Config); err != nil {
				return "", nil, fmt.Errorf("balancer %s config: %w", bc.Name, err)
			}
		}
		if od == nil || (od.ConsecutiveErrors == 0 && od.SuccessRate == nil && od.FailurePercentage == nil) {
			return bc.Name, cfg, nil
		}
		c, err := newConfig(od, bc.Name, cfg)
		if err != nil {
			return "", nil, err
		}
		return Name, c, nil
	}
	return "", nil, fmt.Errorf("no balancer of policy %s is registered", cl.LB)
}

// config is the balancer's config: the outlier detection and the child
// balancer it runs over.
type config struct {
	serviceconfig.LoadBalancingConfig
	od          policy.OutlierDetection
	child       string
	childConfig serviceconfig.LoadBalancingConfig
}

// newConfig checks od, as a bad one would eject nothing or everything.
func newConfig(od *policy.OutlierDetection, child string, childConfig serviceconfig.LoadBalancingConfig) (*config, error) {
	switch {
	case od.BaseEjectionTime <= 0 || od.MaxEjectionTime <= 0:
		return nil, fmt.Errorf("%s: baseEjectionTime %v, maxEjectionTime %v: want durations above 0", Name, od.BaseEjectionTime, od.MaxEjectionTime)
	case od.MaxEjectionPercent > 100:
		return nil, fmt.Errorf("%s: maxEjectionPercent %d: want at most 100", Name, od.MaxEjectionPercent)
	case (od.SuccessRate != nil || od.FailurePercentage != nil) && od.Interval <= 0:
		return nil, fmt.Errorf("%s: interval %v: want a duration above 0", Name, od.Interval)
	case od.SuccessRate != nil && od.SuccessRate.EnforcementPercentage > 100:
		return nil, fmt.Errorf("%s: successRateEjection.enforcementPercentage %d: want at most 100", Name, od.SuccessRate.EnforcementPercentage)
	case od.FailurePercentage != nil && (od.FailurePercentage.EnforcementPercentage > 100 || od.FailurePercentage.Threshold > 100):
		return nil, fmt.Errorf("%s: failurePercentageEjection threshold %d, enforcementPercentage %d: want at most 100", Name, od.FailurePercentage.Threshold, od.FailurePercentage.EnforcementPercentage)
	}
	return &config{od: *od, child: child, childConfig: childConfig}, nil
}

type builder struct{}

func (builder) Name() string { return Name }

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return &outlier{cc: cc, opts: opts, work: serializer.New(), endpoints: map[string]*endpoint{}}
}

// outlier is the balancer. Every call into its child, and every change
// of the endpoints' ejection, runs on work, one at a time (as grpc-go
// promises a balancer); the calls' outcomes are counted from the picks'
// Done, on any goroutine, with atomics.
type outlier struct {
	cc   balancer.ClientConn
	opts balancer.BuildOptions
	work *serializer.Serializer

	// cfg is read by done, on any goroutine.
	cfg atomic.Pointer[config]
	// On work:
	child     balancer.Balancer
	childName string
	endpoints map[string]*endpoint // by address
	resolved  int                  // endpoints in the last resolver state
	ejected   int
	// interval ends the current interval, every so often; generation
	// counts the timers started.
	interval   *time.Timer
	every      time.Duration
	generation int
	closed     bool
}

// endpoint is one address's record, which outlives its SubConns.
type endpoint struct {
	// Counted at Done, on any goroutine: the calls failed in a row, and
	// the calls that succeeded and failed in this interval.
	inARow, succeeded, failed atomic.Uint32
	// On work:
	subConns []*subConn
	ejected  bool
	why      string // the ejection's reason, while ejected
	// times is gRFC A50's ejection time multiplier: the n-th ejection
	// lasts n × the base time, at most the max; each interval the
	// endpoint spends in balancing takes one off.
	times int
	timer *time.Timer
}

// UpdateClientConnState hands the child its endpoints and config, and
// returns its answer.
func (b *outlier) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, ok := s.BalancerConfig.(*config)
	if !ok {
		return fmt.Errorf("%s: config %T, want its own", Name, s.BalancerConfig)
	}
	errc := make(chan error, 1)
	if !b.work.Schedule(func() {
		if b.closed {
			errc <- errors.New(Name + ": closed")
			return
		}
		b.cfg.Store(cfg)
		if b.child == nil || b.childName != cfg.child {
			if b.child != nil {
				b.child.Close()
			}
			b.child = balancer.Get(cfg.child).Build(&childConn{ClientConn: b.cc, b: b}, b.opts)
			b.childName = cfg.child
		}
		b.forgetGone(s.ResolverState)
		b.schedule(cfg)
		errc <- b.child.UpdateClientConnState(balancer.ClientConnState{ResolverState: s.ResolverState, BalancerConfig: cfg.childConfig})
	}) {
		return errors.New(Name + ": closed")
	}
	return <-errc
}

// schedule (re)starts the interval's timer when the config's interval
// changed, or stops it when the config has none. Ejection times shrink
// with intervals, so consecutive errors alone have one too.
func (b *outlier) schedule(cfg *config) {
	every := cfg.od.Interval
	if every == b.every {
		return
	}
	if b.interval != nil {
		b.interval.Stop()
		b.interval = nil
	}
	b.every = every
	b.generation++
	if every <= 0 {
		return
	}
	gen := b.generation
	var tick func()
	tick = func() {
		b.work.Schedule(func() {
			if b.closed || b.generation != gen {
				return // a timer stopped too late
			}
			b.detect()
			b.interval = time.AfterFunc(every, tick)
		})
	}
	b.interval = time.AfterFunc(every, tick)
}

// detect ends an interval: it ejects the outliers by the calls of the
// interval (gRFC A50's success rate, then failure percentage), and takes
// one off the ejection multiplier of each endpoint in balancing.
func (b *outlier) detect() {
	cfg := b.cfg.Load()
	eps := make([]*endpoint, 0, len(b.endpoints))
	tallies := make([]tally, 0, len(b.endpoints))
	for _, ep := range b.endpoints {
		eps = append(eps, ep)
		tallies = append(tallies, tally{succeeded: ep.succeeded.Swap(0), failed: ep.failed.Swap(0)})
	}
	if sr := cfg.od.SuccessRate; sr != nil {
		for _, i := range successRateOutliers(*sr, tallies) {
			if rand.Uint32N(100) < sr.EnforcementPercentage {
				b.eject(eps[i], "ejected by outlier detection: success rate below its peers' (outlierDetection.successRateEjection)")
			}
		}
	}
	if fp := cfg.od.FailurePercentage; fp != nil {
		for _, i := range failurePercentageOutliers(*fp, tallies) {
			if rand.Uint32N(100) < fp.EnforcementPercentage {
				b.eject(eps[i], "ejected by outlier detection: too many failed calls (outlierDetection.failurePercentageEjection)")
			}
		}
	}
	for _, ep := range eps {
		if !ep.ejected && ep.times > 0 {
			ep.times--
		}
	}
}

// forgetGone drops the records of the endpoints the resolver no longer
// lists, and counts the ones it does.
func (b *outlier) forgetGone(s resolver.State) {
	listed := map[string]bool{}
	for _, ep := range s.Endpoints {
		for _, a := range ep.Addresses {
			listed[a.Addr] = true
		}
	}
	for _, a := range s.Addresses {
		listed[a.Addr] = true
	}
	b.resolved = max(len(s.Endpoints), len(s.Addresses))
	for addr, ep := range b.endpoints {
		if listed[addr] {
			continue
		}
		if ep.timer != nil {
			ep.timer.Stop()
		}
		if ep.ejected {
			b.ejected--
		}
		delete(b.endpoints, addr)
	}
}

func (b *outlier) ResolverError(err error) {
	b.work.Schedule(func() {
		if b.child != nil && !b.closed {
			b.child.ResolverError(err)
		}
	})
}

// UpdateSubConnState is never called: SubConns report to their listeners.
func (b *outlier) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

func (b *outlier) ExitIdle() {
	b.work.Schedule(func() {
		if b.child != nil && !b.closed {
			b.child.ExitIdle()
		}
	})
}

// Close closes the child and stops the timers; it returns once nothing
// of the balancer runs.
func (b *outlier) Close() {
	b.work.Schedule(func() {
		b.closed = true
		if b.interval != nil {
			b.interval.Stop()
		}
		for _, ep := range b.endpoints {
			if ep.timer != nil {
				ep.timer.Stop()
			}
		}
		if b.child != nil {
			b.child.Close()
		}
	})
	b.work.Close()
}

// done counts one call's outcome at ep, and ejects it (on work) when
// the failures in a row reach the config's consecutive errors.
func (b *outlier) done(ep *endpoint, di balancer.DoneInfo) {
	if di.Err == nil {
		ep.succeeded.Add(1)
		ep.inARow.Store(0)
		return
	}
	ep.failed.Add(1)
	cfg := b.cfg.Load()
	if cfg == nil || cfg.od.ConsecutiveErrors == 0 || ep.inARow.Add(1) != cfg.od.ConsecutiveErrors {
		return
	}
	b.work.Schedule(func() {
		b.eject(ep, "ejected after consecutive errors (outlierDetection.consecutiveErrors)")
	})
}

// eject takes ep out of balancing for its ejection time, unless that
// would eject more than the max percent of the endpoints (as in gRFC A50:
// an ejection is allowed while the share ejected is below it). It ends
// with a timer of its own rather than at an interval's end, so an
// endpoint is never back before its time.
func (b *outlier) eject(ep *endpoint, why string) {
	cfg := b.cfg.Load()
	if b.closed || ep.ejected || len(ep.subConns) == 0 {
		return
	}
	if n := max(b.resolved, 1); uint64(b.ejected)*100 >= uint64(cfg.od.MaxEjectionPercent)*uint64(n) {
		ep.inARow.Store(0) // counted again from here
		return
	}
	ep.ejected = true
	ep.why = why
	b.ejected++
	ep.times++
	base := cfg.od.BaseEjectionTime
	d := min(base*time.Duration(ep.times), max(base, cfg.od.MaxEjectionTime))
	ep.timer = time.AfterFunc(d, func() { b.work.Schedule(func() { b.uneject(ep) }) })
	for _, sc := range ep.subConns {
		sc.report()
	}
}

// uneject puts ep back, with its SubConns' real health.
func (b *outlier) uneject(ep *endpoint) {
	if b.closed || !ep.ejected {
		return
	}
	ep.ejected = false
	b.ejected--
	ep.timer = nil
	ep.inARow.Store(0)
	for _, sc := range ep.subConns {
		sc.report()
	}
}

// childConn is the child's ClientConn: its SubConns are wrapped, its
// pickers count the calls' outcomes.
type childConn struct {
	balancer.ClientConn
	b *outlier
}

func (c *childConn) NewSubConn(addrs []resolver.Address, opts balancer.NewSubConnOptions) (balancer.SubConn, error) {
	b := c.b
	sc := &subConn{b: b, health: balancer.SubConnState{ConnectivityState: connectivity.Connecting}}
	listener := opts.StateListener
	opts.StateListener = func(s balancer.SubConnState) {
		b.work.Schedule(func() {
			if s.ConnectivityState == connectivity.Shutdown {
				sc.forget()
			}
			if listener != nil && !b.closed {
				listener(s)
			}
		})
	}
	inner, err := b.cc.NewSubConn(addrs, opts)
	if err != nil {
		return nil, err
	}
	sc.SubConn = inner
	if len(addrs) == 1 { // an endpoint's: pickfirst makes one per address
		key := addrs[0].Addr
		ep := b.endpoints[key]
		if ep == nil {
			ep = &endpoint{}
			b.endpoints[key] = ep
		}
		sc.ep = ep
		ep.subConns = append(ep.subConns, sc)
	}
	return sc, nil
}

func (c *childConn) UpdateState(s balancer.State) {
	if s.Picker != nil {
		s.Picker = &picker{child: s.Picker, b: c.b}
	}
	c.b.cc.UpdateState(s)
}

// subConn is a SubConn of the child's: the child hears its health
// through it, TRANSIENT_FAILURE while its endpoint is ejected.
type subConn struct {
	balancer.SubConn
	b  *outlier
	ep *endpoint // nil for a SubConn of several addresses: never ejected
	// On work:
	listener func(balancer.SubConnState)
	health   balancer.SubConnState
}

// RegisterHealthListener (the child, on work) listens through the
// wrapper.
func (sc *subConn) RegisterHealthListener(f func(balancer.SubConnState)) {
	sc.listener = f
	if f == nil {
		sc.SubConn.RegisterHealthListener(nil)
		return
	}
	sc.SubConn.RegisterHealthListener(func(s balancer.SubConnState) {
		sc.b.work.Schedule(func() {
			sc.health = s
			sc.report()
		})
	})
}

// report tells the child's health listener the SubConn's health: its own,
// or TRANSIENT_FAILURE while ejected.
func (sc *subConn) report() {
	if sc.listener == nil || sc.b.closed {
		return
	}
	if sc.ep != nil && sc.ep.ejected {
		sc.listener(balancer.SubConnState{ConnectivityState: connectivity.TransientFailure, ConnectionError: errors.New(sc.ep.why)})
		return
	}
	sc.listener(sc.health)
}

// forget drops a SubConn that shut down from its endpoint; the endpoint's
// record stays (its ejection outlives a reconnection), until the
// resolver no longer lists it.
func (sc *subConn) forget() {
	if sc.ep == nil {
		return
	}
	subs := sc.ep.subConns
	for i, s := range subs {
		if s == sc {
			sc.ep.subConns = append(subs[:i], subs[i+1:]...)
			break
		}
	}
}

// picker is the child's picker, counting each call's outcome at its
// endpoint; the pick goes out with the SubConn the child's ClientConn
// made.
type picker struct {
	child balancer.Picker
	b     *outlier
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	res, err := p.child.Pick(info)
	if err != nil {
		return res, err
	}
	sc, ok := res.SubConn.(*subConn)
	if !ok {
		return res, nil
	}
	res.SubConn = sc.SubConn
	if sc.ep == nil {
		return res, nil
	}
	done, ep := res.Done, sc.ep
	res.Done = func(di balancer.DoneInfo) {
		p.b.done(ep, di)
		if done != nil {
			done(di)
		}
	}
	return res, nil
}
