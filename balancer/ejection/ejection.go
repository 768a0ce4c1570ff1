// Package ejection takes failing endpoints of a Cluster out of balancing
// in the sidecar and the Go library, from a TrafficPolicy's
// outlierDetection (policy.OutlierDetection): gRFC A50's success-rate and
// failure-percentage ejection by grpc-go's own outlier detection balancer,
// and ejection after consecutive errors, which gRFC A50 (and so grpc-go)
// lacks, by this package's balancer, ConsecutiveName. Balancer assembles
// the chain both clients run for a Cluster.
//
// The consecutive-errors balancer ejects as grpc-go's does: it wraps the
// SubConns its child makes and, while an endpoint is ejected, tells the
// child's health listener that its SubConns are in TRANSIENT_FAILURE, so
// the child balances over the others (round_robin, least_request, p2c,
// peak-EWMA and ring_hash alike); when the ejection ends, the SubConns'
// real health goes back to the child.
package ejection

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	// grpc-go's xDS package registers its outlier detection balancer
	// (internal to grpc-go), which Balancer puts over a Cluster's.
	_ "google.golang.org/grpc/xds"

	"github.com/ballast-dev/ballast/internal/serializer"
	"github.com/ballast-dev/ballast/policy"
)

// ConsecutiveName is the consecutive-errors balancer's registered name.
const ConsecutiveName = "ballast_consecutive_errors"

func init() { balancer.Register(builder{}) }

// Balancer is the balancer a Cluster's calls run in the sidecar and the
// library, by registered name, with its parsed config: the first balancer
// of the Cluster's policy that grpc-go has registered, as a channel picks
// it; with outlier detection, grpc-go's outlier detection balancer over
// it, and with consecutive errors this package's in between.
func Balancer(cl policy.Cluster, od *policy.OutlierDetection) (string, serviceconfig.LoadBalancingConfig, error) {
	for _, bc := range cl.Balancers() {
		if balancer.Get(bc.Name) == nil {
			continue
		}
		if od != nil {
			if od.ConsecutiveErrors > 0 {
				bc = policy.Balancer{Name: ConsecutiveName, Config: consecutiveConfig(od, bc)}
			}
			bc = policy.Balancer{Name: policy.OutlierDetectionBalancer, Config: od.LBConfig(bc)}
		}
		bb := balancer.Get(bc.Name)
		if bb == nil {
			return "", nil, fmt.Errorf("balancer %s is not registered", bc.Name)
		}
		p, ok := bb.(balancer.ConfigParser)
		if !ok {
			return bc.Name, nil, nil
		}
		cfg, err := p.ParseConfig(bc.Config)
		if err != nil {
			return "", nil, fmt.Errorf("balancer %s config: %w", bc.Name, err)
		}
		return bc.Name, cfg, nil
	}
	return "", nil, fmt.Errorf("no balancer of policy %s is registered", cl.LB)
}

// jsonConfig is the consecutive-errors balancer's JSON config.
type jsonConfig struct {
	ConsecutiveErrors  uint32                       `json:"consecutiveErrors"`
	BaseEjectionTime   string                       `json:"baseEjectionTime"`
	MaxEjectionTime    string                       `json:"maxEjectionTime"`
	MaxEjectionPercent uint32                       `json:"maxEjectionPercent"`
	ChildPolicy        []map[string]json.RawMessage `json:"childPolicy"`
}

// consecutiveConfig is od's consecutive errors as the balancer's JSON
// config over child.
func consecutiveConfig(od *policy.OutlierDetection, child policy.Balancer) json.RawMessage {
	seconds := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s" }
	b, err := json.Marshal(jsonConfig{
		ConsecutiveErrors: od.ConsecutiveErrors, MaxEjectionPercent: od.MaxEjectionPercent,
		BaseEjectionTime: seconds(od.BaseEjectionTime), MaxEjectionTime: seconds(od.MaxEjectionTime),
		ChildPolicy: []map[string]json.RawMessage{{child.Name: child.Config}},
	})
	if err != nil {
		panic(fmt.Sprintf("ejection: config: %v", err)) // plain data: a bug, not an input
	}
	return b
}

// config is the parsed config.
type config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
	consecutive                       uint32
	base, max                         time.Duration
	maxPercent                        uint32
	child                             string
	childConfig                       serviceconfig.LoadBalancingConfig
}

type builder struct{}

func (builder) Name() string { return ConsecutiveName }

func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var jc jsonConfig
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&jc); err != nil {
		return nil, fmt.Errorf("%s: config %s: %w", ConsecutiveName, js, err)
	}
	cfg := &config{consecutive: jc.ConsecutiveErrors, maxPercent: jc.MaxEjectionPercent}
	var err error
	if cfg.base, err = time.ParseDuration(jc.BaseEjectionTime); err != nil || cfg.base <= 0 {
		return nil, fmt.Errorf("%s: baseEjectionTime %q: want a duration above 0", ConsecutiveName, jc.BaseEjectionTime)
	}
	if cfg.max, err = time.ParseDuration(jc.MaxEjectionTime); err != nil || cfg.max <= 0 {
		return nil, fmt.Errorf("%s: maxEjectionTime %q: want a duration above 0", ConsecutiveName, jc.MaxEjectionTime)
	}
	if cfg.consecutive == 0 || cfg.maxPercent > 100 {
		return nil, fmt.Errorf("%s: consecutiveErrors %d, maxEjectionPercent %d: want at least 1 and at most 100", ConsecutiveName, cfg.consecutive, cfg.maxPercent)
	}
	for _, m := range jc.ChildPolicy {
		for name, raw := range m {
			bb := balancer.Get(name)
			if bb == nil {
				continue
			}
			cfg.child = name
			if p, ok := bb.(balancer.ConfigParser); ok {
				if cfg.childConfig, err = p.ParseConfig(raw); err != nil {
					return nil, fmt.Errorf("%s: child %s: %w", ConsecutiveName, name, err)
				}
			}
			return cfg, nil
		}
	}
	return nil, fmt.Errorf("%s: no registered balancer in childPolicy %s", ConsecutiveName, js)
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &consecutive{cc: cc, opts: opts, work: serializer.New(), endpoints: map[string]*endpoint{}}
	return b
}

