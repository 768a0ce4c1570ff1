package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	echopb "google.golang.org/grpc/examples/features/proto/echo"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"

	"github.com/ballast-dev/ballast/greeter"
)

// load is a bounded run of unary SayHello calls: Calls in all, Concurrency
// at a time, spread over the given connections, stopped early when
// Duration has passed. Bounding both count and time keeps a slow path from
// holding the whole benchmark.
type load struct {
	Calls       int
	Concurrency int
	// Duration bounds the whole run; zero means one minute.
	Duration time.Duration
	// Timeout bounds each call; zero means five seconds.
	Timeout time.Duration
	// Stream, when set, makes each worker hold one bidirectional Echo
	// stream and count every message round trip on it as a call, instead
	// of making unary calls. A failed stream is counted as one error and
	// opened again.
	Stream bool
	// Streams, with Stream, holds the workers' streams open when Run
	// returns, for the next Run given the same Streams to go on with; nil
	// opens streams for this Run alone.
	Streams *streamSet
	// Rate, when above zero, paces unary calls at Rate a second (open
	// loop): call i is due at the run's start plus i/Rate whether or not
	// the calls before it have come back, Concurrency bounds how many are
	// in flight, and a call's latency runs from when it was due, not from
	// when it was sent. A path that stalls is then charged for the calls
	// its stall held up, as it would be by clients that do not wait for
	// each other (a closed loop sends fewer calls while a path stalls and
	// so counts fewer slow ones: coordinated omission).
	Rate float64
}

// loadResult is what a load measured.
type loadResult struct {
	Calls     int
	Errors    int
	LastError string
	// LastErrorAfter is how long the last failed call took.
	LastErrorAfter time.Duration
	Elapsed        time.Duration
	// Latencies of the calls that succeeded, sorted ascending.
	Latencies []time.Duration
	// Pods counts the calls each pod answered.
	Pods map[string]int
	// Lag, of a paced load, is how late each call was sent after it was
	// due, sorted ascending: the load generator's own delay (its timers,
	// its scheduling, all workers busy), included in Latencies.
	Lag []time.Duration
}

// Throughput is successful calls per second.
func (r loadResult) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Calls-r.Errors) / r.Elapsed.Seconds()
}

// failed is an error when no call succeeded: the path does not work, and
// its numbers would mean nothing.
func (r loadResult) failed() error {
	if r.Calls > 0 && r.Errors < r.Calls {
		return nil
	}
	if r.Calls == 0 {
		return errors.New("no call was made")
	}
	return fmt.Errorf("all %d calls failed; last: %s", r.Calls, r.LastError)
}

