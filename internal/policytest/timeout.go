package policytest

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// SlowCall is what a SlowBackend saw of a call: the deadline it was told,
// from the call's start, and whether the call was cancelled.
type SlowCall struct {
	Left      time.Duration
	Cancelled bool
}

// SlowBackend is a Backend that holds every call sent with x-slow for a
// second, unless it is cancelled first, and reports what it saw on Seen.
// Other calls (a client's warm-up) it answers at once.
type SlowBackend struct {
	*Backend
	Seen chan SlowCall
}

// StartSlowBackend runs a SlowBackend until t ends.
func StartSlowBackend(t testing.TB) *SlowBackend {
	t.Helper()
	b := &SlowBackend{Seen: make(chan SlowCall, 10)}
	b.Backend = StartBackend(t, func(ctx context.Context, _ string, _ int64) error {
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("x-slow")) == 0 {
			return nil
		}
		var s SlowCall
		if d, ok := ctx.Deadline(); ok {
			s.Left = time.Until(d)
		}
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-ctx.Done():
			s.Cancelled = true
		case <-t.C:
		}
		b.Seen <- s
		return status.FromContextError(ctx.Err()).Err()
	})
	return b
}

// CheckCallTimeout checks a client of b whose calls of method with
// x-policy: yes have a 200ms timeout and whose other calls have none, as
// every mode must bound them: the timeout ends a slow call with
// DEADLINE_EXCEEDED saying so, and the server sees the deadline and the
// cancellation; a caller's sooner deadline is the one the server gets;
// other calls run their course.
func CheckCallTimeout(t *testing.T, conn grpc.ClientConnInterface, method string, b *SlowBackend) {
	t.Helper()
	call := func(timeout time.Duration, md ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return conn.Invoke(metadata.AppendToOutgoingContext(ctx, append(md, "x-slow", "yes")...), method, &emptypb.Empty{}, &emptypb.Empty{})
	}
	err := call(10*time.Second, "x-policy", "yes")
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "the call's timeout (200ms) elapsed") {
		t.Fatalf("slow call with a 200ms timeout: %v, want DEADLINE_EXCEEDED naming the rule's timeout", err)
	}
	if s := <-b.Seen; !s.Cancelled || s.Left <= 0 || s.Left > 200*time.Millisecond {
		t.Errorf("server saw deadline %v from the start, cancelled=%v; want at most 200ms, cancelled", s.Left, s.Cancelled)
	}
	if err := call(100*time.Millisecond, "x-policy", "yes"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("slow call with the caller's 100ms deadline: %v, want DEADLINE_EXCEEDED", err)
	}
	if s := <-b.Seen; s.Left > 100*time.Millisecond || !s.Cancelled {
		t.Errorf("server saw deadline %v (cancelled=%v), want the caller's 100ms", s.Left, s.Cancelled)
	}
	if err := call(10 * time.Second); err != nil {
		t.Fatalf("slow call of a rule without a timeout: %v, want OK after the server's second", err)
	}
	if s := <-b.Seen; s.Cancelled || s.Left < 5*time.Second {
		t.Errorf("call without a timeout: server saw deadline %v, cancelled=%v; want the caller's 10s, not cancelled", s.Left, s.Cancelled)
	}
}
