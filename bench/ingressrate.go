package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"time"
)

// ingressRateConfig sizes scenario 2c: the TLS ingresses' latency with
// every one offered the same rate of unary calls.
type ingressRateConfig struct {
	// Calls per path per run, paced, in Turns turns, the paths taking
	// turns.
	Calls, Turns int
	// Warmup calls, Concurrency at a time (closed loop), go first on each
	// path in every run; how fast each path makes them is its capacity.
	Warmup, Concurrency int
	// Load is the rate offered to every path, as a fraction of the
	// lowest capacity among the paths with a proxy in the run (among all
	// paths when none has one).
	Load float64
	// InFlight bounds the paced calls in flight on one path.
	InFlight int
	Pods     int
	Paths    []path
}

const (
	colOffered  = "offered_rps"
	colCapacity = "capacity_rps"
	colLagP99   = "lag_p99_ms"
	colRunWait  = "run_wait_us"
)

// ingressRate is scenario 2c. Scenario 2 runs each path as fast as 16
// callers at a time go (closed loop), so each path's latency there is
// measured at its own throughput: a faster path carries more calls a
// second, which on a shared machine load the client and the pods more, and
// its tail grows with them. Here every path is offered the same calls a
// second (open loop), and each call's latency runs from when it was due,
// the way wrk2, Fortio -qps and ghz --rps compare servers: the same work,
// asked of each, and how long it took.
func (b *Bench) ingressRate(ctx context.Context, c ingressRateConfig) *Section {
	s := &Section{
		ID:    "ingress-rate",
		Title: "2c. TLS ingress latency at one offered rate (unary)",
		Description: fmt.Sprintf("The TLS ingresses of scenario 2 (and direct, the floor), each offered the same unary calls a second, over one client connection, %d pods. "+
			"In scenario 2 each path runs as fast as 16 callers at a time go, so each path's p99 there is taken at its own throughput: the faster path carries more calls a second, "+
			"which load the client and the pods on the same 2 cores more, and its tail grows with that load. Latency compared at unequal loads mixes the path's latency with the load it carried; "+
			"offered the same rate, every path does the same work for the same clients, so its latency is what the path itself adds. "+
			"That is the fair comparison of latency, and the one the gateway's p99 goal (≤ haproxy's) is judged by for unary calls; scenario 2's closed-loop ratio stays in the report beside it, for reference "+
			"(streaming, 2b, is judged closed loop: no paced streaming measure exists, and there the unequal load works against the gateway, the faster path). "+
			"Each run first makes %d calls on each path, %d at a time, as fast as they go: its capacity (\"closed-loop calls/s\"); the run's rate is %.0f%% of the lowest capacity among the ingresses, "+
			"so that every ingress runs well below what it can take (at or above it, a path's queue and its latency grow for as long as the turn lasts). "+
			"Then %d calls per path, in %d turns, the paths taking turns (each turn led by the next path), each turn's calls paced at that rate (open loop, at most %d in flight): "+
			"call i is due i/rate after the turn starts, whether or not the calls before it are back, and its latency runs from when it was due, "+
			"so a path that stalls is charged for every call its stall held up (coordinated omission: a closed loop sends fewer calls while a path stalls, and counts fewer slow ones). "+
			"\"send lag p99\" is how late the load generator sent calls after they were due (its timers and scheduling), which is in every path's latency alike. "+
			"Proxy CPU is utime+stime of the proxy's processes over the paced calls, per call; \"run-queue wait\" is how long their threads waited, runnable, for a CPU (schedstat), per call: "+
			"the time the proxy lost to the other processes on the machine, which is where a tail many times its p50 comes from. The load generator collects its garbage less often while it measures (GOGC %d).",
			c.Pods, c.Warmup, c.Concurrency, 100*c.Load, c.Calls, c.Turns, c.InFlight, loadGCPercent),
		Columns: []column{
			{colCPU, "proxy CPU µs/call", 1}, {colP50, "p50 ms", 3}, {colP99, "p99 ms", 3}, {colP999, "p99.9 ms", 3},
			{colRunWait, "run-queue wait µs/call", 1}, {colOffered, "offered calls/s", 0}, {colRPS, "calls/s", 0}, {colCapacity, "closed-loop calls/s", 0},
			{colLagP99, "send lag p99 ms", 3}, {colErrors, "errors", 0},
		},
		Charts: []chart{{File: "bench-ingress-rate-p99.png", Column: colP99, Title: "p99 latency, TLS ingresses at one offered rate",
			YLabel: "p99 latency (ms)"}},
	}
	specs := make([]podSpec, c.Pods)
	for i := range specs {
		specs[i] = podSpec{Name: fmt.Sprintf("pod-%c", 'a'+i)}
	}
	turns := min(max(c.Turns, 1), max(c.Calls, 1))
	defer debug.SetGCPercent(debug.SetGCPercent(loadGCPercent))

	// Turn 0 of a run measures every path's capacity, so the run's rate is
	// known before any path is paced.
	var (
		capacity = map[*opened]float64{}
		runOf    int
		rate     float64
		current  = map[*opened]*pacedRun{}
	)
	b.withPathsInTurns(ctx, s, specs, c.Paths, turns+1, func(run, turn int, o *opened, _ []*pod) (err error) {
		turn-- // 0: capacity
		if o.conn == nil {
			conn, err := dial(o.route)
			if err != nil {
				return err
			}
			o.conn = conn
			if err := waitConn(ctx, conn); err != nil {
				return err
			}
		}
		if turn == 0 {
			res := load{Calls: c.Warmup, Concurrency: c.Concurrency, Duration: time.Minute}.Run(ctx, o.conn)
			if err := res.failed(); err != nil {
				return err
			}
			capacity[o] = res.Throughput()
			o.row.add(colCapacity, res.Throughput())
			current[o] = &pacedRun{}
			if o.route.Proxy != nil {
				if current[o].tree, err = processTree(o.route.Proxy.pid()); err != nil {
					return err
				}
			}
			return nil
		}
		if runOf != run {
			// The ingresses' capacities; the other paths' only in a run
			// that has no ingress.
			var caps, others []float64
			for p, v := range capacity {
				switch {
				case p.row.Note != "":
				case p.route.Proxy != nil:
					caps = append(caps, v)
				default:
					others = append(others, v)
				}
			}
			if len(caps) == 0 {
				caps = others
			}
			if rate, err = pacedRate(caps, c.Load); err != nil {
				return err
			}
			runOf = run
			clear(capacity)
			b.progress("%s run %d/%d: offering %.0f calls/s to every path", s.ID, run, b.opts.Runs, rate)
		}
		acc := current[o]
		var before usage
		var waitBefore time.Duration
		if acc.tree != nil {
			if before, err = usageOf(acc.tree); err != nil {
				return err
			}
			if waitBefore, err = runQueueWait(acc.tree); err != nil {
				return err
			}
		}
		calls := c.Calls / turns
		if turn <= c.Calls%turns {
			calls++
		}
		// Paced, the turn takes calls/rate; twice that bounds it, should
		// the load generator fall behind, and the run's share of two
		// minutes, should the rate be low.
		bound := min(2*time.Duration(float64(calls)/rate*float64(time.Second))+time.Second, 2*time.Minute/time.Duration(turns))
		res := load{Calls: calls, Concurrency: c.InFlight, Duration: bound, Rate: rate}.Run(ctx, o.conn)
		if err := res.failed(); err != nil {
			return err
		}
		acc.res.merge(res)
		if acc.tree != nil {
			after, err := usageOf(acc.tree)
			if err != nil {
				return err
			}
			acc.cpu += after.CPU - before.CPU
			waitAfter, err := runQueueWait(acc.tree)
			if err != nil {
				return err
			}
			acc.wait += waitAfter - waitBefore
		}
		if turn < turns {
			return nil
		}

		res = acc.res
		slices.Sort(res.Latencies)
		slices.Sort(res.Lag)
		o.row.add(colP50, ms(res.Quantile(0.50)))
		o.row.add(colP99, ms(res.Quantile(0.99)))
		o.row.add(colP999, ms(res.Quantile(0.999)))
		o.row.add(colOffered, rate)
		o.row.add(colRPS, res.Throughput())
		o.row.add(colLagP99, ms(quantile(res.Lag, 0.99)))
		o.row.add(colErrors, float64(res.Errors))
		line := fmt.Sprintf("%s run %d/%d: %-30s %6d calls at %5.0f/s, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, send lag p99 %.3f ms", s.ID, run, b.opts.Runs, o.path.Name(),
			res.Calls, rate, ms(res.Quantile(0.50)), ms(res.Quantile(0.99)), ms(res.Quantile(0.999)), ms(quantile(res.Lag, 0.99)))
		if acc.tree != nil {
			if ok := res.Calls - res.Errors; ok > 0 {
				cpu := float64(acc.cpu.Microseconds()) / float64(ok)
				o.row.add(colCPU, cpu)
				wait := float64(acc.wait.Microseconds()) / float64(ok)
				o.row.add(colRunWait, wait)
				line += fmt.Sprintf(", proxy CPU %.1f µs/call, run-queue wait %.1f µs/call", cpu, wait)
			}
		}
		b.progress("%s", line)
		return nil
	})
	haproxyIngress := haproxyTLS().Name()
	s.ratio(gatewayIngressName+" p99 ÷ "+haproxyIngress+"'s, same offered rate", colP99, gatewayIngressName, haproxyIngress, goalGatewayP99).Top = true
	second := secondHaproxyTLS().Name()
	s.ratio(second+" p99 ÷ "+haproxyIngress+"'s, same offered rate (two identical ingresses, same run)", colP99, second, haproxyIngress, 0).Top = true
	s.ratio(gatewayIngressName+" p99.9 ÷ "+haproxyIngress+"'s", colP999, gatewayIngressName, haproxyIngress, 0)
	s.ratio(gatewayIngressName+" p50 ÷ "+haproxyIngress+"'s", colP50, gatewayIngressName, haproxyIngress, 0)
	s.ratio(gatewayIngressName+" CPU per call ÷ "+haproxyIngress+"'s, same offered rate", colCPU, gatewayIngressName, haproxyIngress, 0)
	s.ratio(gatewayIngressName+" run-queue wait per call ÷ "+haproxyIngress+"'s", colRunWait, gatewayIngressName, haproxyIngress, 0)
	s.ratio(nginxTLS().Name()+" p99 ÷ "+haproxyIngress+"'s", colP99, nginxTLS().Name(), haproxyIngress, 0)
	s.ratio("direct p99 ÷ "+haproxyIngress+"'s", colP99, "direct", haproxyIngress, 0)
	return s
}

// pacedRun is what one path's paced turns in a run of scenario 2c add up
// to.
type pacedRun struct {
	res loadResult
	// cpu and wait are the proxy's CPU time and its threads' run-queue
	// wait over the turns.
	cpu, wait time.Duration
	// tree is the proxy's processes, listed when the run starts; nil for
	// a path without a proxy.
	tree []int
}

// pacedRate is the rate offered to every path: load times the lowest of
// capacities (calls a second each path made as fast as it could); an
// error when none is above zero.
func pacedRate(capacities []float64, load float64) (float64, error) {
	if load <= 0 || load > 1 {
		return 0, fmt.Errorf("offered load %g of capacity: want above 0, at most 1", load)
	}
	var lowest float64
	for _, c := range capacities {
		if c > 0 && (lowest == 0 || c < lowest) {
			lowest = c
		}
	}
	if lowest == 0 {
		return 0, errors.New("no path made a call as fast as it could: no capacity to pace against")
	}
	return load * lowest, nil
}
