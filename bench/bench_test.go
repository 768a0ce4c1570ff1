package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
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
	os.Exit(m.Run())
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
	wantRows(t, bal, map[string]string{"plain Service (L4)": "", "round_robin": "", "nope": "pending: ", "sidecar": "pending: "})
	if got := bal.find("plain Service (L4)").Values[colMaxMean]; len(got) != 1 || got[0] != 3 {
		t.Errorf("one connection through the plain Service: max/mean %v, want [3] (every call on one pod)", got)
	}

	dp := b.dataPath(ctx, dataPathConfig{Calls: 20, Warmup: 5, Concurrency: 4, Pods: 2, Paths: []path{direct()}})
	wantRows(t, dp, map[string]string{"direct": ""})
	dp = b.dataPath(ctx, dataPathConfig{Calls: 20, Warmup: 5, Concurrency: 4, Pods: 2, Paths: []path{direct()}, Stream: true})
	wantRows(t, dp, map[string]string{"direct": ""})
	if got := dp.find("direct").Values[colErrors]; len(got) != 1 || got[0] != 0 {
		t.Errorf("direct errors %v, want [0]", got)
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
		"latency-aware":       "skipped",
		"convergence":         "skipped",
		"control-plane-scale": "skipped",
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
