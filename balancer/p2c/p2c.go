// Package p2c is a grpc-go load balancing policy that sends each call to the
// less loaded of two endpoints chosen at random ("power of two choices",
// least request). It is grpc-go's least_request_experimental with a pick
// path that allocates nothing: the callback that ends a call's count is bound
// once per endpoint, not built per call.
//
// Like grpc-go's own policies it stands on endpointsharding with a pickfirst
// child per endpoint (through balancer/internal/readyset); this package is
// only the statistic and the picker. The in-flight counts belong to the
// balancer and survive picker rebuilds, so a readiness change elsewhere does
// not forget the load on an endpoint.
//
// Select it with the service config {"loadBalancingConfig":[{"ballast_p2c":{}}]}.
package p2c

import (
	"bytes"
	"encoding/json"
	"fmt"
	rand "math/rand/v2"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/serviceconfig"

	"github.com/ballast-dev/ballast/balancer/internal/readyset"
)

// Name is the policy's name in a gRPC service config.
const Name = "ballast_p2c"

// randUint64 is the random source of every picker built after it is set;
// tests replace it to make choices deterministic.
var randUint64 = rand.Uint64

func init() { balancer.Register(builder{}) }

// Config is the policy's configuration. It has no fields yet; unknown fields
// are rejected so that a setting the policy does not have is not silently
// ignored.
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
}

type builder struct{}

func (builder) Name() string { return Name }

// ParseConfig accepts {} (or an empty config).
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg := &Config{}
	if len(bytes.TrimSpace(js)) == 0 {
		return cfg, nil
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, fmt.Errorf("%s: config %s: %w (the policy takes no settings: use {})", Name, js, err)
	}
	return cfg, nil
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return readyset.New(cc, opts, readyset.Options[*endpoint]{
		NewStats:  newEndpoint,
		NewPicker: newPicker,
	})
}

// endpoint is the balancer's load statistic for one endpoint.
type endpoint struct {
	inFlight atomic.Int64
	// done is ep.finish bound once, so a pick hands it out without
	// allocating a closure.
	done func(balancer.DoneInfo)
}

func newEndpoint() *endpoint {
	ep := &endpoint{}
	ep.done = ep.finish
	return ep
}

func (ep *endpoint) finish(balancer.DoneInfo) { ep.inFlight.Add(-1) }

// picker is an immutable snapshot of the ready endpoints. Pick takes no lock
// and allocates nothing unless a child's result carries its own Done.
type picker struct {
	choices []readyset.Choice[*endpoint]
	rand    func() uint64
}

func newPicker(choices []readyset.Choice[*endpoint]) balancer.Picker {
	return &picker{choices: choices, rand: randUint64}
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	c := p.choose()
	res, err := c.Picker.Pick(info)
	if err != nil {
		return res, err
	}
	ep := c.Stats
	ep.inFlight.Add(1)
	if res.Done == nil {
		res.Done = ep.done
		return res, nil
	}
	childDone := res.Done // rare: pickfirst sets none today
	res.Done = func(di balancer.DoneInfo) {
		ep.inFlight.Add(-1)
		childDone(di)
	}
	return res, nil
}

// choose draws two distinct endpoints and returns the one with fewer calls
// in flight; on a tie, the first of the (random, ordered) pair.
func (p *picker) choose() *readyset.Choice[*endpoint] {
	n := uint64(len(p.choices))
	if n == 1 {
		return &p.choices[0]
	}
	a, b := readyset.Pair(p.rand(), n)
	ca, cb := &p.choices[a], &p.choices[b]
	if cb.Stats.inFlight.Load() < ca.Stats.inFlight.Load() {
		return cb
	}
	return ca
}
