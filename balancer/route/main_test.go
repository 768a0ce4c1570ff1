package route

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: every
// resolver, balancer, ClientConn and server a test starts must stop.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
