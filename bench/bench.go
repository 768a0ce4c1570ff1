// Package bench measures what Ballast claims about balance and speed next
// to what a user would pick instead, in the same run on the same machine:
// nginx and haproxy, a plain Kubernetes Service, grpc-go's own policies.
// Every scenario starts greeter pods as processes on 127.0.0.x, puts each
// path in front of them, drives the same bounded load through each from
// one client connection, and reads the proxies' CPU and memory from /proc.
// The results become text tables, PNG charts and docs/benchmarks.md.
package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a benchmark run.
type Options struct {
	// Quick runs fewer calls, for a run of a few minutes.
	Quick bool
	// Runs is how many times each measurement is repeated; min, median
	// and max are reported. Zero means 3.
	Runs int
	// Binary is the ballast binary, run for the modes that are processes
	// of their own (`ballast control`, `ballast proxy`); empty leaves their
	// rows pending.
	Binary string
	// ProxyBinary is the ballast-proxy binary, the sidecar alone, as a
	// pod runs it; empty runs `ballast proxy` from Binary (same data path,
	// but its RSS includes the control plane and Kubernetes client it
	// links).
	ProxyBinary string
	// ControlBinary is the ballast-control binary, the control plane
	// alone, as deploy/control runs it; empty runs `ballast control` from
	// Binary (same control plane, but its RSS includes the pages of the
	// code it links and never runs).
	ControlBinary string
	// GatewayBinary is the ballast-gateway binary, the gateway alone, as
	// the ballast-gateway:dev image runs it; empty runs `ballast gateway`
	// from Binary (same data path, but its RSS includes the pages of the
	// code it links and never runs).
	GatewayBinary string
	// Greeter starts the pods.
	Greeter GreeterCommand
	// InstallPeers lets the benchmark apt-get install nginx and haproxy
	// when they are missing.
	InstallPeers bool
	// Progress receives one line per long step; nil means none.
	Progress io.Writer
}

// Bench runs scenarios. It owns a temporary directory for the peers'
// configurations, removed by Close.
type Bench struct {
	opts  Options
	dir   string
	peers *peers

	commandsMu sync.Mutex
	commands   map[string]bool // ballast subcommand → present in Binary

	// istiodVersion is the module and version of the istiod the
	// control-plane scenarios ran, for the report.
	istiodVersion atomic.Value // string
}

// New validates opts and makes the temporary directory.
func New(opts Options) (*Bench, error) {
	opts.Runs = cmp.Or(opts.Runs, 3)
	if opts.Runs < 1 || opts.Runs > 100 {
		return nil, fmt.Errorf("runs %d: want 1 to 100", opts.Runs)
	}
	if opts.Greeter == nil {
		return nil, fmt.Errorf("bench: no greeter command to start pods with")
	}
	dir, err := os.MkdirTemp("", "ballast-bench-")
	if err != nil {
		return nil, err
	}
	b := &Bench{opts: opts, dir: dir}
	if needNetns() == nil {
		swept, err := sweepNetns()
		for _, name := range swept {
			b.progress("deleted network namespace %s, left by a benchmark that no longer runs", name)
		}
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("delete stale network namespaces: %w", err)
		}
	}
	b.peers = &peers{install: opts.InstallPeers, progress: b.progress}
	return b, nil
}

// Close removes what New made. Every scenario stops its own processes.
func (b *Bench) Close() error { return os.RemoveAll(b.dir) }

func (b *Bench) progress(format string, args ...any) {
	if b.opts.Progress != nil {
		fmt.Fprintf(b.opts.Progress, "bench: "+format+"\n", args...)
	}
}

// Scenarios are the sizes of each scenario, quick or full.
type Scenarios struct {
	balance        balanceConfig
	dataPath       dataPathConfig
	dataPathStream dataPathConfig
	ingressRate    ingressRateConfig
	latency        latencyConfig
	// controlPlanes sizes scenarios 4 (convergence) and 5
	// (control-plane-scale).
	controlPlanes controlPlaneConfig
	trafficPolicy trafficPolicyConfig
	// Only, when not empty, names the scenarios to run (by Section ID, one
	// of ScenarioIDs); the others are reported as skipped.
	Only []string
}

// ScenarioIDs are the IDs Scenarios.Only accepts.
var ScenarioIDs = []string{"balance", "data-path", "data-path-stream", "ingress-rate", "latency-aware", "convergence", "control-plane-scale", "traffic-policy"}

