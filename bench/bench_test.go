package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter"
)

// The test binary doubles as the greeter pod: with BENCH_TEST_GREETER set
// to "<addr> <pod> <delay>", it serves until SIGTERM instead of testing.
func TestMain(m *testing.M) {
	if spec := os.Getenv("BENCH_TEST_GREETER"); spec != "" {
		os.Exit(serveGreeter(spec))
	}
	code := m.Run()
	if builtBinaries.dir != "" {
		os.RemoveAll(builtBinaries.dir)
	}
	os.Exit(code)
}

func serveGreeter(spec string) int {
	var addr, pod string
	var delay time.Duration
	if _, err := fmt.Sscan(spec, &addr, &pod, &delay); err != nil {
		fmt.Fprintln(os.Stderr, "BENCH_TEST_GREETER:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := (&greeter.Server{Pod: pod, Delay: delay}).Serve(ctx, lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func testGreeter(addr, pod string, delay time.Duration) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("BENCH_TEST_GREETER=%s %s %s", addr, pod, delay))
	return cmd
}

func newTestBench(t *testing.T) *Bench {
	t.Helper()
	b, err := New(Options{Runs: 1, Greeter: testGreeter, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Close()
		// Every pod and peer the scenario started has been stopped.
		if tree, err := processTree(os.Getpid()); err != nil || len(tree) != 1 {
			t.Errorf("processes left behind: %v (%v)", tree, err)
		}
	})
	return b
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// lateTimer is a context whose deadline is d but whose Err stays nil, as
// a context's does between its deadline and its timer firing.
type lateTimerCtx struct {
	context.Context
	d time.Time
}

func lateTimer(d time.Time) context.Context { return lateTimerCtx{context.Background(), d} }

func (c lateTimerCtx) Deadline() (time.Time, bool) { return c.d, true }

func TestStopped(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want bool
	}{
		{"no deadline", context.Background(), false},
		{"cancelled", cancelled, true},
		{"deadline ahead", lateTimer(time.Now().Add(time.Hour)), false},
		{"deadline passed, its timer not fired", lateTimer(time.Now().Add(-time.Millisecond)), true},
	} {
		if got := stopped(tc.ctx); got != tc.want {
			t.Errorf("%s: stopped = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The load generator makes exactly the calls it is asked for, over one
// connection straight to the pods, and counts each pod's answers.
func TestLoadCountsCallsDirect(t *testing.T) {
	b := newTestBench(t)
	pods, err := startPods(context.Background(), b.opts.Greeter, []podSpec{{Name: "pod-a"}, {Name: "pod-b"}})
	if err != nil {
		t.Fatal(err)
	}
	defer stopPods(pods)
	route, err := direct().Open(context.Background(), b, pods)
	if err != nil {
		t.Fatal(err)
	}
	defer route.Close()
	conn, err := dial(route)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	res := load{Calls: 20, Concurrency: 4, Duration: time.Minute}.Run(context.Background(), conn)
	if res.Calls != 20 || res.Errors != 0 || len(res.Latencies) != 20 {
		t.Fatalf("calls %d errors %d (%s) latencies %d, want 20, 0, 20", res.Calls, res.Errors, res.LastError, len(res.Latencies))
	}
	answered := 0
	for pod, n := range res.Pods {
		if pod != "pod-a" && pod != "pod-b" {
			t.Errorf("answer from unknown pod %q", pod)
		}
		answered += n
	}
	if answered != 20 {
		t.Errorf("pods answered %d calls, want 20: %v", answered, res.Pods)
	}
	for i := 1; i < len(res.Latencies); i++ {
		if res.Latencies[i] < res.Latencies[i-1] {
			t.Fatal("latencies not sorted")
		}
	}

	// Paced: every call made and counted, each with how late it was sent.
	res = load{Calls: 20, Concurrency: 4, Duration: time.Minute, Rate: 2000}.Run(context.Background(), conn)
	if res.Calls != 20 || res.Errors != 0 || len(res.Latencies) != 20 || len(res.Lag) != 20 {
		t.Fatalf("paced: calls %d errors %d (%s) latencies %d lags %d, want 20, 0, 20, 20", res.Calls, res.Errors, res.LastError, len(res.Latencies), len(res.Lag))
	}

	// A caller whose deadline has passed, its timer not yet fired (late,
	// on a loaded machine): its calls would fail at once; none is made or
	// counted.
	for _, stream := range []bool{false, true} {
		res := load{Calls: 20, Concurrency: 4, Duration: time.Minute, Stream: stream}.Run(lateTimer(time.Now().Add(-time.Millisecond)), conn)
		if res.Errors != 0 {
			t.Fatalf("stream %v, the caller's deadline passed: %d of %d calls counted failed (%s), want none", stream, res.Errors, res.Calls, res.LastError)
		}
	}

	// The same on streams: 20 message round trips over 4 streams.
	res = load{Calls: 20, Concurrency: 4, Duration: time.Minute, Stream: true}.Run(context.Background(), conn)
	if res.Calls != 20 || res.Errors != 0 || len(res.Latencies) != 20 {
		t.Fatalf("stream: calls %d errors %d (%s) latencies %d, want 20, 0, 20", res.Calls, res.Errors, res.LastError, len(res.Latencies))
	}
	answered = 0
	for _, n := range res.Pods {
		answered += n
	}
	if answered != 20 || res.Pods[""] != 0 {
		t.Errorf("stream: pods answered %v, want 20 calls from named pods", res.Pods)
	}

	// Streams held in a set stay open from one run to the next: the
	// second run sends its round trips on the streams the first opened.
	set := &streamSet{}
	defer set.Close()
	var total loadResult
	for run := range 2 {
		res := load{Calls: 20, Concurrency: 4, Duration: time.Minute, Stream: true, Streams: set}.Run(context.Background(), conn)
		if res.Calls != 20 || res.Errors != 0 {
			t.Fatalf("held streams, run %d: calls %d errors %d (%s), want 20, 0", run, res.Calls, res.Errors, res.LastError)
		}
		total.merge(res)
	}
	// A worker that found no call left opened no stream: its slot may be
	// empty, or filled by this run; every stream open stays the same.
	opened := slices.Clone(set.held)
	if len(opened) != 4 || !slices.ContainsFunc(opened, func(h *heldStream) bool { return h != nil }) {
		t.Fatalf("held streams %v, want 4 slots, some open", opened)
	}
	load{Calls: 20, Concurrency: 4, Duration: time.Minute, Stream: true, Streams: set}.Run(context.Background(), conn)
	for i, h := range opened {
		if h != nil && set.held[i] != h {
			t.Errorf("worker %d's stream %p replaced by %p after another run, want it kept", i, h, set.held[i])
		}
	}
	if total.Calls != 40 || len(total.Latencies) != 40 || total.Pods["pod-a"]+total.Pods["pod-b"] != 40 {
		t.Errorf("two runs merged: %d calls, %d latencies, pods %v; want 40 of each", total.Calls, len(total.Latencies), total.Pods)
	}
	set.Close()
	if slices.ContainsFunc(set.held, func(h *heldStream) bool { return h != nil }) {
		t.Errorf("held streams after Close: %v, want none", set.held)
	}
}

// A tiny run of the scenarios fills every row it can and explains every
// row it cannot, and leaves no process behind.
func TestScenariosSmoke(t *testing.T) {
	b := newTestBench(t)
	ctx := context.Background()

	bal := b.balance(ctx, balanceConfig{Calls: 30, Pods: 3, Paths: []path{
		service(), clientSide("round_robin", "round_robin"), clientSide("nope", "no_such_policy"), sidecar("round_robin"),
	}})
	if bal.NotMeasured != "" {
		t.Fatal(bal.NotMeasured)
	}
	wantRows(t, bal, map[string]string{"plain Service (L4)": "", "round_robin": "", "nope": "pending: ", "sidecar (explicit listener)": "pending: "})
	if got := bal.find("plain Service (L4)").Values[colMaxMean]; len(got) != 1 || got[0] != 3 {
		t.Errorf("one connection through the plain Service: max/mean %v, want [3] (every call on one pod)", got)
	}

	dp := b.dataPath(ctx, dataPathConfig{Calls: 20, Warmup: 5, Concurrency: 4, Pods: 2, Paths: []path{direct()}})
	wantRows(t, dp, map[string]string{"direct": ""})
	// In turns, each path's turns add up to one value per run.
	dp = b.dataPath(ctx, dataPathConfig{Calls: 20, Warmup: 5, Concurrency: 4, Pods: 2, Paths: []path{direct(), clientSide("round_robin", "round_robin")}, Stream: true, Turns: 3})
	wantRows(t, dp, map[string]string{"direct": "", "round_robin": ""})
	for _, r := range dp.Rows {
		if got := r.Values[colErrors]; len(got) != 1 || got[0] != 0 {
			t.Errorf("%s errors %v, want [0]", r.Path, got)
		}
		if got := r.Values[colP99]; len(got) != 1 || !(got[0] > 0) {
			t.Errorf("%s p99 %v, want one value above 0", r.Path, got)
		}
	}

	lat := b.latency(ctx, latencyConfig{Calls: 20, Concurrency: 2, SlowDelay: time.Millisecond, Settle: 50 * time.Millisecond, Paths: []path{clientSide("round_robin", "round_robin")}})
	wantRows(t, lat, map[string]string{"round_robin": ""})
}

// Where nginx and haproxy are installed, both carry every call of a small
// balance run, spread over the pods.
func TestPeersCarryCalls(t *testing.T) {
	for _, bin := range []string{"nginx", "haproxy"} {
		if _, err := lookPeer(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	b := newTestBench(t)
	s := b.balance(context.Background(), balanceConfig{Calls: 30, Pods: 3, Paths: []path{nginx(), haproxy()}})
	wantRows(t, s, map[string]string{"nginx": "", "haproxy": ""})
	for _, r := range s.Rows {
		if errs := r.Values[colErrors]; len(errs) != 1 || errs[0] != 0 {
			t.Errorf("%s: errors %v, want [0]", r.Path, errs)
		}
		// Per-call round robin over 3 pods: 10 calls each.
		if mm := r.Values[colMaxMean]; len(mm) != 1 || mm[0] != 1 {
			t.Errorf("%s: max/mean %v, want [1] (%s)", r.Path, mm, r.Detail)
		}
	}
}

// wantRows checks each row's note starts as given ("" means the row has
// numbers and no note).
func wantRows(t *testing.T, s *Section, want map[string]string) {
	t.Helper()
	if s.NotMeasured != "" {
		t.Fatalf("%s not measured: %s", s.ID, s.NotMeasured)
	}
	if len(s.Rows) != len(want) {
		t.Errorf("%s: %d rows, want %d", s.ID, len(s.Rows), len(want))
	}
	for path, note := range want {
		r := s.find(path)
		switch {
		case r == nil:
			t.Errorf("%s: no row %q", s.ID, path)
		case note == "" && (r.Note != "" || len(r.Values) == 0):
			t.Errorf("%s: row %q has note %q and values %v, want numbers", s.ID, path, r.Note, r.Values)
		case note != "" && (len(r.Note) < len(note) || r.Note[:len(note)] != note):
			t.Errorf("%s: row %q note %q, want it to start %q", s.ID, path, r.Note, note)
		}
	}
}

// A run names every scenario: the ones asked for measured, the others
// skipped.
func TestRunReportsEveryScenario(t *testing.T) {
	b := newTestBench(t)
	r := b.Run(context.Background(), Scenarios{
		balance: balanceConfig{Calls: 10, Pods: 2, Paths: []path{clientSide("round_robin", "round_robin")}},
		Only:    []string{"balance"},
	})
	want := map[string]string{
		"balance":             "",
		"data-path":           "skipped",
		"data-path-stream":    "skipped",
		"ingress-rate":        "skipped",
		"latency-aware":       "skipped",
		"convergence":         "skipped",
		"control-plane-scale": "skipped",
		"traffic-policy":      "skipped",
	}
	if len(r.Sections) != len(want) {
		t.Errorf("%d sections, want %d", len(r.Sections), len(want))
	}
	for _, s := range r.Sections {
		w, ok := want[s.ID]
		switch {
		case !ok:
			t.Errorf("unexpected section %q", s.ID)
		case w == "" && s.NotMeasured != "":
			t.Errorf("%s not measured: %s", s.ID, s.NotMeasured)
		case w != "" && !strings.HasPrefix(s.NotMeasured, w):
			t.Errorf("%s: %q, want it to start %q", s.ID, s.NotMeasured, w)
		}
	}
	if r.Runs != 1 || r.Machine.Cores < 1 || r.Machine.GoVersion == "" || r.Wall <= 0 {
		t.Errorf("report header: runs %d, cores %d, go %q, wall %v", r.Runs, r.Machine.Cores, r.Machine.GoVersion, r.Wall)
	}
}

// Every path of the default scenarios carries a tiny load in each scenario
// that lists it, run from the binaries `ballast bench` runs, so the code
// behind every row of the report cannot rot: the sidecar both ways
// (explicit listener, iptables in a namespace), proxyless, the client-side
// policies and the peers. A row that cannot run here (not root, a peer
// missing) is logged; in CI, where the scripts install everything, it
// fails the test.
func TestEveryPathSmoke(t *testing.T) {
	b := newTestBench(t)
	b.opts.Binary = ballastBinary(t)
	b.opts.ProxyBinary = buildBinary(t, "ballast-proxy", true)
	b.opts.ControlBinary = buildBinary(t, "ballast-control", true)
	b.opts.GatewayBinary = buildBinary(t, "ballast-gateway", true)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	def := DefaultScenarios(true)

	bal := b.balance(ctx, balanceConfig{Calls: 30, Pods: 3, Paths: def.balance.Paths})
	for _, r := range measuredRows(t, bal, len(def.balance.Paths)) {
		want := 1.0 // 30 calls, per-call round robin over 3 pods: 10 each
		switch r.Path {
		case "plain Service (L4)":
			want = 3 // one connection, one pod
		case "ballast_p2c", "ballast_peak_ewma":
			continue // they spread by load, not in turn
		}
		if got := r.Values[colMaxMean]; len(got) != 1 || got[0] != want {
			t.Errorf("balance: %s: max/mean %v, want [%v] (%s)", r.Path, got, want, r.Detail)
		}
	}

	for _, stream := range []bool{false, true} {
		paths := def.dataPath.Paths
		if stream {
			paths = def.dataPathStream.Paths
		}
		dp := b.dataPath(ctx, dataPathConfig{Calls: 200, Warmup: 20, Concurrency: 4, Pods: 2, Paths: paths, Stream: stream, Turns: 2})
		for _, r := range measuredRows(t, dp, len(paths)) {
			if r.Path == "direct" {
				continue
			}
			// CPU is read in clock ticks, which a few hundred calls may
			// not reach: measured, but it may be 0.
			if v := r.Values[colCPU]; len(v) != 1 || v[0] < 0 {
				t.Errorf("%s: %s: %s %v, want one value, not negative", dp.ID, r.Path, colCPU, v)
			}
			for _, col := range []string{colRSSIdle, colAnonIdle, colRSSLoad} {
				if v := r.Values[col]; len(v) != 1 || !(v[0] > 0) {
					t.Errorf("%s: %s: %s %v, want one value above 0", dp.ID, r.Path, col, v)
				}
			}
		}
	}

	ir := b.ingressRate(ctx, ingressRateConfig{Calls: 100, Turns: 2, Warmup: 20, Concurrency: 4, Load: 0.5, InFlight: 8, Pods: 2, Paths: def.ingressRate.Paths})
	for _, r := range measuredRows(t, ir, len(def.ingressRate.Paths)) {
		if v := r.Values[colOffered]; len(v) != 1 || !(v[0] > 0) {
			t.Errorf("%s: %s: %s %v, want one value above 0", ir.ID, r.Path, colOffered, v)
		}
		for _, col := range []string{colCPU, colRunWait} {
			if v := r.Values[col]; r.Path != "direct" && (len(v) != 1 || v[0] < 0) {
				t.Errorf("%s: %s: %s %v, want one value, not negative", ir.ID, r.Path, col, v)
			}
		}
	}

	lat := b.latency(ctx, latencyConfig{Calls: 40, Concurrency: 2, SlowDelay: 5 * time.Millisecond, Settle: 100 * time.Millisecond, Paths: def.latency.Paths})
	measuredRows(t, lat, len(def.latency.Paths))
}

// measuredRows checks that s has n rows, each with numbers and no failed
// call, or else (outside CI) unavailable here, and returns the measured
// ones.
func measuredRows(t *testing.T, s *Section, n int) []*row {
	t.Helper()
	if s.NotMeasured != "" {
		t.Fatalf("%s not measured: %s", s.ID, s.NotMeasured)
	}
	if len(s.Rows) != n {
		t.Errorf("%s: %d rows, want %d", s.ID, len(s.Rows), n)
	}
	var measured []*row
	for _, r := range s.Rows {
		switch {
		case strings.HasPrefix(r.Note, "unavailable: ") && !inCI():
			t.Logf("%s: %s: %s", s.ID, r.Path, r.Note)
		case r.Note != "" || len(r.Values) == 0:
			t.Errorf("%s: %s: %q, want numbers", s.ID, r.Path, r.Note)
		default:
			if errs := r.Values[colErrors]; len(errs) != 1 || errs[0] != 0 {
				t.Errorf("%s: %s: errors %v, want [0]", s.ID, r.Path, errs)
			}
			measured = append(measured, r)
		}
	}
	return measured
}

// A namespace a benchmark that no longer runs left behind is deleted, with
// what still ran in it; one whose benchmark runs (this one's) is kept.
func TestSweepNetns(t *testing.T) {
	if err := needNetns(); err != nil {
		if inCI() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%s%d-1", netnsPrefix, gone.Process.Pid)
	if err := run(t.Context(), "ip", "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", stale).Run() })
	sleeper := exec.Command("ip", "netns", "exec", stale, "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	own, err := newNetns(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer own.close()

	swept, err := sweepNetns()
	if err != nil {
		t.Fatal(err)
	}
	if len(swept) != 1 || swept[0] != stale {
		t.Errorf("swept %v, want [%s]", swept, stale)
	}
	if _, err := os.Stat("/run/netns/" + stale); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", stale, err)
	}
	if _, err := os.Stat("/run/netns/" + own.name); err != nil {
		t.Errorf("this benchmark's own namespace %s was swept: %v", own.name, err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		sleeper.Process.Kill()
		t.Error("the process inside the stale namespace still runs")
	}
}
