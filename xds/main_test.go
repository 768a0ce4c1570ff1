package xds

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: every
// server, stream and client a test starts must stop with it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
