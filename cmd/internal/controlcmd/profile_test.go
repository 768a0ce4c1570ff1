package controlcmd

import (
	"context"
	"runtime"
	"testing"
)

// TestMemProfileOnlyWithPprof: the command samples the heap for profiles
// only when --pprof serves them.
func TestMemProfileOnlyWithPprof(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pprof bool
		want  int
	}{
		{"without --pprof", false, 0},
		{"with --pprof", true, 512 * 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := runtime.MemProfileRate
			defer func() { runtime.MemProfileRate = prev }()
			runtime.MemProfileRate = 512 * 1024
			cmd := New()
			args := []string{"--files", t.TempDir(), "--xds-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--debug-address", ""}
			if tc.pprof {
				args = append(args, "--pprof")
			}
			cmd.SetArgs(args)
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // the command returns as soon as it has started
			_ = cmd.ExecuteContext(ctx)
			if runtime.MemProfileRate != tc.want {
				t.Errorf("MemProfileRate %d, want %d", runtime.MemProfileRate, tc.want)
			}
		})
	}
}
