//go:build unix

package proxy

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user and system) the process has used, and
// the context switches of its threads (each a thread that blocked or was
// preempted, and later woken).
func cpuTime() (time.Duration, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), int64(ru.Nvcsw + ru.Nivcsw)
}
