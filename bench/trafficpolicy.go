package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
	ballastxds "github.com/ballast-dev/ballast/xds"
)

// trafficPolicyConfig sizes scenario 6: the same calls to one Service with
// a TrafficPolicy and to another without, on the same three pods, in every
// mode.
type trafficPolicyConfig struct {
	// Calls is how many calls measure the retries and the fault abort,
	// Concurrency at a time.
	Calls, Concurrency int
	// RateWindow is how long the rate limit is measured.
	RateWindow time.Duration
}

// The methods of the scenario's pods, one per policy: each is a rule of
// the GRPCRoute of the Service with policies, and the TrafficPolicy
// attached to that rule (by sectionName) is the field measured.
var policyMethods = []struct{ method, spec string }{
	{"Flaky", "retry: {codes: [Unavailable], attempts: 2, budget: {percent: 20, interval: 10s}}"},
	{"Slow", "timeouts: {request: 200ms}"},
	{"Limited", "rateLimit: {requestsPerSecond: 100, burst: 50}"},
	{"Faulty", "fault: {abort: {code: Unavailable, percent: 10}}"},
}

const (
	// policyGRPCService is the gRPC service of the pods' methods.
	policyGRPCService = "ballast.bench.Policy"
	// plainService is the Service on the same pods without policies.
	plainService   = "plain"
	plainClusterIP = "127.0.0.11"
	// slowDelay is how long the pods take to answer Slow.
	slowDelay = time.Second

	colFlakyErrors = "flaky_errors_pct"
	colRetryPct    = "retries_pct"
	colSlowMS      = "slow_ms"
	colLimitedRPS  = "limited_rps"
	colAbortPct    = "abort_pct"
)

func policyMethod(m string) string { return "/" + policyGRPCService + "/" + m }

// policyPod is a pod of scenario 6, served in the benchmark's process: it
// counts the tries of Flaky that reach it, which the retries are measured
// by, and the flaky one fails 3 in 10 of them with UNAVAILABLE (every
// 10 tries in a row, exactly 3). It takes no CPU measurement, so it need
// not be a process of its own.
type policyPod struct {
	pod   *pod
	flaky bool
	tries atomic.Int64
	srv   *grpc.Server
}