// DefaultScenarios are the scenarios `ballast bench` runs, with every path
// known to this build.
func DefaultScenarios(quick bool) Scenarios {
	s := Scenarios{
		balance: balanceConfig{Calls: 3000, Pods: 3, Paths: []path{
			service(),
			clientSide("round_robin", "round_robin"),
			clientSide("ballast_p2c", "ballast_p2c"),
			clientSide("ballast_peak_ewma", "ballast_peak_ewma"),
			proxyless("round_robin"),
			sidecar("round_robin"),
			transparentSidecar("round_robin"),
			nginx(),
			haproxy(),
		}},
		dataPath: dataPathConfig{Calls: 100_000, Warmup: 2000, Concurrency: 16, Pods: 3, Turns: 40, Paths: []path{
			direct(), nginx(), haproxy(), sidecar("round_robin"), routedSidecar(), transparentSidecar("round_robin"),
			gatewayIngress(), nginxTLS(), haproxyTLS(), secondHaproxyTLS(),
		}},
		ingressRate: ingressRateConfig{Calls: 100_000, Turns: 500, Warmup: 4000, Concurrency: 16, Load: 0.5, InFlight: 64, Pods: 3, Paths: []path{
			direct(), gatewayIngress(), nginxTLS(), haproxyTLS(), secondHaproxyTLS(),
		}},
		latency: latencyConfig{Calls: 5000, Concurrency: 8, SlowDelay: 20 * time.Millisecond, Settle: 15 * time.Second, Paths: []path{
			clientSide("round_robin", "round_robin"),
			clientSide("ballast_p2c", "ballast_p2c"),
			clientSide("ballast_peak_ewma", "ballast_peak_ewma"),
			proxyless("peak_ewma"),
			sidecar("peak_ewma"),
			transparentSidecar("peak_ewma"),
		}},
		controlPlanes: controlPlaneConfig{
			ControlPlanes: []controlPlane{ballastControl{}, istiod{}},
			Scale: scaleConfig{
				// Pairs that differ in one dimension say how Ballast grows
				// with Services and with clients.
				Sizes: []scaleSize{{Services: 1000, Endpoints: 10, Clients: 100}, {Services: 5000, Endpoints: 10, Clients: 100},
					{Services: 5000, Endpoints: 10, Clients: 1000}, goalLargeSize},
				ChangesPerSecond:  50,
				Changes:           1000,
				ClientsPerService: 10,
				SyncTimeout:       2 * time.Minute,
				Drain:             15 * time.Second,
				LoneChanges:       10,
				LoneGap:           200 * time.Millisecond,
			},
			Convergence: convergenceConfig{Quiet: time.Second, Timeout: 30 * time.Second},
		},
		trafficPolicy: trafficPolicyConfig{Calls: 10_000, Concurrency: 8, RateWindow: 10 * time.Second},
	}
	if quick {
		s.controlPlanes.Scale.Sizes = s.controlPlanes.Scale.Sizes[:1]
		s.controlPlanes.Scale.Changes = 100
		s.controlPlanes.Scale.LoneChanges = 3
		s.balance.Calls = 300
		s.dataPath.Calls, s.dataPath.Warmup = 40_000, 1000
		s.ingressRate.Calls, s.ingressRate.Turns, s.ingressRate.Warmup = 20_000, 200, 2000
		s.latency.Calls, s.latency.Settle = 1500, 5*time.Second
		s.trafficPolicy.Calls, s.trafficPolicy.RateWindow = 2000, 2*time.Second
	}
	s.dataPathStream = s.dataPath
	s.dataPathStream.Stream = true
	// The routed sidecar's rules are for the unary calls' service.
	s.dataPathStream.Paths = slices.DeleteFunc(slices.Clone(s.dataPath.Paths), func(p path) bool { return p.Name() == routedSidecarName })
	return s
}

// Run runs every scenario and returns the report; a scenario that fails
// is recorded as such and the others still run.
func (b *Bench) Run(ctx context.Context, sc Scenarios) *Report {
	start := time.Now()
	r := &Report{Date: start.UTC(), Quick: b.opts.Quick, Runs: b.opts.Runs, Machine: thisMachine()}
	r.DataPath, r.Commit = stampOf()
	run := func(id, title string, scenario func() *Section) *Section {
		if !selected(sc.Only, id) {
			return notMeasured(id, title, "", "skipped in this run (--only)")
		}
		return scenario()
	}
	wantConv, wantScale := selected(sc.Only, "convergence"), selected(sc.Only, "control-plane-scale")
	var prepared *preparedAPI
	if wantConv || wantScale {
		// Scenario 1 counts calls, not time, so the API server of scenarios
		// 4 and 5 starts and fills up meanwhile; it is ready (and idle)
		// before the scenarios that time anything.
		prepared = b.prepareAPI(ctx, sc.controlPlanes.Scale)
		defer prepared.discard()
	}
	r.Sections = append(r.Sections, run("balance", "1. Balance", func() *Section { return b.balance(ctx, sc.balance) }))
	prepared.wait()
	r.Sections = append(r.Sections,
		run("data-path", "2. Data-path cost (unary)", func() *Section { return b.dataPath(ctx, sc.dataPath) }),
		run("data-path-stream", "2b. Data-path cost (streaming)", func() *Section { return b.dataPath(ctx, sc.dataPathStream) }),
		run("ingress-rate", "2c. TLS ingress latency at one offered rate (unary)", func() *Section { return b.ingressRate(ctx, sc.ingressRate) }),
		run("latency-aware", "3. Latency-aware balancing", func() *Section { return b.latency(ctx, sc.latency) }),
	)
	var conv, scale *Section
	if wantConv || wantScale {
		conv, scale = b.controlPlanes(ctx, sc.controlPlanes, wantConv, wantScale, prepared)
	}
	if conv == nil {
		conv = notMeasured("convergence", "4. Convergence", "", "skipped in this run (--only)")
	}
	if scale == nil {
		scale = notMeasured("control-plane-scale", "5. Control-plane scale", "", "skipped in this run (--only)")
	}
	r.Sections = append(r.Sections, conv, scale,
		run("traffic-policy", "6. Traffic policy", func() *Section { return b.trafficPolicy(ctx, sc.trafficPolicy) }))
	r.Machine.Peers = map[string]string{"nginx": peerVersion("nginx"), "haproxy": peerVersion("haproxy")}
	if v, ok := b.istiodVersion.Load().(string); ok {
		r.Machine.Peers["istiod"] = v
	}
	r.Machine.PeerInstall = b.peers.installed
	r.Machine.LoadEnd = loadAverage()
	r.Wall = time.Since(start)
	return r
}

func selected(only []string, id string) bool { return len(only) == 0 || slices.Contains(only, id) }

func notMeasured(id, title, description, why string) *Section {
	return &Section{ID: id, Title: title, Description: description, NotMeasured: why}
}
