package bench

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-dev/ballast/devcluster"
)

// ReliabilityConfig sizes the reliability scenario: one dev cluster, one
// greeter Deployment, one client pod per mode, each under steady load from
// the benchmark while the faults happen one after another.
type ReliabilityConfig struct {
	// Replicas is the greeter Deployment's size; ScaleTo the size the
	// scale fault grows it to (and back).
	Replicas, ScaleTo int
	// Pace: each mode's client makes one call per Pace, one at a time.
	Pace time.Duration
	// Down is how long the control plane and the API server stay down.
	Down time.Duration
	// Quiet is the load kept on after each fault, before the next: calls
	// that fail because of a fault may come after it ended.
	Quiet time.Duration
	// Bound is how long after Quiet a fault waits for every mode to use
	// the new state; "never" in the report means not within it. Longer
	// than grpc-go's reconnect backoff cap (120 s), which a client of a
	// control plane that was away may be waiting out.
	Bound time.Duration
	// Wait bounds every wait for the cluster (rollouts, readiness).
	Wait time.Duration
	// Faults are the faults to run, in order (reliabilityFaults' IDs).
	Faults []string
}

// ReliabilityID is the --only ID of the reliability scenario, which runs
// on its own (Bench.Reliability), not with the others.
const ReliabilityID = "reliability"

// DefaultReliability is the full scenario, or with ci a short one that
// runs every fault in a few minutes.
func DefaultReliability(ci bool) ReliabilityConfig {
	c := ReliabilityConfig{Replicas: 3, ScaleTo: 10, Pace: 20 * time.Millisecond, Down: 60 * time.Second,
		Quiet: 10 * time.Second, Bound: 150 * time.Second, Wait: 3 * time.Minute, Faults: FaultIDs()}
	if ci {
		c.ScaleTo, c.Down, c.Quiet, c.Bound, c.Pace = 5, 5*time.Second, 3*time.Second, 5*time.Second, 50*time.Millisecond
	}
	return c
}

// A relMode is one way the client pod reaches the greeters.
type relMode struct {
	// Name is the row's label; Pod the client pod.
	Name, Pod string
	// Target is the client's --target; Args more arguments.
	Target string
	Args   []string
	// Ballast says whether it is one of Ballast's modes, whose goals
	// apply; Proxyless gives the pod an xDS bootstrap, Sidecar injects
	// the proxy, Discovery grants its ServiceAccount the reads of the
	// kubernetes:/// resolver.
	Ballast, Proxyless, Sidecar, Discovery bool
	// PerConnection: the mode balances once per connection (the plain
	// Service) and is not waited for to use a new pod: it never will.
	PerConnection bool
	// Greeters is the app label of the pods the mode calls; empty means
	// the greeter Deployment's (relService).
	Greeters string
	// OnlyIn, when set, is the one fault the mode is measured in: its
	// greeters are not the ones the other faults change.
	OnlyIn string
}

// greeters is the app label of the pods m calls.
func (m relMode) greeters() string { return cmp.Or(m.Greeters, relService) }

// measuredIn reports whether m has a row in fault id's table.
func (m relMode) measuredIn(id string) bool { return m.OnlyIn == "" || m.OnlyIn == id }

const (
	relNamespace = "reliability"
	relService   = "greeter"
	relHeadless  = "greeter-headless"
	// relMeshed are greeters served through their own injected sidecar
	// (inbound capture), the server side of fault 6b.
	relMeshed = "greeter-meshed"
)

func relModes() []relMode {
	svc := fmt.Sprintf("%s.%s.svc.cluster.local:50051", relService, relNamespace)
	return []relMode{
		{Name: "client-side (kubernetes:///)", Pod: "client-kubernetes", Target: fmt.Sprintf("kubernetes:///%s.%s:50051", relService, relNamespace), Ballast: true, Discovery: true},
		{Name: "proxyless (xds:///)", Pod: "client-xds", Target: fmt.Sprintf("xds:///%s.%s:50051", relService, relNamespace), Ballast: true, Proxyless: true},
		{Name: "sidecar (iptables)", Pod: "client-sidecar", Target: svc, Ballast: true, Sidecar: true},
		{Name: "plain Service (L4)", Pod: "client-plain", Target: svc, PerConnection: true},
		{Name: "headless + dns:/// round_robin", Pod: "client-dns", Target: fmt.Sprintf("dns:///%s.%s.svc.cluster.local:50051", relHeadless, relNamespace),
			Args: []string{"--lb-policy", "round_robin"}},
		{Name: "sidecar → sidecar-served greeters", Pod: "client-meshed", Target: fmt.Sprintf("%s.%s.svc.cluster.local:50051", relMeshed, relNamespace),
			Ballast: true, Sidecar: true, Greeters: relMeshed, OnlyIn: "server-sidecar-restart"},
	}
}