// consecutive is the balancer. Every call into its child, and every
// change of the endpoints' ejection, runs on work, one at a time (as
// grpc-go promises a balancer); the calls' outcomes are counted from the
// picks' Done, on any goroutine, with atomics.
type consecutive struct {
	cc   balancer.ClientConn
	opts balancer.BuildOptions
	work *serializer.Serializer

	// On work:
	child     balancer.Balancer
	childName string
	cfg       atomic.Pointer[config]
	endpoints map[string]*endpoint // by address
	resolved  int                  // endpoints in the last resolver state
	ejected   int
	closed    bool
}

// endpoint is one address's record, which outlives its SubConns.
type endpoint struct {
	// failures counts the calls failed in a row (Done, any goroutine).
	failures atomic.Uint32
	// On work:
	subConns []*subConn
	ejected  bool
	// times is how many ejections in a row it had: the n-th lasts n ×
	// the base time, at most the max.
	times int
	timer *time.Timer
}

// UpdateClientConnState hands the child its endpoints and config, and
// returns its answer.
func (b *consecutive) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, ok := s.BalancerConfig.(*config)
	if !ok {
		return fmt.Errorf("%s: config %T, want its own", ConsecutiveName, s.BalancerConfig)
	}
	errc := make(chan error, 1)
	if !b.work.Schedule(func() {
		if b.closed {
			errc <- errors.New(ConsecutiveName + ": closed")
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
		errc <- b.child.UpdateClientConnState(balancer.ClientConnState{ResolverState: s.ResolverState, BalancerConfig: cfg.childConfig})
	}) {
		return errors.New(ConsecutiveName + ": closed")
	}
	return <-errc
}

// forgetGone drops the records of the endpoints the resolver no longer
// lists, and counts the ones it does.
func (b *consecutive) forgetGone(s resolver.State) {
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

func (b *consecutive) ResolverError(err error) {
	b.work.Schedule(func() {
		if b.child != nil && !b.closed {
			b.child.ResolverError(err)
		}
	})
}

// UpdateSubConnState is never called: SubConns report to their listeners.
func (b *consecutive) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

func (b *consecutive) ExitIdle() {
	b.work.Schedule(func() {
		if b.child != nil && !b.closed {
			b.child.ExitIdle()
		}
	})
}

// Close closes the child and stops the ejection timers; it returns once
// nothing of the balancer runs.
func (b *consecutive) Close() {
	b.work.Schedule(func() {
		b.closed = true
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
// the failures in a row reach the bound.
func (b *consecutive) done(ep *endpoint, di balancer.DoneInfo) {
	if di.Err == nil {
		ep.failures.Store(0)
		return
	}
	cfg := b.cfg.Load()
	if cfg == nil || ep.failures.Add(1) != cfg.consecutive {
		return
	}
	b.work.Schedule(func() { b.eject(ep) })
}

// eject takes ep out of balancing for its ejection time, unless that
// would eject more than the max percent of the endpoints (as in gRFC A50:
// an ejection is allowed while the share ejected is below it).
func (b *consecutive) eject(ep *endpoint) {
	cfg := b.cfg.Load()
	if b.closed || ep.ejected || len(ep.subConns) == 0 {
		return
	}
	if n := max(b.resolved, 1); uint64(b.ejected)*100 >= uint64(cfg.maxPercent)*uint64(n) {
		ep.failures.Store(0) // counted again from here
		return
	}
	ep.ejected = true
	b.ejected++
	ep.times++
	d := min(cfg.base*time.Duration(ep.times), max(cfg.base, cfg.max))
	ep.timer = time.AfterFunc(d, func() { b.work.Schedule(func() { b.uneject(ep) }) })
	for _, sc := range ep.subConns {
		sc.report()
	}
}

// uneject puts ep back, with its SubConns' real health.
func (b *consecutive) uneject(ep *endpoint) {
	if b.closed || !ep.ejected {
		return
	}
	ep.ejected = false
	b.ejected--
	ep.timer = nil
	ep.failures.Store(0)
	for _, sc := range ep.subConns {
		sc.report()
	}
}

// childConn is the child's ClientConn: its SubConns are wrapped, its
// pickers count the calls' outcomes.
type childConn struct {
	balancer.ClientConn
	b *consecutive
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
	b  *consecutive
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
		sc.listener(balancer.SubConnState{ConnectivityState: connectivity.TransientFailure,
			ConnectionError: errors.New("ejected after consecutive errors (outlierDetection.consecutiveErrors)")})
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
	b     *consecutive
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
