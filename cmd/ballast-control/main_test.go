package main

import (
	"runtime/debug"
	"testing"
)

// TestSetGC: without GOGC in the environment the control plane collects
// at gcPercent; with one, Go's reading of it stands.
func TestSetGC(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want int
	}{
		{"unset", nil, gcPercent},
		{"set", map[string]string{"GOGC": "80"}, 80},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Stand in for the runtime's reading of GOGC at start.
			prev := debug.SetGCPercent(80)
			defer debug.SetGCPercent(prev)
			setGC(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if got := debug.SetGCPercent(80); got != tc.want {
				t.Errorf("GC percent %d, want %d", got, tc.want)
			}
		})
	}
}
