// Package peakewma is a latency-aware grpc-go load balancing policy, the one
// Finagle and Linkerd use (tower's PeakEwma): each endpoint carries a moving
// average of its round-trip time that jumps to a new peak at once and decays
// toward recent samples with a time constant; a call goes to the cheaper of
// two endpoints chosen at random, where cost = rtt estimate × (calls in
// flight + 1). A slow endpoint loses traffic quickly and wins it back only as
// its estimate decays or the fast ones fill up.
//
// The estimate follows tower: an endpoint starts at DefaultRTT, stamped when
// it became ready (but costs nothing until its first call, see probe); a sample above the estimate replaces it; a lower one is
// averaged in with weight 1 - exp(-elapsed/decay), elapsed being the time
// since the previous sample (so the average is over time, not over calls),
// but never less than 1/16; between samples the estimate decays toward zero,
// which brings a shunned endpoint back to be tried.
//
// The floor is where Ballast parts from tower. On a busy client, calls come
// microseconds apart, so a purely time-weighted sample barely moves the
// estimate: one late sample on a fast endpoint (the client's own goroutine
// scheduled late, say) became its peak and held its cost up for about the
// decay time, long enough for a shunned slow endpoint's estimate to decay
// below it and win calls again. With the floor, a fast endpoint's estimate
// follows its last few dozen calls, while an endpoint that gets no calls
// still forgets only with time. Unlike tower, reading a cost does not write the
// decay back, so picks only read. Calls answered by the server, and calls
// that ran out of time, are samples; calls that failed without an answer
// only leave the in-flight count, lest a broken endpoint look fast.
//
// Like grpc-go's own policies it stands on endpointsharding with a pickfirst
// child per endpoint (through balancer/internal/readyset). The statistics
// belong to the balancer and survive picker rebuilds; pickers are immutable
// snapshots; Pick takes no lock and allocates nothing (each endpoint pools
// its call trackers, whose Done is bound once).
//
// Select it with
//
//	{"loadBalancingConfig":[{"ballast_peak_ewma":{"decay":"10s","defaultRtt":"30ms"}}]}
package peakewma

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	rand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/balancer/internal/readyset"
)

// Name is the policy's name in a gRPC service config.
const Name = "ballast_peak_ewma"

// Defaults, as in Linkerd's proxy.
const (
	DefaultDecay      = 10 * time.Second
	DefaultDefaultRTT = 30 * time.Millisecond
)

var (
	// randUint64 is the random source of every picker built after it is set;
	// tests replace it to make choices deterministic.
	randUint64 = rand.Uint64
	// nanotime is the monotonic clock of every balancer built after it is
	// set, in nanoseconds; tests replace it.
	nanotime = func() int64 { return int64(time.Since(epoch)) }
	epoch    = time.Now()
)

func init() { balancer.Register(builder{}) }

// Config is the policy's configuration.
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
	// Decay is the time constant of the moving average: a sample's weight
	// falls to 1/e after Decay. Larger is steadier, smaller forgets a peak
	// sooner.
	Decay time.Duration
	// DefaultRTT is the estimate of an endpoint nothing has been observed
	// on yet; it decays like any other estimate.
	DefaultRTT time.Duration
}

// MarshalJSON writes the config the way ParseConfig reads it. grpc-go's
// parent policies (the xDS priority and cluster_impl balancers) marshal a
// parsed child config and parse it again, so the two must round-trip; without
// this a peak-EWMA Cluster from the xDS control plane fails to load.
func (c Config) MarshalJSON() ([]byte, error) {
	return json.Marshal(jsonConfig{Decay: ptrTo(c.Decay.String()), DefaultRTT: ptrTo(c.DefaultRTT.String())})
}

func ptrTo[T any](v T) *T { return &v }

// jsonConfig is Config as written in a service config: durations as strings.
type jsonConfig struct {
	Decay      *string `json:"decay"`
	DefaultRTT *string `json:"defaultRtt"`
}

type builder struct{}

func (builder) Name() string { return Name }

// ParseConfig accepts {"decay":"10s","defaultRtt":"30ms"}; both are optional.
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	return parseConfig(js)
}

