package circuitbreaker

import (
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// okPicker picks at once; dones counts the Done calls it sees.
type okPicker struct{ dones *atomic.Int64 }

func (p okPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{Done: func(balancer.DoneInfo) { p.dones.Add(1) }}, nil
}

// TestPicker: calls beyond max in flight fail UNAVAILABLE saying why, a
// done call frees its place, the count outlives the picker, and the
// child's Done still runs.
func TestPicker(t *testing.T) {
	var inFlight, dones atomic.Int64
	p := Picker(okPicker{&dones}, "greeter.default:50051", 2, &inFlight)
	var picked []balancer.PickResult
	for range 2 {
		res, err := p.Pick(balancer.PickInfo{})
		if err != nil {
			t.Fatalf("pick within the bound: %v", err)
		}
		picked = append(picked, res)
	}
	// A new picker (the balancer's next) shares the count.
	p = Picker(okPicker{&dones}, "greeter.default:50051", 2, &inFlight)
	_, err := p.Pick(balancer.PickInfo{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "circuit breaker open: 2 requests in flight to cluster greeter.default:50051 (maxRequests 2)") {
		t.Fatalf("third pick with two in flight: %v, want UNAVAILABLE naming the bound", err)
	}
	picked[0].Done(balancer.DoneInfo{})
	if _, err := p.Pick(balancer.PickInfo{}); err != nil {
		t.Fatalf("pick after one call ended: %v", err)
	}
	if n, d := inFlight.Load(), dones.Load(); n != 2 || d != 1 {
		t.Errorf("in flight %d, child dones %d: want 2 and 1", n, d)
	}
	if q := Picker(okPicker{&dones}, "c", 0, &inFlight); q != (okPicker{&dones}) {
		t.Errorf("max 0 wrapped the picker: %T", q)
	}
}
