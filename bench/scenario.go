package bench

import (
	"context"
	"fmt"
	"maps"
	"math"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballast-dev/ballast/greeter"
)

// balanceConfig sizes scenario 1.
type balanceConfig struct {
	// Calls per path per run, one at a time over one connection.
	Calls int
	Pods  int
	Paths []path
}

// dataPathConfig sizes scenario 2.
type dataPathConfig struct {
	// Calls per path per run, Concurrency at a time over one connection;
	// Warmup calls go first in every run and are not measured.
	Calls, Warmup, Concurrency int
	Pods                       int
	Paths                      []path
	// Stream sends messages on Concurrency long-lived bidirectional
	// streams instead of unary calls; a "call" is one message round trip.
	Stream bool
	// Turns splits each run's calls into this many turns, the paths
	// taking turns (zero means one: each path's calls in one go). The
	// client, the pods and the proxy share the machine's cores with
	// whatever else runs on it, whose load comes and goes: measured one
	// after another, each path's tail would meet a different moment of it.
	// In turns, every path's calls are spread over the same stretch of the
	// run.
	Turns int
}

// latencyConfig sizes scenario 3: two pods answer at once, a third holds
// every call for SlowDelay. Each run measures Calls calls on a new
// connection (cold: the balancer is still learning), keeps the load on for
// Settle, then measures Calls more (warm: a long-lived client's steady
// state).
type latencyConfig struct {
	Calls, Concurrency int
	SlowDelay          time.Duration
	Settle             time.Duration
	Paths              []path
}

const (
	colMaxMean   = "max_mean"
	colErrors    = "errors"
	colCPU       = "cpu_us"
	colP50       = "p50_ms"
	colP99       = "p99_ms"
	colP999      = "p999_ms"
	colP99Added  = "p99_added_ms"
	colRPS       = "rps"
	colRSSIdle   = "rss_idle_mib"
	colAnonIdle  = "anon_idle_mib"
	colRSSLoad   = "rss_load_mib"
	colSlowShare = "slow_share_pct"
	colWarmP50   = "warm_p50_ms"
	colWarmP99   = "warm_p99_ms"
	colWarmSlow  = "warm_slow_share_pct"
)

// balance is scenario 1: one client connection, calls one after another,
// through each path; how evenly the pods share them.
func (b *Bench) balance(ctx context.Context, c balanceConfig) *Section {
	s := &Section{
		ID:    "balance",
		Title: "1. Balance",
		Description: fmt.Sprintf("One client connection, %d calls one after another, %d pods. "+
			"max/mean is the busiest pod's calls over the mean: 1.00 is even, %d.00 is one pod taking every call. "+
			"Each run opens a new connection and warms it up (until every pod has answered, at most 1,000 calls or 10 s) before counting.", c.Calls, c.Pods, c.Pods),
		Columns: []column{{colMaxMean, "max/mean", 2}, {colErrors, "errors", 0}},
		Charts: []chart{{File: "bench-balance.png", Column: colMaxMean, Title: "Balance over one connection",
			YLabel: "busiest pod / mean (1 = even)"}},
	}
	specs := make([]podSpec, c.Pods)
	for i := range specs {
		specs[i] = podSpec{Name: fmt.Sprintf("pod-%c", 'a'+i)}
	}
	b.withPaths(ctx, s, specs, c.Paths, func(run int, o *opened, pods []*pod) error {
		conn, err := dial(o.route)
		if err != nil {
			return err
		}
		defer conn.Close()
		warmUp(ctx, conn, len(pods))
		res := load{Calls: c.Calls, Concurrency: 1, Duration: 2 * time.Minute}.Run(ctx, conn)
		if err := res.failed(); err != nil {
			return err
		}
		counts := withPods(res.Pods, podNames(pods))
		o.row.add(colMaxMean, greeter.MaxOverMean(counts, len(counts)))
		o.row.add(colErrors, float64(res.Errors))
		o.row.Detail = "calls per pod (last run): " + formatCounts(counts)
		b.progress("balance run %d/%d: %-18s max/mean %.2f (%s)", run, b.opts.Runs, o.path.Name(), greeter.MaxOverMean(counts, len(counts)), formatCounts(counts))
		return nil
	})
	for _, r := range s.Rows {
		if r.Path != "haproxy" {
			h := s.ratio(r.Path+" max/mean ÷ haproxy's", colMaxMean, r.Path, "haproxy", 0)
			h.Top = r.Path == "plain Service (L4)" || r.Path == "ballast_p2c" || r.Path == sidecarName("round_robin", iptablesCapture)
		}
	}
	return s
}