func parseConfig(js []byte) (*Config, error) {
	cfg := &Config{Decay: DefaultDecay, DefaultRTT: DefaultDefaultRTT}
	if len(bytes.TrimSpace(js)) == 0 {
		return cfg, nil
	}
	var raw jsonConfig
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%s: config %s: %w (want {\"decay\":\"10s\",\"defaultRtt\":\"30ms\"})", Name, js, err)
	}
	if raw.Decay != nil {
		d, err := time.ParseDuration(*raw.Decay)
		if err != nil {
			return nil, fmt.Errorf("%s: config field \"decay\": %w", Name, err)
		}
		if d <= 0 {
			return nil, fmt.Errorf("%s: config field \"decay\" is %q; it must be positive", Name, *raw.Decay)
		}
		cfg.Decay = d
	}
	if raw.DefaultRTT != nil {
		d, err := time.ParseDuration(*raw.DefaultRTT)
		if err != nil {
			return nil, fmt.Errorf("%s: config field \"defaultRtt\": %w", Name, err)
		}
		if d < 0 {
			return nil, fmt.Errorf("%s: config field \"defaultRtt\" is %q; it must not be negative", Name, *raw.DefaultRTT)
		}
		cfg.DefaultRTT = d
	}
	return cfg, nil
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &ewmaBalancer{now: nanotime}
	b.decay.Store(int64(DefaultDecay))
	b.defaultRTT.Store(int64(DefaultDefaultRTT))
	b.Balancer = readyset.New(cc, opts, readyset.Options[*endpoint]{
		NewStats: func() *endpoint {
			return newEndpoint(b.now, &b.decay, time.Duration(b.defaultRTT.Load()))
		},
		NewPicker: func(choices []readyset.Choice[*endpoint]) balancer.Picker {
			return &picker{choices: choices, rand: randUint64, now: b.now}
		},
	})
	return b
}

// ewmaBalancer is the shared machinery plus the config its statistics read.
type ewmaBalancer struct {
	*readyset.Balancer[*endpoint]
	now func() int64
	// decay is Config.Decay in nanoseconds, read by every endpoint's
	// statistics on each sample and pick, so a new config applies at once.
	decay atomic.Int64
	// defaultRTT is Config.DefaultRTT in nanoseconds, for endpoints that
	// become ready from now on.
	defaultRTT atomic.Int64
}

func (b *ewmaBalancer) UpdateClientConnState(ccs balancer.ClientConnState) error {
	if ccs.BalancerConfig != nil {
		cfg, ok := ccs.BalancerConfig.(*Config)
		if !ok {
			return fmt.Errorf("%s: config of type %T, want *peakewma.Config: %w", Name, ccs.BalancerConfig, balancer.ErrBadResolverState)
		}
		b.decay.Store(int64(cfg.Decay))
		b.defaultRTT.Store(int64(cfg.DefaultRTT))
	}
	return b.Balancer.UpdateClientConnState(ccs)
}

// endpoint is the balancer's statistics for one endpoint. Samples update the
// estimate with a compare-and-swap loop and picks read it with plain atomic
// loads: a pick may pair a new estimate with the previous stamp, which only
// shifts the decay by the time between two samples.
type endpoint struct {
	now   func() int64
	decay *atomic.Int64 // the balancer's, in nanoseconds

	inFlight atomic.Int64
	rtt      atomic.Uint64 // float64 bits: estimate in nanoseconds
	stamp    atomic.Int64  // now() at the last sample
	// tried is set when the endpoint's first call ends, however it ends.
	tried atomic.Bool

	calls sync.Pool // of *call
}

func newEndpoint(now func() int64, decay *atomic.Int64, defaultRTT time.Duration) *endpoint {
	ep := &endpoint{now: now, decay: decay}
	ep.rtt.Store(math.Float64bits(float64(defaultRTT)))
	ep.stamp.Store(now())
	ep.calls.New = func() any {
		c := &call{ep: ep}
		c.done = c.finish
		return c
	}
	return ep
}

// estimate is the rtt estimate at time now, decayed toward zero since the
// last sample, so an endpoint that stopped getting traffic after a peak is
// tried again in time.
func (ep *endpoint) estimate(now int64) float64 {
	rtt := math.Float64frombits(ep.rtt.Load())
	elapsed := now - ep.stamp.Load()
	if elapsed <= 0 {
		return rtt
	}
	return rtt * math.Exp(-float64(elapsed)/float64(ep.decay.Load()))
}

// cost is what sending one more call to the endpoint is expected to cost.
func (ep *endpoint) cost(now int64) float64 {
	if ep.probe() {
		return 0
	}
	return ep.estimate(now) * float64(ep.inFlight.Load()+1)
}

