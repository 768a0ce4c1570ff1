package proxy

import "github.com/ballast-dev/ballast/balancer/circuitbreaker"

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
	p := circuitbreaker.Picker(h.balancerPicker, h.target, h.maxRequests, &h.inFlight)
	h.picker.Store(&pickerState{p: p, gen: h.gen})
}

// setMaxPending bounds the host's parked streams (0: no bound) from the
// next stream that parks on; those parked already stay.
func (h *host) setMaxPending(n uint32) {
	h.mu.Lock()
	h.maxPending = n
	h.mu.Unlock()
}