func (p *policyPod) handle(_ any, stream grpc.ServerStream) error {
	if err := stream.RecvMsg(new(emptypb.Empty)); err != nil {
		return err
	}
	method, _ := grpc.MethodFromServerStream(stream)
	switch method {
	case policyMethod("Flaky"):
		if n := p.tries.Add(1); p.flaky && n*3/10 != (n-1)*3/10 {
			return status.Errorf(codes.Unavailable, "%s fails 3 calls in 10 (the benchmark's flaky pod)", p.pod.Name)
		}
	case policyMethod("Slow"):
		t := time.NewTimer(slowDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
	return stream.SendMsg(&emptypb.Empty{})
}

// startPolicyPods serves pod-a, pod-b and pod-flaky on 127.0.0.20-22.
func startPolicyPods() ([]*policyPod, error) {
	var out []*policyPod
	for i, name := range []string{"pod-a", "pod-b", "pod-flaky"} {
		lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", 20+i))
		if err != nil {
			stopPolicyPods(out)
			return nil, fmt.Errorf("pod %s: %w", name, err)
		}
		p := &policyPod{pod: &pod{Name: name, Addr: netip.MustParseAddrPort(lis.Addr().String())}, flaky: name == "pod-flaky"}
		p.srv = grpc.NewServer(grpc.UnknownServiceHandler(p.handle))
		go p.srv.Serve(lis)
		out = append(out, p)
	}
	return out, nil
}

func stopPolicyPods(pods []*policyPod) {
	for _, p := range pods {
		p.srv.Stop()
	}
}

// policyManifests is the Service plain.bench on pods, the GRPCRoute
// "policy" of greeter.bench with a rule per method, and a TrafficPolicy
// on each rule.
func policyManifests(pods []*pod) ([]byte, error) {
	plain, err := namedServiceManifest(plainService, pods, plainClusterIP)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.Write(plain)
	fmt.Fprintf(&b, `
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: policy, namespace: %s}
spec:
  parentRefs: [{group: "", kind: Service, name: %s, port: %d}]
  rules:
`, benchNamespace, benchService, benchPort)
	// The rest (the sidecar's readiness check calls SayHello) go to the
	// same pods, without a policy.
	fmt.Fprintf(&b, "  - name: rest\n    backendRefs: [{name: %s, port: %d}]\n", benchService, benchPort)
	for _, m := range policyMethods {
		fmt.Fprintf(&b, "  - name: %s\n    matches: [{method: {service: %s, method: %s}}]\n    backendRefs: [{name: %s, port: %d}]\n",
			strings.ToLower(m.method), policyGRPCService, m.method, benchService, benchPort)
	}
	for _, m := range policyMethods {
		fmt.Fprintf(&b, `---
apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: %s, namespace: %s}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GRPCRoute, name: policy, sectionName: %s}]
  %s
`, strings.ToLower(m.method), benchNamespace, strings.ToLower(m.method), m.spec)
	}
	return []byte(b.String()), nil
}

// policyMode is one mode's two connections: to the Service with the
// policies and to the one without.
type policyMode struct {
	name          string
	policy, plain *grpc.ClientConn
}

// trafficPolicy is scenario 6: each field of a TrafficPolicy measured in
// every mode, next to the same calls to a Service without it.
func (b *Bench) trafficPolicy(ctx context.Context, c trafficPolicyConfig) *Section {
	s := &Section{
		ID:    "traffic-policy",
		Title: "6. Traffic policy",
		Description: fmt.Sprintf("Three pods serve two Services: greeter, whose GRPCRoute has a rule per method with a TrafficPolicy on each "+
			"(\"TrafficPolicy\" rows), and plain, the same pods without either (\"no policy\" rows); the same calls go to both, "+
			"in each mode, in the same run. The pods run in the benchmark's process and count the tries that reach them. "+
			"Flaky: pod-flaky answers UNAVAILABLE to 3 of every 10 tries; policy `%s`; %d calls, %d at a time: the calls that failed, "+
			"and the retries (tries that reached the pods beyond one per call) as a share of calls. "+
			"Slow: the pods answer after %s; policy `%s`; 3 calls at once with a 5 s deadline of their own: the median time to their end "+
			"(the policy's calls end DEADLINE_EXCEEDED, target 200 ms ± 20%%). "+
			"Limited: policy `%s`; two callers, each making a call every 2 ms, for %s after the bucket is emptied: calls let through per second "+
			"(target 100 ± 5%%). Faulty: policy `%s`; %d calls: the share failed (target 10 ± 2%%). "+
			"Which mode honours which field is docs/policy.md's table: proxyless gRPC has no retry budget and no rate limit, so its rows show none. "+
			"Targets below are upper bounds; the lower ones are in the table.",
			policyMethods[0].spec, c.Calls, c.Concurrency, slowDelay, policyMethods[1].spec, policyMethods[2].spec, c.RateWindow,
			policyMethods[3].spec, c.Calls),
		Columns: []column{
			{colFlakyErrors, "Flaky errors %", 2}, {colRetryPct, "retries % of calls", 1}, {colSlowMS, "Slow ms", 0},
			{colLimitedRPS, "Limited calls/s", 1}, {colAbortPct, "Faulty failed %", 1},
		},
	}
	modeNames := []string{"library", "proxyless xDS", sidecarName("round_robin", explicitListener)}
	for _, m := range modeNames {
		s.row(m + ", no policy")
		s.row(m + ", TrafficPolicy")
	}
	notMeasuredYet := func(why string) *Section {
		for _, r := range s.Rows {
			r.Note = why
		}
		return s
	}
	b.progress("%s: starting 3 pods", s.ID)
	ppods, err := startPolicyPods()
	if err != nil {
		s.NotMeasured = "failed: " + err.Error()
		return s
	}
	defer stopPolicyPods(ppods)
	pods := make([]*pod, len(ppods))
	for i, p := range ppods {
		pods[i] = p.pod
	}
	tries := func() (n int64) {
		for _, p := range ppods {
			n += p.tries.Load()
		}
		return n
	}
	extra, err := policyManifests(pods)
	if err != nil {
		return notMeasuredYet("failed: " + err.Error())
	}

	var modes []policyMode
	defer func() {
		for _, m := range modes {
			m.policy.Close()
			m.plain.Close()
		}
	}()
	addMode := func(name, policyTarget, plainTarget string, opts ...grpc.DialOption) error {
		opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
		pc, err := grpc.NewClient(policyTarget, opts...)
		if err != nil {
			return err
		}
		nc, err := grpc.NewClient(plainTarget, opts...)
		if err != nil {
			pc.Close()
			return err
		}
		modes = append(modes, policyMode{name: name, policy: pc, plain: nc})
		return nil
	}
	note := func(mode string, err error) {
		for _, r := range s.Rows {
			if strings.HasPrefix(r.Path, mode+", ") {
				r.Note = whyNot(err)
			}
		}
		b.progress("%s: %s: %v", s.ID, mode, err)
	}

	// The library reads the same manifests the control plane does.
	if err := func() error {
		dir, err := os.MkdirTemp(b.dir, "library-")
		if err != nil {
			return err
		}
		svc, err := serviceManifest(pods, defaultClusterIP)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "greeter.yaml"), svc, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), extra, 0o644); err != nil {
			return err
		}
		reg := discovery.NewRegistry()
		if err := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)}).Load(); err != nil {
			return err
		}
		// round_robin, as in the other modes, for the Service without a
		// route (grpc-go's default is pick_first).
		opts := append(kubernetes.DialOptions(reg), grpc.WithDefaultServiceConfig(policy.RoundRobin.ServiceConfig()))
		return addMode(modeNames[0], fmt.Sprintf("kubernetes:///%s.%s:%d", benchService, benchNamespace, benchPort),
			fmt.Sprintf("kubernetes:///%s.%s:%d", plainService, benchNamespace, benchPort), opts...)
	}(); err != nil {
		note(modeNames[0], err)
	}

	// One control plane feeds the proxyless client and the sidecar.
	control, err := b.startControl(ctx, nil, pods, "round_robin", defaultClusterIP, extra)
	if err != nil {
		note(modeNames[1], err)
		note(modeNames[2], err)
	} else {
		defer control.proc.stop()
		if err := func() error {
			bootstrap, err := ballastxds.Bootstrap{Server: control.xds.String(), Pod: "bench-policy-client", Namespace: benchNamespace}.JSON()
			if err != nil {
				return err
			}
			builder, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
			if err != nil {
				return fmt.Errorf("xds bootstrap: %w", err)
			}
			return addMode(modeNames[1], fmt.Sprintf("xds:///%s.%s:%d", benchService, benchNamespace, benchPort),
				fmt.Sprintf("xds:///%s.%s:%d", plainService, benchNamespace, benchPort), grpc.WithResolvers(builder))
		}(); err != nil {
			note(modeNames[1], err)
		}
		if err := b.hasCommand("proxy", "the sidecar proxy (issue 5)"); err != nil {
			note(modeNames[2], err)
		} else if proc, ports, err := b.startSidecar(ctx, control, plainService); err != nil {
			note(modeNames[2], err)
		} else {
			defer proc.stop()
			if err := addMode(modeNames[2], "passthrough:///"+ports[0].String(), "passthrough:///"+ports[2].String()); err != nil {
				note(modeNames[2], err)
			}
		}
	}

	for run := 1; run <= b.opts.Runs && ctx.Err() == nil; run++ {
		for _, m := range modes {
			for _, v := range []struct {
				row  *row
				conn *grpc.ClientConn
			}{{s.row(m.name + ", no policy"), m.plain}, {s.row(m.name + ", TrafficPolicy"), m.policy}} {
				if v.row.Note != "" {
					continue
				}
				if err := b.measurePolicy(ctx, c, v.row, v.conn, tries); err != nil {
					v.row.Note = "failed: " + err.Error()
					v.row.Values = nil
					b.progress("%s: %s: %s", s.ID, v.row.Path, v.row.Note)
					continue
				}
				b.progress("%s run %d/%d: %-45s Flaky errors %.2f%%, retries %.1f%%; Slow %.0f ms; Limited %.1f/s; Faulty %.1f%%", s.ID, run, b.opts.Runs, v.row.Path,
					last(v.row, colFlakyErrors), last(v.row, colRetryPct), last(v.row, colSlowMS), last(v.row, colLimitedRPS), last(v.row, colAbortPct))
			}
		}
	}
	for i, m := range modeNames {
		row := m + ", TrafficPolicy"
		s.value(row+": Flaky errors % with retry", colFlakyErrors, row, goalRetryErrorsPct).Top = true
		if i != 1 { // proxyless gRPC has no retry budget and no rate limit
			s.value(row+": retries % of calls (budget 20%)", colRetryPct, row, goalRetryBudgetPct)
		}
		s.value(row+": Slow ms under timeouts.request 200ms", colSlowMS, row, goalTimeoutMS)
		if i != 1 {
			s.value(row+": Limited calls/s under 100 rps", colLimitedRPS, row, goalRateLimitRPS)
		}
		s.value(row+": Faulty failed % under a 10% abort", colAbortPct, row, goalFaultAbortPct)
	}
	for _, h := range s.Headlines {
		h.Digits = 1
		if strings.Contains(h.Text, "errors %") {
			h.Digits = 2
		}
	}
	return s
}