// probe reports whether the endpoint is new: no call of it has ended and
// none is in flight. A new endpoint costs nothing, so it gets one call at
// once and is judged by that call's latency from then on. At its default
// estimate it would lose to endpoints whose estimates follow their calls
// (the sample floor) until the default decayed, for tens of seconds.
func (ep *endpoint) probe() bool { return !ep.tried.Load() && ep.inFlight.Load() == 0 }

// observe folds an rtt sample taken at now into the estimate: a sample above
// the estimate replaces it (the peak), one below is averaged in with weight
// 1 - exp(-elapsed/decay), at least minSampleWeight.
func (ep *endpoint) observe(sample float64, now int64) {
	for {
		oldBits := ep.rtt.Load()
		old := math.Float64frombits(oldBits)
		next := sample
		if sample < old {
			w := 1.0
			if elapsed := now - ep.stamp.Load(); elapsed > 0 {
				w = math.Exp(-float64(elapsed) / float64(ep.decay.Load()))
			}
			w = min(w, 1-minSampleWeight)
			next = old*w + sample*(1-w)
		}
		if ep.rtt.CompareAndSwap(oldBits, math.Float64bits(next)) {
			ep.stamp.Store(now)
			return
		}
	}
}

// minSampleWeight is the least weight a sample below the estimate gets
// (see the package comment).
const minSampleWeight = 1.0 / 16

// call tracks one picked call from Pick to Done. Calls are pooled per
// endpoint; done is finish bound once, so handing it out costs nothing.
type call struct {
	ep        *endpoint
	start     int64
	childDone func(balancer.DoneInfo)
	active    atomic.Bool
	done      func(balancer.DoneInfo)
}

// finish ends the call: its count leaves the endpoint and, if the server
// answered or the call ran out of time, its duration becomes a sample.
// Calls that failed without an answer (refused, reset, cancelled, or handed
// back because the connection was not ready) say nothing about latency and
// would make a broken endpoint look fast.
func (c *call) finish(di balancer.DoneInfo) {
	if !c.active.CompareAndSwap(true, false) {
		return // Done called twice; grpc-go does not, but never corrupt a reused tracker
	}
	ep := c.ep
	ep.tried.Store(true)
	if di.BytesReceived || timedOut(di.Err) {
		now := ep.now()
		ep.observe(float64(now-c.start), now)
	}
	ep.inFlight.Add(-1)
	childDone := c.childDone
	c.childDone = nil
	ep.calls.Put(c)
	if childDone != nil {
		childDone(di)
	}
}

// timedOut reports whether a call failed by running out of time: its
// duration is then a lower bound of the endpoint's latency, worth a sample.
func timedOut(err error) bool {
	return err != nil && (status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded))
}

// picker is an immutable snapshot of the ready endpoints.
type picker struct {
	choices []readyset.Choice[*endpoint]
	rand    func() uint64
	now     func() int64
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	now := p.now()
	ch := p.choose(now)
	res, err := ch.Picker.Pick(info)
	if err != nil {
		return res, err
	}
	ep := ch.Stats
	c := ep.calls.Get().(*call)
	c.start = now
	c.childDone = res.Done // nil from pickfirst today
	c.active.Store(true)
	ep.inFlight.Add(1)
	res.Done = c.done
	return res, nil
}

// choose draws two distinct endpoints and returns the cheaper; on a tie,
// the first of the (random, ordered) pair.
func (p *picker) choose(now int64) *readyset.Choice[*endpoint] {
	n := uint64(len(p.choices))
	if n == 1 {
		return &p.choices[0]
	}
	a, b := readyset.Pair(p.rand(), n)
	ca, cb := &p.choices[a], &p.choices[b]
	if cheaper(cb.Stats, ca.Stats, now) {
		return cb
	}
	return ca
}

// cheaper reports whether x.cost(now) < y.cost(now), with one exponential
// instead of two: both estimates decay by the same law, so only the
// difference of their ages matters, and it is applied to the younger side
// (a non-positive exponent, which cannot overflow).
func cheaper(x, y *endpoint, now int64) bool {
	if px, py := x.probe(), y.probe(); px || py {
		return px && !py
	}
	tau := float64(x.decay.Load())
	ageX := float64(max(now-x.stamp.Load(), 0))
	ageY := float64(max(now-y.stamp.Load(), 0))
	cx := math.Float64frombits(x.rtt.Load()) * float64(x.inFlight.Load()+1)
	cy := math.Float64frombits(y.rtt.Load()) * float64(y.inFlight.Load()+1)
	if ageX >= ageY {
		return cx*math.Exp((ageY-ageX)/tau) < cy
	}
	return cx < cy*math.Exp((ageX-ageY)/tau)
}