// dataPath is scenario 2: unary calls at fixed concurrency over one
// connection through each path; what the proxy in between costs.
func (b *Bench) dataPath(ctx context.Context, c dataPathConfig) *Section {
	id, title, what, file, unit := "data-path", "2. Data-path cost (unary)", "unary calls", "bench-datapath", "unary call"
	if c.Stream {
		id, title, file, unit = "data-path-stream", "2b. Data-path cost (streaming)", "bench-datapath-stream", "stream message round trip"
		what = "message round trips on bidirectional Echo streams (one stream per concurrent caller, kept open)"
	}
	s := &Section{
		ID:    id,
		Title: title,
		Description: fmt.Sprintf("%d %s per run (after %d warm-up), %d at a time over one client connection, "+
			"%d pods. %s The load generator, a Go process, collects its garbage less often while it measures (GOGC %d), so that its collector adds less of the same tail to every path. Proxy CPU is utime+stime of the proxy's processes from /proc over the measured calls, per call; "+
			"RSS idle is VmRSS once the proxy has served its first call, one sample per proxy (it serves every run), and its anonymous part (RssAnon: heap and stacks; the rest is pages of the proxy's binary mapped from the page cache), RSS under load the highest VmRSS sampled during the calls. "+
			"\"p99 added\" is the path's p99 minus direct's in the same run; below zero it is noise. The client, the pods and the proxy share the machine's cores. "+
			"The sidecar is the ballast-proxy binary, built static as a sidecar image holds it (without it, `ballast proxy`: the same data path in the full binary, whose RSS includes the control plane and Kubernetes client it links). "+
			"\"sidecar (explicit listener)\": the client dials the proxy's own port. \"sidecar (iptables)\": as in an injected pod, the client dials the Service's ClusterIP "+
			"and `ballast-proxy init`'s rules redirect the connection to the proxy (running as uid %d), all in a network namespace the benchmark makes, "+
			"with its own pods (the same greeters) and control plane inside.",
			c.Calls, what, c.Warmup, c.Concurrency, c.Pods, inTurns(c), loadGCPercent, netnsProxyUID),
		Columns: []column{
			{colCPU, "proxy CPU µs/call", 1}, {colP50, "p50 ms", 3}, {colP99, "p99 ms", 3}, {colP999, "p99.9 ms", 3},
			{colP99Added, "p99 added ms", 3}, {colRPS, "calls/s", 0}, {colRSSIdle, "RSS idle MiB", 1},
			{colAnonIdle, "anon RSS idle MiB", 1}, {colRSSLoad, "RSS load MiB", 1}, {colErrors, "errors", 0},
		},
		Charts: []chart{
			{File: file + "-cpu.png", Column: colCPU, Title: "Proxy CPU per " + unit, YLabel: "µs of proxy CPU per call"},
			{File: file + "-p99.png", Column: colP99, Title: fmt.Sprintf("p99 latency, %d in flight", c.Concurrency), YLabel: "p99 latency (ms)"},
		},
	}
	s.Description += " \"" + gatewayIngressName + "\", \"" + nginxTLS().Name() + "\", \"" + haproxyTLS().Name() + "\": the client speaks TLS " +
		"(1.2 or later, h2 by ALPN, the same ECDSA P-256 certificate for all three), which each terminates, speaking h2c to the pods: " +
		"`ballast-gateway --files` with its defaults (one thread, --procs 1), an HTTPS listener and a GRPCRoute to the pods' Service, the binary built static as the ballast-gateway image holds it " +
		"(without it, `ballast gateway` from the full binary); nginx and haproxy with one worker, as above. " +
		"\"" + secondHaproxyTLS().Name() + "\" is a control: a second haproxy configured as the first, whose p99 over the first's says how far two identical ingresses differ in one run here."
	if !c.Stream {
		s.Description += " \"" + routedSidecarName + "\": the explicit-listener sidecar with a GRPCRoute of five rules attached to the Service, " +
			"which each call is compared with in turn, matching only the last (a header with a method, two other methods, a method regular expression, then the whole service)."
	}
	specs := make([]podSpec, c.Pods)
	for i := range specs {
		specs[i] = podSpec{Name: fmt.Sprintf("pod-%c", 'a'+i)}
	}
	turns := min(max(c.Turns, 1), max(c.Calls, 1))
	// The load generator is a Go process: at the default GOGC its
	// collector marks every few hundred milliseconds under this load (the
	// TLS clients allocate on every call), slowing every call in flight
	// on whichever path, which adds the same tail to every row and
	// narrows the differences the rows are for. It collects less often
	// while it measures; its heap is a few tens of MiB.
	defer debug.SetGCPercent(debug.SetGCPercent(loadGCPercent))
	current := map[*opened]*dataPathRun{} // each path's run so far
	b.withPathsInTurns(ctx, s, specs, c.Paths, turns, func(run, turn int, o *opened, _ []*pod) (err error) {
		if o.conn == nil { // one connection for every run, as a long-lived client has
			conn, err := dial(o.route)
			if err != nil {
				return err
			}
			o.conn = conn
			if err := waitConn(ctx, conn); err != nil {
				return err
			}
			if o.route.Proxy != nil {
				m, err := treeMemory(o.route.Proxy.pid())
				if err != nil {
					return err
				}
				o.row.add(colRSSIdle, mib(m.RSS))
				o.row.add(colAnonIdle, mib(m.Anon))
			}
		}
		if turn == 1 {
			current[o] = &dataPathRun{}
			if c.Stream {
				current[o].streams = &streamSet{}
			}
		}
		acc := current[o]
		defer func() {
			if (err != nil || turn == turns) && acc.streams != nil {
				acc.streams.Close()
			}
		}()
		if turn == 1 {
			load{Calls: c.Warmup, Concurrency: c.Concurrency, Duration: time.Minute, Stream: c.Stream, Streams: acc.streams}.Run(ctx, o.conn)
			if o.route.Proxy != nil {
				if acc.tree, err = processTree(o.route.Proxy.pid()); err != nil {
					return err
				}
			}
		}

		var before usage
		if acc.tree != nil {
			if before, err = usageOf(acc.tree); err != nil {
				return err
			}
		}
		// This turn's share of the run's calls, and of its time bound.
		calls := c.Calls / turns
		if turn <= c.Calls%turns {
			calls++
		}
		peak := sampleRSS(ctx, acc.tree)
		res := load{Calls: calls, Concurrency: c.Concurrency, Duration: 2 * time.Minute / time.Duration(turns),
			Stream: c.Stream, Streams: acc.streams}.Run(ctx, o.conn)
		peakRSS := peak()
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
			acc.peakRSS = max(acc.peakRSS, peakRSS, after.RSS)
		}
		if turn < turns {
			return nil
		}

		res = acc.res
		slices.Sort(res.Latencies)
		o.row.add(colP50, ms(res.Quantile(0.50)))
		o.row.add(colP99, ms(res.Quantile(0.99)))
		o.row.add(colP999, ms(res.Quantile(0.999)))
		o.row.add(colRPS, res.Throughput())
		o.row.add(colErrors, float64(res.Errors))
		line := fmt.Sprintf("%s run %d/%d: %-8s %6d calls, %6.0f calls/s, p99 %.3f ms", id, run, b.opts.Runs, o.path.Name(),
			res.Calls, res.Throughput(), ms(res.Quantile(0.99)))
		if acc.tree != nil {
			if ok := res.Calls - res.Errors; ok > 0 {
				cpu := float64(acc.cpu.Microseconds()) / float64(ok)
				o.row.add(colCPU, cpu)
				line += fmt.Sprintf(", proxy CPU %.1f µs/call", cpu)
			}
			o.row.add(colRSSLoad, mib(acc.peakRSS))
		}
		b.progress("%s", line)
		return nil
	})
	// p99 added: each run's p99 minus direct's in the same run.
	if direct := s.find("direct"); direct != nil {
		for _, r := range s.Rows {
			p99, base := r.Values[colP99], direct.Values[colP99]
			for run := range min(len(p99), len(base)) {
				r.add(colP99Added, p99[run]-base[run])
			}
		}
	}
	for _, capture := range []capture{iptablesCapture, explicitListener} {
		name := sidecarName("round_robin", capture)
		s.ratio(name+" proxy CPU per call ÷ haproxy's", colCPU, name, "haproxy", goalSidecarCPU).Top = true
		s.ratio(name+" p99 ÷ haproxy's", colP99, name, "haproxy", goalSidecarP99).Top = !c.Stream
		s.ratio(name+" p99 added ÷ haproxy's", colP99Added, name, "haproxy", goalSidecarP99)
		s.value(name+" idle RSS MiB", colRSSIdle, name, goalSidecarIdleRSS).Top = !c.Stream
	}
	if !c.Stream {
		explicit := sidecarName("round_robin", explicitListener)
		s.ratio(routedSidecarName+" proxy CPU per call ÷ "+explicit+"'s", colCPU, routedSidecarName, explicit, goalRoutedCPU).Top = true
	}
	// The gateway as a TLS-terminating ingress, against haproxy as one.
	haproxyIngress := haproxyTLS().Name()
	s.ratio(gatewayIngressName+" CPU per call ÷ "+haproxyIngress+"'s", colCPU, gatewayIngressName, haproxyIngress, goalGatewayCPU).Top = true
	if c.Stream {
		s.ratio(gatewayIngressName+" p99 ÷ "+haproxyIngress+"'s", colP99, gatewayIngressName, haproxyIngress, goalGatewayP99)
	} else {
		// Unary, the goal is judged in scenario 2c, every path offered the
		// same rate: here each runs at its own throughput (see ingressRate).
		s.ratio(gatewayIngressName+" p99 ÷ "+haproxyIngress+"'s, closed loop (each at its own throughput; the goal is judged at one offered rate, in 2c)",
			colP99, gatewayIngressName, haproxyIngress, 0).Top = true
	}
	second := secondHaproxyTLS().Name()
	s.ratio(second+" p99 ÷ "+haproxyIngress+"'s (two identical ingresses, same run)", colP99, second, haproxyIngress, 0).Top = !c.Stream
	s.ratio(nginxTLS().Name()+" CPU per call ÷ "+haproxyIngress+"'s", colCPU, nginxTLS().Name(), haproxyIngress, 0)
	s.ratio("nginx proxy CPU per call ÷ haproxy's", colCPU, "nginx", "haproxy", 0).Top = !c.Stream
	s.ratio("nginx p99 ÷ haproxy's", colP99, "nginx", "haproxy", 0)
	s.ratio("direct p99 ÷ haproxy's", colP99, "direct", "haproxy", 0)
	return s
}

