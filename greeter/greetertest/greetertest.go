// Package greetertest runs real greeter servers on loopback for tests of the
// parts that balance calls between them, as net/http/httptest does for HTTP:
// each Pod counts the calls it answered and the connections open to it, so a
// test can wait for a client to let go of a pod instead of sleeping.
package greetertest

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"

	"github.com/ballast-dev/ballast/greeter"
)

// Options shape a Pod.
type Options struct {
	// Delay is added to every call on the server side, to make a slow pod.
	Delay time.Duration
	// Host is the loopback address to listen on; empty means 127.0.0.1.
	// Pods on addresses of their own (127.0.0.2, …) tell apart in a
	// client's endpoint list as pods do in a cluster.
	Host string
}

// Pod is one greeter serving on a 127.0.0.1 port chosen by the kernel.
type Pod struct {
	Name string
	Addr netip.AddrPort

	calls atomic.Int64
	conns atomic.Int64
	stop  func()
}

// Start serves a greeter named name until the test ends.
func Start(t testing.TB, name string, opts Options) *Pod {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(cmp.Or(opts.Host, "127.0.0.1"), "0"))
	if err != nil {
		t.Fatalf("greetertest: listen: %v", err)
	}
	p := &Pod{Name: name, Addr: lis.Addr().(*net.TCPAddr).AddrPort()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := &greeter.Server{Pod: name}
	go func() {
		done <- srv.Serve(ctx, &countingListener{Listener: lis, pod: p}, grpc.UnaryInterceptor(p.intercept(opts.Delay)))
	}()
	p.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("greetertest: pod %s: %v", name, err)
		}
	})
	t.Cleanup(p.stop)
	return p
}

// Stop stops the pod as a deleted pod's server stops: it takes no new
// connection and returns once the calls it has were answered.
func (p *Pod) Stop() { p.stop() }

// Calls is the number of calls the pod has answered.
func (p *Pod) Calls() int64 { return p.calls.Load() }

// OpenConns is the number of client connections open to the pod.
func (p *Pod) OpenConns() int64 { return p.conns.Load() }

func (p *Pod) intercept(delay time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
		}
		resp, err := handler(ctx, req)
		if err == nil {
			p.calls.Add(1)
		}
		return resp, err
	}
}

// countingListener counts the connections accepted and not yet closed.
type countingListener struct {
	net.Listener
	pod *Pod
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.pod.conns.Add(1)
	return &countedConn{Conn: c, pod: l.pod}, nil
}

type countedConn struct {
	net.Conn
	pod  *Pod
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.pod.conns.Add(-1) })
	return c.Conn.Close()
}

// Eventually polls cond every few milliseconds until it holds or timeout
// passes, then fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg)
		}
		<-tick.C
	}
}

// Spread makes n SayHello calls over conn from workers goroutines and
// returns how many calls each pod answered. Any failed call fails the test.
func Spread(t testing.TB, conn grpc.ClientConnInterface, n, workers int) map[string]int {
	t.Helper()
	client := pb.NewGreeterClient(conn)
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		next   atomic.Int64
		wg     sync.WaitGroup
		errs   = make(chan error, workers)
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				reply, err := client.SayHello(ctx, &pb.HelloRequest{Name: "spread"})
				cancel()
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				counts[greeter.PodOf(reply.GetMessage())]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("greetertest: call failed: %v", err)
	}
	return counts
}

// MaxOverMean is the busiest pod's share over the mean share across pods,
// counting pods that got no call: 1 is a perfect spread.
func MaxOverMean(counts map[string]int, pods int) float64 {
	return greeter.MaxOverMean(counts, pods)
}

// Load is SayHello calls made without pause over one connection by a few
// goroutines, until Stop, counted by the pod that answered, for a test to
// change the pods under load and then check that no call failed.
type Load struct {
	stop func()

	mu     sync.Mutex
	counts map[string]int
	errs   []error
}

// loadCap bounds a Load that is never stopped, so a test that fails before
// Stop cannot call forever.
const loadCap = 1_000_000

// StartLoad starts workers goroutines calling SayHello over conn; the test's
// cleanup stops them if Stop was not called.
func StartLoad(t testing.TB, conn grpc.ClientConnInterface, workers int) *Load {
	t.Helper()
	client := pb.NewGreeterClient(conn)
	l := &Load{counts: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var made atomic.Int64
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil && made.Add(1) <= loadCap {
				callCtx, done := context.WithTimeout(ctx, 5*time.Second)
				reply, err := client.SayHello(callCtx, &pb.HelloRequest{Name: "load"})
				done()
				if ctx.Err() != nil {
					return // stopped mid-call: not the pods' failure
				}
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, err)
				} else {
					l.counts[greeter.PodOf(reply.GetMessage())]++
				}
				l.mu.Unlock()
			}
		})
	}
	l.stop = sync.OnceFunc(func() { cancel(); wg.Wait() })
	t.Cleanup(l.stop)
	return l
}

// Counts returns how many calls each pod has answered so far.
func (l *Load) Counts() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.counts)
}

// Stop ends the load and returns the calls each pod answered and the
// calls that failed.
func (l *Load) Stop() (counts map[string]int, failed []error) {
	l.stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.counts), slices.Clone(l.errs)
}
