package proxy

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the package if, after every test has cleaned up, a
// goroutine started by this package is still running: every goroutine the
// proxy starts must stop with its Serve.
func TestMain(m *testing.M) {
	if target := os.Getenv(envEdgeChild); target != "" {
		os.Exit(runEdgeChild(target))
	}
	code := m.Run()
	if code == 0 {
		if leaked := waitForOwnGoroutines(10 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left running by package proxy:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

func waitForOwnGoroutines(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		leaked := ownGoroutines()
		if leaked == "" || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ownGoroutines returns the stacks of goroutines running code of package
// proxy (not its tests' main goroutine).
func ownGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "ballast/proxy.") && !strings.Contains(g, "ballast/proxy.TestMain") &&
			!strings.Contains(g, "ballast/proxy.ownGoroutines") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}