// loadGCPercent is the load generator's GOGC while scenario 2 measures.
const loadGCPercent = 1000

// inTurns says how c's runs take turns, for the description.
func inTurns(c dataPathConfig) string {
	if c.Turns <= 1 {
		return "Each path makes a run's calls in one go, one path after another."
	}
	d := fmt.Sprintf("Each run's calls are made in %d turns of %d, the paths taking turns (each turn led by the next path), so that every path's calls spread over the same stretch of the run "+
		"and meet the same load from the rest of the machine (measured one after another, each path's tail would meet a different moment of it).", c.Turns, c.Calls/c.Turns)
	if c.Stream {
		d += " The streams stay open from the run's warm-up to its last turn."
	}
	return d
}

// dataPathRun is what one path's turns in a run of scenario 2 add up to.
type dataPathRun struct {
	res     loadResult
	cpu     time.Duration
	peakRSS int64
	// tree is the proxy's processes, listed when the run starts; nil
	// for a path without a proxy.
	tree []int
	// streams, on a streaming run, are the workers' streams, open from
	// the warm-up to the run's last turn.
	streams *streamSet
}

// latency is scenario 3: one of three pods is slow; how much of the load
// each policy still sends it, and what that does to the tail, both while
// the balancer is learning and once it has settled.
func (b *Bench) latency(ctx context.Context, c latencyConfig) *Section {
	s := &Section{
		ID:    "latency-aware",
		Title: "3. Latency-aware balancing",
		Description: fmt.Sprintf("3 pods, one of them (pod-slow) holding every call for %s; %d at a time over one client connection. "+
			"Each run opens a new connection (fresh balancer state) and measures %d calls (\"cold\"), keeps the same load on for %s, "+
			"then measures %d more (\"warm\": a long-lived client's steady state). "+
			"Target: peak-EWMA's p99 ≤ 1/4 of round_robin's; since every call to pod-slow takes at least %[1]s, "+
			"p99 can only fall below that when under 1%% of calls go to it.", c.SlowDelay, c.Concurrency, c.Calls, c.Settle, c.Calls),
		Columns: []column{
			{colP50, "cold p50 ms", 3}, {colP99, "cold p99 ms", 3}, {colSlowShare, "cold slow share %", 1},
			{colWarmP50, "warm p50 ms", 3}, {colWarmP99, "warm p99 ms", 3}, {colWarmSlow, "warm slow share %", 1},
			{colRPS, "warm calls/s", 0}, {colErrors, "errors", 0},
		},
		Charts: []chart{
			{File: "bench-latency-warm.png", Column: colWarmP99, Title: fmt.Sprintf("Warm p99 with one pod %s slower", c.SlowDelay),
				YLabel: "p99 latency (ms)"},
			{File: "bench-latency-cold.png", Column: colP99, Title: fmt.Sprintf("Cold p99 with one pod %s slower", c.SlowDelay),
				YLabel: "p99 latency (ms)"},
		},
	}
	specs := []podSpec{{Name: "pod-a"}, {Name: "pod-b"}, {Name: "pod-slow", Delay: c.SlowDelay}}
	b.withPaths(ctx, s, specs, c.Paths, func(run int, o *opened, pods []*pod) error {
		conn, err := dial(o.route)
		if err != nil {
			return err
		}
		defer conn.Close()
		measured := load{Calls: c.Calls, Concurrency: c.Concurrency, Duration: 2 * time.Minute}
		cold := measured.Run(ctx, conn)
		if err := cold.failed(); err != nil {
			return err
		}
		if c.Settle > 0 {
			load{Calls: math.MaxInt32, Concurrency: c.Concurrency, Duration: c.Settle}.Run(ctx, conn)
		}
		warm := measured.Run(ctx, conn)
		if err := warm.failed(); err != nil {
			return err
		}
		coldCounts := withPods(cold.Pods, podNames(pods))
		warmCounts := withPods(warm.Pods, podNames(pods))
		o.row.add(colP50, ms(cold.Quantile(0.50)))
		o.row.add(colP99, ms(cold.Quantile(0.99)))
		o.row.add(colSlowShare, 100*share(coldCounts, "pod-slow"))
		o.row.add(colWarmP50, ms(warm.Quantile(0.50)))
		o.row.add(colWarmP99, ms(warm.Quantile(0.99)))
		o.row.add(colWarmSlow, 100*share(warmCounts, "pod-slow"))
		o.row.add(colRPS, warm.Throughput())
		o.row.add(colErrors, float64(cold.Errors+warm.Errors))
		o.row.Detail = "warm calls per pod (last run): " + formatCounts(warmCounts)
		b.progress("latency run %d/%d: %-18s cold p99 %.3f ms, slow pod %.1f%%; warm p99 %.3f ms, slow pod %.1f%%", run, b.opts.Runs,
			o.path.Name(), ms(cold.Quantile(0.99)), 100*share(coldCounts, "pod-slow"), ms(warm.Quantile(0.99)), 100*share(warmCounts, "pod-slow"))
		return nil
	})
	s.ratio("ballast_peak_ewma warm p99 ÷ round_robin's", colWarmP99, "ballast_peak_ewma", "round_robin", goalPeakEWMA).Top = true
	s.ratio("ballast_peak_ewma cold p99 ÷ round_robin's", colP99, "ballast_peak_ewma", "round_robin", goalPeakEWMA)
	s.ratio("ballast_p2c warm p99 ÷ round_robin's", colWarmP99, "ballast_p2c", "round_robin", 0)
	s.ratio("proxyless xDS peak_ewma warm p99 ÷ round_robin's", colWarmP99, "proxyless xDS peak_ewma", "round_robin", goalPeakEWMA)
	for _, capture := range []capture{iptablesCapture, explicitListener} {
		name := sidecarName("peak_ewma", capture)
		s.ratio(name+" warm p99 ÷ round_robin's", colWarmP99, name, "round_robin", goalPeakEWMA).Top = capture == iptablesCapture
	}
	return s
}

