// Package circuitbreaker is a Cluster's circuit breaker as the sidecar and
// the Go library apply it (policy.CircuitBreaker's MaxRequests): a picker
// over the Cluster's balancer's picker that counts the calls picked and
// not done, and fails a call beyond the bound at once with UNAVAILABLE,
// saying why, as grpc-go's xDS clients do with a Cluster's max_requests.
package circuitbreaker

import (
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/policy"
)

// Picker returns p under a bound of max calls in flight to cluster (the
// name its error gives), or p itself when max is 0 (no bound). inFlight
// is the Cluster's count: its owner keeps it across pickers, so that the
// calls picked by an older picker still count.
func Picker(p balancer.Picker, cluster string, max uint32, inFlight *atomic.Int64) balancer.Picker {
	if max == 0 || p == nil {
		return p
	}
	return &picker{Picker: p, cluster: cluster, max: max, inFlight: inFlight}
}

type picker struct {
	balancer.Picker
	cluster  string
	max      uint32
	inFlight *atomic.Int64
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	if n := p.inFlight.Add(1); n > int64(p.max) {
		p.inFlight.Add(-1)
		return balancer.PickResult{}, status.Error(codes.Unavailable, policy.CircuitBreakerOpen(n-1, p.cluster, p.max))
	}
	res, err := p.Picker.Pick(info)
	if err != nil {
		p.inFlight.Add(-1)
		return res, err
	}
	done := res.Done
	res.Done = func(di balancer.DoneInfo) {
		p.inFlight.Add(-1)
		if done != nil {
			done(di)
		}
	}
	return res, nil
}