// Quantile is the latency below which the fraction q of successful calls
// fell (nearest rank); 0 when none succeeded.
func (r loadResult) Quantile(q float64) time.Duration {
	return quantile(r.Latencies, q)
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Run sends the load over conns, worker i using conns[i%len(conns)].
func (l load) Run(ctx context.Context, conns ...grpc.ClientConnInterface) loadResult {
	workers := max(1, min(l.Concurrency, l.Calls))
	// The run's time bounds when calls start, not the calls themselves: a
	// call given the run's deadline would carry it to the server as
	// grpc-timeout and could come back DEADLINE_EXCEEDED, counted as a
	// failure, before the run's own timer fired.
	runCtx, cancel := context.WithTimeout(ctx, cmp.Or(l.Duration, time.Minute))
	defer cancel()
	timeout := cmp.Or(l.Timeout, 5*time.Second)

	if l.Stream && l.Streams != nil {
		l.Streams.reserve(workers)
	}
	tallies := make([]tally, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	var due <-chan int64 // paced: the calls due, by number from 0
	if l.Rate > 0 && !l.Stream {
		due = pace(runCtx, start, l.Rate, l.Calls, workers)
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := &tallies[w]
			t.pods = map[string]int{}
			t.lat = make([]time.Duration, 0, min(l.Calls/workers+1, 1<<16))
			if l.Rate > 0 {
				t.lag = make([]time.Duration, 0, cap(t.lat))
			}
			if l.Stream {
				var held **heldStream
				if l.Streams != nil {
					held = l.Streams.slot(w)
				}
				l.streamWorker(ctx, runCtx, conns[w%len(conns)], held, &next, t.record)
				return
			}
			client := pb.NewGreeterClient(conns[w%len(conns)])
			req := &pb.HelloRequest{Name: "bench"}
			for {
				began := time.Now()
				if due != nil {
					i, ok := <-due
					if !ok {
						return
					}
					began = start.Add(dueAfter(i, l.Rate))
					t.lag = append(t.lag, time.Since(began))
				} else if next.Add(1) > int64(l.Calls) || stopped(runCtx) {
					return
				}
				callCtx, callCancel := context.WithTimeout(ctx, timeout)
				reply, err := client.SayHello(callCtx, req)
				took := time.Since(began)
				callCancel()
				if err != nil && stopped(ctx) {
					return // the caller stopped: the call was cut short, not failed
				}
				t.record(reply.GetMessage(), took, err)
			}
		}()
	}
	wg.Wait()
	r := loadResult{Elapsed: time.Since(start), Pods: map[string]int{}}
	for _, t := range tallies {
		r.Calls += t.calls
		r.Errors += t.errors
		if t.lastErr != nil {
			r.LastError, r.LastErrorAfter = t.lastErr.Error(), t.lastErrAfter
		}
		r.Latencies = append(r.Latencies, t.lat...)
		r.Lag = append(r.Lag, t.lag...)
		for pod, n := range t.pods {
			r.Pods[pod] += n
		}
	}
	slices.Sort(r.Latencies)
	slices.Sort(r.Lag)
	return r
}

// dueAfter is when call i (from 0) of a load paced at rate calls a second
// is due, after the load's start.
func dueAfter(i int64, rate float64) time.Duration {
	return time.Duration(float64(i) * float64(time.Second) / rate)
}

// pace hands out the numbers of calls 0 to calls-1, each when it is due
// (dueAfter start), until ctx ends; the channel, buffered for the workers
// that take from it, is closed after the last. When every worker is busy
// a call waits its turn, late: the latency measured from when it was due
// includes the wait.
//
// It sleeps on a thread of its own with nanosleep(2) and 1 ns of timer
// slack: a Go timer, on a process with nothing else to run, wakes from the
// network poller, whose timeout is whole milliseconds, so calls would be
// sent up to a millisecond late, in bunches.
func pace(ctx context.Context, start time.Time, rate float64, calls, workers int) <-chan int64 {
	due := make(chan int64, workers)
	deadline, hasDeadline := ctx.Deadline()
	go func() {
		defer close(due)
		// The thread's slack is its own while this goroutine holds it,
		// and back to the default before it runs others. It must not end
		// with the goroutine instead (left locked): the children the
		// benchmark started from it (Pdeathsig) would be killed.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0) == nil {
			defer unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)
		}
		for i := range int64(calls) {
			at := start.Add(dueAfter(i, rate))
			if hasDeadline && !at.Before(deadline) {
				return
			}
			for d := time.Until(at); d > 0 && ctx.Err() == nil; d = time.Until(at) {
				ts := unix.NsecToTimespec(int64(min(d, 10*time.Millisecond)))
				unix.Nanosleep(&ts, nil)
			}
			select {
			case due <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	return due
}

// stopped reports whether ctx is done or its deadline has passed. A call
// made as the deadline passes fails at once (DEADLINE_EXCEEDED, before it
// leaves the process), often before ctx's own timer has fired and set its
// Err: judged by Err alone, such calls would count as failures of the path.
func stopped(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// merge adds o, a later load on the same path, to r; r.Latencies and
// r.Lag are left unsorted.
func (r *loadResult) merge(o loadResult) {
	r.Calls += o.Calls
	r.Errors += o.Errors
	if o.LastError != "" {
		r.LastError = o.LastError
	}
	r.Elapsed += o.Elapsed
	r.Latencies = append(r.Latencies, o.Latencies...)
	r.Lag = append(r.Lag, o.Lag...)
	if r.Pods == nil {
		r.Pods = map[string]int{}
	}
	for pod, n := range o.Pods {
		r.Pods[pod] += n
	}
}

// tally is one worker's count.
type tally struct {
	calls, errors int
	lastErr       error
	lastErrAfter  time.Duration
	lat           []time.Duration
	lag           []time.Duration
	pods          map[string]int
}

func (t *tally) record(reply string, took time.Duration, err error) {
	t.calls++
	if err != nil {
		t.errors++
		t.lastErr, t.lastErrAfter = err, took
		return
	}
	t.lat = append(t.lat, took)
	t.pods[greeter.PodOf(reply)]++
}

// streamWorker takes call tokens from next and spends each on one message
// round trip over its stream. With held, the stream is the one held there
// (opened if there is none) and is left there open when the run ends; it
// lives on ctx, the caller's, rather than runCtx, which only bounds when
// round trips start, and is cancelled if runCtx ends with a round trip
// under way, so that a stuck stream cannot hold the run.
func (l load) streamWorker(ctx, runCtx context.Context, conn grpc.ClientConnInterface, held **heldStream, next *atomic.Int64, record func(string, time.Duration, error)) {
	client := echopb.NewEchoClient(conn)
	req := &echopb.EchoRequest{Message: "bench"}
	for !stopped(runCtx) && next.Load() < int64(l.Calls) {
		var h *heldStream
		if held != nil {
			h = *held
		}
		if h == nil {
			streamCtx, cancel := context.WithCancel(ctx)
			stream, err := client.BidirectionalStreamingEcho(streamCtx)
			if err != nil {
				cancel()
				if stopped(runCtx) {
					return
				}
				next.Add(1)
				record("", 0, err)
				continue
			}
			h = &heldStream{stream: stream, cancel: cancel}
		}
		stop := context.AfterFunc(runCtx, h.cancel)
		failed := false
		for next.Add(1) <= int64(l.Calls) && !stopped(runCtx) {
			began := time.Now()
			err := h.stream.Send(req)
			var resp *echopb.EchoResponse
			if err == nil {
				resp, err = h.stream.Recv()
			}
			took := time.Since(began)
			if err != nil && stopped(runCtx) {
				failed = true
				break
			}
			record(resp.GetMessage(), took, err)
			if err != nil {
				failed = true
				break // open a new stream
			}
		}
		if stop() && !failed && held != nil {
			*held = h
			return
		}
		h.close()
		if held != nil {
			*held = nil
		}
	}
}

// streamSet is one stream per worker of a streaming load, held open from
// one load.Run to the next: a measurement taken in turns sends every turn's
// messages on streams already open, as one long run would.
type streamSet struct {
	held []*heldStream
}

// reserve makes a slot for each of n workers, before they start.
func (s *streamSet) reserve(n int) {
	if len(s.held) < n {
		s.held = append(s.held, make([]*heldStream, n-len(s.held))...)
	}
}

// slot is worker w's place in the set. Runs given the set must not
// overlap: each worker uses its own slot, without a lock.
func (s *streamSet) slot(w int) **heldStream { return &s.held[w] }

// Close ends every stream held.
func (s *streamSet) Close() {
	for i, h := range s.held {
		if h != nil {
			h.close()
			s.held[i] = nil
		}
	}
}

type heldStream struct {
	stream echopb.Echo_BidirectionalStreamingEchoClient
	cancel context.CancelFunc
}

func (h *heldStream) close() {
	h.stream.CloseSend()
	h.cancel()
}

// share is the fraction of counted calls that pod answered.
func share(pods map[string]int, pod string) float64 {
	total := 0
	for _, n := range pods {
		total += n
	}
	if total == 0 {
		return 0
	}
	return float64(pods[pod]) / float64(total)
}

// withPods returns counts with every one of pods present, zero if unseen.
func withPods(counts map[string]int, pods []string) map[string]int {
	out := make(map[string]int, len(pods))
	for _, p := range pods {
		out[p] = 0
	}
	maps.Copy(out, counts)
	return out
}