// last is a row's latest value of column.
func last(r *row, column string) float64 {
	vs := r.Values[column]
	if len(vs) == 0 {
		return 0
	}
	return vs[len(vs)-1]
}

// measurePolicy makes one run's calls of every method over conn and adds
// their numbers to row.
func (b *Bench) measurePolicy(ctx context.Context, c trafficPolicyConfig, row *row, conn *grpc.ClientConn, tries func() int64) error {
	// Up: every pod answered, so the first measured calls do not wait
	// for connections.
	if got := callPolicy(ctx, conn, policyMethod("Faulty"), 30, 3, 0); got.ok == 0 {
		return fmt.Errorf("no call to %s succeeded: %v", conn.Target(), got.last)
	}

	before := tries()
	flaky := callPolicy(ctx, conn, policyMethod("Flaky"), c.Calls, c.Concurrency, 0)
	if flaky.ok == 0 {
		return fmt.Errorf("every Flaky call failed: %v", flaky.last)
	}
	row.add(colFlakyErrors, 100*float64(flaky.calls-flaky.ok)/float64(flaky.calls))
	row.add(colRetryPct, 100*float64(tries()-before-int64(flaky.calls))/float64(flaky.calls))

	var took []time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			start := time.Now()
			conn.Invoke(callCtx, policyMethod("Slow"), &emptypb.Empty{}, &emptypb.Empty{})
			mu.Lock()
			took = append(took, time.Since(start))
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(took)
	row.add(colSlowMS, ms(took[1]))

	// The bucket starts empty: a call over the limit has been refused
	// (none is, without one, within 400 calls). Its burst is what a
	// caller stalled by a busy machine does not lose, not calls counted.
	for range 8 {
		if got := callPolicy(ctx, conn, policyMethod("Limited"), 50, 4, 0); status.Code(got.last) == codes.ResourceExhausted {
			break
		}
	}
	limited := callPolicy(ctx, conn, policyMethod("Limited"), -1, 2, c.RateWindow)
	row.add(colLimitedRPS, float64(limited.ok)/limited.elapsed.Seconds())

	faulty := callPolicy(ctx, conn, policyMethod("Faulty"), c.Calls, c.Concurrency, 0)
	row.add(colAbortPct, 100*float64(faulty.calls-faulty.ok)/float64(faulty.calls))
	return ctx.Err()
}

// policyCalls is how a batch of calls ended.
type policyCalls struct {
	calls, ok int
	last      error
	elapsed   time.Duration
}

// callPolicy calls method over conn, workers at a time: calls in all, or,
// when paced is above zero, for that long with each worker making a call
// at most every 2 ms (calls is then ignored).
func callPolicy(ctx context.Context, conn *grpc.ClientConn, method string, calls, workers int, paced time.Duration) policyCalls {
	var (
		mu   sync.Mutex
		out  policyCalls
		next atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(paced)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if paced > 0 && !time.Now().Before(end) || paced <= 0 && next.Add(1) > int64(calls) {
					return
				}
				callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := conn.Invoke(callCtx, method, &emptypb.Empty{}, &emptypb.Empty{})
				cancel()
				mu.Lock()
				out.calls++
				if err == nil {
					out.ok++
				} else {
					out.last = err
				}
				mu.Unlock()
				if paced > 0 {
					time.Sleep(2 * time.Millisecond) // pacing the offered load
				}
			}
		})
	}
	wg.Wait()
	out.elapsed = time.Since(start)
	return out
}
