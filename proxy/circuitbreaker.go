package proxy

import (
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/policy"
)

// limitPicker is a Cluster's picker under its circuit breaker: a stream
// beyond max in flight fails UNAVAILABLE at once, saying why. inFlight is
// the host's count, which outlives pickers.
type limitPicker struct {
	balancer.Picker
	cluster  string
	max      uint32
	inFlight *atomic.Int64
}

func (p *limitPicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
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

// setMaxRequests bounds the host's streams in flight (0: no bound) from
// the next pick on.
func (h *host) setMaxRequests(n uint32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.maxRequests == n {
		return
	}
	h.maxRequests = n
	if h.balancerPicker != nil {
		h.storePickerLocked()
	}
}

// storePickerLocked publishes the balancer's picker, under the circuit
// breaker if the host has one, as a new generation.
func (h *host) storePickerLocked() {
	h.gen++
	p := h.balancerPicker
	if h.maxRequests > 0 {
		p = &limitPicker{Picker: p, cluster: h.target, max: h.maxRequests, inFlight: &h.inFlight}
	}
	h.picker.Store(&pickerState{p: p, gen: h.gen})
}
