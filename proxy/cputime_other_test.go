//go:build !unix

package proxy

import "time"

// cpuTime is unknown here: benchmarks report no CPU time.
func cpuTime() (time.Duration, int64) { return 0, 0 }