// opened is a path in front of the scenario's pods.
type opened struct {
	path  path
	row   *row
	route *route
	conn  *grpc.ClientConn // kept across runs when the scenario wants it
}

// withPaths starts the pods, opens every path (a path that cannot open
// gets a note in its row), then calls measure for each open path in each
// run, paths interleaved so every run sees all of them under the same
// conditions. Everything started is stopped before it returns.
func (b *Bench) withPaths(ctx context.Context, s *Section, specs []podSpec, paths []path,
	measure func(run int, o *opened, pods []*pod) error) {
	b.withPathsInTurns(ctx, s, specs, paths, 1, func(run, _ int, o *opened, pods []*pod) error { return measure(run, o, pods) })
}

// withPathsInTurns is withPaths with each run in turns (1 to turns): in
// every turn, measure is called once for each open path, the first path
// of a turn moving one along each turn, so that no path always follows
// the same other path (whose wake or wind-down would then fall on it).
func (b *Bench) withPathsInTurns(ctx context.Context, s *Section, specs []podSpec, paths []path, turns int,
	measure func(run, turn int, o *opened, pods []*pod) error) {
	for _, p := range paths {
		s.row(p.Name())
	}
	b.progress("%s: starting %d pods", s.ID, len(specs))
	pods, err := startPods(ctx, b.opts.Greeter, specs)
	if err != nil {
		s.NotMeasured = "failed: " + err.Error()
		return
	}
	defer stopPods(pods)
	var open []*opened
	defer func() {
		for _, o := range open {
			if o.conn != nil {
				o.conn.Close()
			}
			o.route.Close()
		}
	}()
	for _, p := range paths {
		row := s.row(p.Name())
		route, err := p.Open(ctx, b, pods)
		if err != nil {
			row.Note = whyNot(err)
			b.progress("%s: %s: %s", s.ID, p.Name(), row.Note)
			continue
		}
		open = append(open, &opened{path: p, row: row, route: route})
	}
	for run := 1; run <= b.opts.Runs && ctx.Err() == nil; run++ {
		for turn := 1; turn <= turns && ctx.Err() == nil; turn++ {
			for i := range open {
				o := open[(i+turn-1)%len(open)]
				if o.row.Note != "" {
					continue // failed earlier
				}
				if err := measure(run, turn, o, pods); err != nil {
					o.row.Note = "failed: " + err.Error()
					o.row.Values = nil
					b.progress("%s: %s: %s", s.ID, o.path.Name(), o.row.Note)
				}
			}
		}
	}
	if err := ctx.Err(); err != nil && s.NotMeasured == "" {
		s.NotMeasured = "interrupted: " + err.Error()
	}
}