// call is one call a mode's client made: when it started and ended, the
// pod that answered it, or why it failed.
type call struct {
	Start, End time.Time
	Pod        string
	Err        string
}

// relLoad drives one call at a time per mode through each client pod's
// /grpc_client, bounded in count and time, and keeps every call.
type relLoad struct {
	mu      sync.Mutex
	calls   map[string][]call // mode → calls in order
	clients map[string]*atomic.Pointer[http.Client]
	cancel  context.CancelFunc
	done    chan struct{}
}

// startLoad starts the load on every mode; it stops at stop, ctx's end,
// after maxFor, or after maxCalls calls of a mode.
func startRelLoad(ctx context.Context, clients map[string]*http.Client, pace, maxFor time.Duration) *relLoad {
	ctx, cancel := context.WithTimeout(ctx, maxFor)
	l := &relLoad{calls: map[string][]call{}, clients: map[string]*atomic.Pointer[http.Client]{}, cancel: cancel, done: make(chan struct{})}
	maxCalls := int(maxFor/pace) + 1
	var wg sync.WaitGroup
	for mode, hc := range clients {
		client := new(atomic.Pointer[http.Client])
		client.Store(hc)
		l.clients[mode] = client
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(pace)
			defer tick.Stop()
			for range maxCalls {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				c := call{Start: time.Now()}
				callCtx, cancelCall := context.WithTimeout(ctx, 5*time.Second)
				pod, err := devcluster.Greet(callCtx, client.Load())
				cancelCall()
				if ctx.Err() != nil {
					return // cut short by the end of the load: not a failed call
				}
				c.End, c.Pod = time.Now(), pod
				if err != nil {
					c.Err = err.Error()
				}
				l.mu.Lock()
				l.calls[mode] = append(l.calls[mode], c)
				l.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// switchClient sends a mode's next calls through hc: the mode's client
// pod replaced by a new one, as a rolling update of its workload moves
// traffic to the new pod once it is Ready.
func (l *relLoad) switchClient(mode string, hc *http.Client) {
	l.clients[mode].Store(hc)
}

func (l *relLoad) stop() {
	l.cancel()
	<-l.done
}

// snapshot is a copy of a mode's calls so far.
func (l *relLoad) snapshot(mode string) []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls[mode])
}

// firstCallTo is the start of the first call at or after from that pod
// answered; zero if none has.
func firstCallTo(calls []call, pod string, from time.Time) time.Time {
	for _, c := range calls {
		if c.Pod == pod && c.Err == "" && !c.Start.Before(from) {
			return c.Start
		}
	}
	return time.Time{}
}

// firstOK is the start of the first successful call at or after from.
func firstOK(calls []call, from time.Time) time.Time {
	for _, c := range calls {
		if c.Err == "" && !c.Start.Before(from) {
			return c.Start
		}
	}
	return time.Time{}
}

// window counts the calls that started in [from, to) and those of them
// that failed, with the first failure's error.
func window(calls []call, from, to time.Time) (n, failed int, firstErr string) {
	for _, c := range calls {
		if c.Start.Before(from) || !c.Start.Before(to) {
			continue
		}
		n++
		if c.Err != "" {
			failed++
			if firstErr == "" {
				firstErr = c.Err
			}
		}
	}
	return n, failed, firstErr
}

// fault is one fault of the scenario.
type fault struct {
	ID, Title string
	// Goal says the fault's goal for Ballast's modes: no failed call.
	ZeroGoal bool
	// Converge says what "time until the new state is used" measures for
	// this fault, for the report.
	Converge string
	run      func(ctx context.Context, r *relRun) (*faultOutcome, error)
}

// faultOutcome is what a fault did, for the measures: its window, and
// what the new state is that the modes should come to use.
type faultOutcome struct {
	Start, End time.Time
	// Since is when the new state was there to use (a new pod ready, the
	// control plane back); NewPods are the pods each mode should come to
	// call. Recover, instead, measures the first successful call after
	// Since. None of these: no convergence measure.
	Since   time.Time
	NewPods []string
	Recover bool
	// Hurt, instead, measures until the end of the last failed call
	// since Start: how long the fault hurt the mode's clients; never if
	// the mode still fails calls at the end of the wait.
	Hurt bool
	// ReadyAt, for a pod in it, is when it turned Ready again (a restart
	// the pod watch may not see as a transition).
	ReadyAt map[string]time.Time
	// Modes limits the convergence measure to these modes (nil: all).
	Modes []string
	Note  string
}

// FaultIDs are the IDs of the reliability scenario's faults, in the order
// they run.
func FaultIDs() []string {
	var ids []string
	for _, f := range reliabilityFaults() {
		ids = append(ids, f.ID)
	}
	return ids
}

// relCell formats a time until the new state was used.
func relCell(d time.Duration, ok bool) string {
	if !ok {
		return "never"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}
