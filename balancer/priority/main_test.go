package priority_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: every
// balancer, ClientConn and server a test starts must stop.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
