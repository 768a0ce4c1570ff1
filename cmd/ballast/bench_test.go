package main

import (
	"io"
	"strings"
	"testing"
)

// Bad flags fail before anything starts, naming the flag.
func TestBenchFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--runs", "0"}, "--runs 0: want 1 to 100"},
		{[]string{"bench", "--runs", "101"}, "--runs 101: want 1 to 100"},
		{[]string{"bench", "--only", "balance,speed"}, `--only "speed": want one of balance, data-path, data-path-stream, ingress-rate, latency-aware, convergence, control-plane-scale, traffic-policy, reliability`},
		{[]string{"bench", "--soak", "1m", "--only", "balance"}, "--soak 1m0s: want a duration above zero, without --only"},
		{[]string{"bench", "--only", "balance,reliability"}, "--only reliability runs on a dev cluster of its own: give it alone"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			root := newRootCmd()
			root.SetArgs(tt.args)
			root.SetOut(io.Discard)
			root.SetErr(io.Discard)
			err := root.Execute()
			if err == nil || err.Error() != tt.want {
				t.Errorf("err %v, want %q", err, tt.want)
			}
		})
	}
}
