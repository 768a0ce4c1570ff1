package client

import (
	"testing"
	"time"
)

// Refused streams are retried on grpc-go's schedule, capped at Envoy's 30 s.
func TestBackoffDelay(t *testing.T) {
	tests := []struct {
		failures int
		r        float64
		want     time.Duration
	}{
		{0, 0.5, time.Second},
		{0, 0, 800 * time.Millisecond},
		{0, 1, 1200 * time.Millisecond},
		{1, 0.5, 1600 * time.Millisecond},
		{2, 0.5, 2560 * time.Millisecond},
		{8, 0.5, 30 * time.Second},
		{30, 0.5, 30 * time.Second},
	}
	for _, tt := range tests {
		got := backoffDelay(tt.failures, tt.r)
		if d := got - tt.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("backoffDelay(%d, %v) = %v, want %v", tt.failures, tt.r, got, tt.want)
		}
	}
}
