package peakewma

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/balancer"

	"github.com/ballast-dev/ballast/internal/balancertest"
)

func addrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.0.0.%d:80", i+1)
	}
	return out
}

// BenchmarkPick measures one pick and its Done (a successful call, so a
// sample is folded in) on 8 ready endpoints from every core at once.
// p2c's BenchmarkPick runs the same loop beside grpc-go's policies.
func BenchmarkPick(b *testing.B) {
	cc, _ := balancertest.Start(b, Name, `{}`, addrs(8)...)
	p := cc.State().Picker
	done := balancer.DoneInfo{BytesReceived: true}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := p.Pick(balancer.PickInfo{})
			if err != nil {
				b.Error(err)
				return
			}
			res.Done(done)
		}
	})
}

// BenchmarkParts splits a pick into its costs, on one core.
func BenchmarkParts(b *testing.B) {
	ep := newEndpoint(nanotime, new(atomic.Int64), 30*time.Millisecond)
	ep.decay.Store(int64(10 * time.Second))
	b.Run("clock", func(b *testing.B) {
		var s int64
		for b.Loop() {
			s += nanotime()
		}
		_ = s
	})
	b.Run("cost", func(b *testing.B) {
		now := nanotime()
		var s float64
		for b.Loop() {
			s += ep.cost(now)
		}
		_ = s
	})
	b.Run("observe", func(b *testing.B) {
		now := nanotime()
		for b.Loop() {
			now += 1000
			ep.observe(1e6, now)
		}
	})
	b.Run("pool", func(b *testing.B) {
		for b.Loop() {
			ep.calls.Put(ep.calls.Get())
		}
	})
}

// mutexEndpoint is the alternative to observe's compare-and-swap loop that
// BenchmarkObserveContended weighs it against: the same update under a lock.
type mutexEndpoint struct {
	mu sync.Mutex
	endpoint
}

func (ep *mutexEndpoint) observe(sample float64, now int64) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	old := math.Float64frombits(ep.rtt.Load())
	next := sample
	if sample < old {
		w := 1.0
		if elapsed := now - ep.stamp.Load(); elapsed > 0 {
			w = math.Exp(-float64(elapsed) / float64(ep.decay.Load()))
		}
		next = old*w + sample*(1-w)
	}
	ep.rtt.Store(math.Float64bits(next))
	ep.stamp.Store(now)
}

// BenchmarkObserveContended folds samples into one endpoint from every core
// at once, the worst case for the Done path: lock-free against a mutex.
func BenchmarkObserveContended(b *testing.B) {
	var decay atomic.Int64
	decay.Store(int64(10 * time.Second))
	for _, tc := range []struct {
		name    string
		observe func(float64, int64)
	}{
		{"cas", newEndpoint(nanotime, &decay, 0).observe},
		{"mutex", func() func(float64, int64) {
			ep := &mutexEndpoint{}
			ep.decay = &decay
			return ep.observe
		}()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var clock atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for i := 0; pb.Next(); i++ {
					tc.observe(float64(i%7)*ms, clock.Add(1000))
				}
			})
		})
	}
}