func dial(r *route) (*grpc.ClientConn, error) {
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, r.DialOptions...)
	conn, err := grpc.NewClient(r.Target, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", r.Target, err)
	}
	return conn, nil
}

// warmUp makes calls, one at a time, until every one of pods has answered,
// 1,000 calls are done or 10 s have passed (a per-connection path never
// reaches them all), so the counted calls measure the policy, not how fast
// connections came up on a loaded machine, where a hundred calls to the
// first pod up can take less time than connecting to the others.
func warmUp(ctx context.Context, conn *grpc.ClientConn, pods int) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for done := 0; done < 1000 && len(seen) < pods && ctx.Err() == nil; done += 5 {
		res := load{Calls: 5, Concurrency: 1, Duration: 10 * time.Second}.Run(ctx, conn)
		for pod := range res.Pods {
			seen[pod] = true
		}
	}
}

// waitConn makes one call, so the connection (and the proxy's upstream
// side) is up before anything is measured.
func waitConn(ctx context.Context, conn *grpc.ClientConn) error {
	res := load{Calls: 1, Concurrency: 1, Duration: 10 * time.Second}.Run(ctx, conn)
	if res.Errors > 0 || res.Calls == 0 {
		return fmt.Errorf("first call through %s failed: %s", conn.Target(), res.LastError)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func mib(b int64) float64        { return float64(b) / (1 << 20) }

func formatCounts(counts map[string]int) string {
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s %d", p, counts[p]))
	}
	return strings.Join(parts, ", ")
}
