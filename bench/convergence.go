package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/xds"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/greeter"
)

// convergenceConfig sizes scenario 4: per run and control plane, a real
// grpc-go xDS client calling greeter.bench through the control plane sees
// a third pod's endpoint added, then removed.
type convergenceConfig struct {
	// Quiet is how long a removed pod must go without a call before its
	// last call is taken as the last one (the client makes thousands of
	// calls a second, a third of them to the pod while it is listed).
	Quiet time.Duration
	// Timeout bounds each wait: for the first call to the new pod, for the
	// removed pod's calls to stop, for the client's first calls.
	Timeout time.Duration
}

func convergenceSection(c convergenceConfig) *Section {
	return &Section{
		ID:    "convergence",
		Title: "4. Convergence",
		Description: fmt.Sprintf("A real grpc-go xDS client (xds:///greeter.bench.svc.cluster.local:50051, round_robin) calls two greeter pods one call at a time, "+
			"through each control plane in turn, both watching the same kube-apiserver (with scenario 5's Services loaded). A third pod's EndpointSlice (ready) is "+
			"created: time from sending it to the API server to the first call the new pod answers. Then it is deleted: time from sending that to the last call "+
			"the pod answers (taken as the last once the pod has had no call for %s). Errors are failed calls during both. Pods listen on 127.0.0.x and are "+
			"published as 192.0.2.x (the API server refuses loopback endpoints); the client's dialer maps them back, so nothing leaves loopback.", c.Quiet),
		Columns: []column{{colFirstCall, "new pod → first call ms", 1}, {colLastCall, "removed pod → last call ms", 1}, {colErrors, "errors", 0}},
		Charts: []chart{
			{File: "bench-convergence-add.png", Column: colFirstCall, Title: "New ready pod → its first call", YLabel: "ms"},
			{File: "bench-convergence-remove.png", Column: colLastCall, Title: "Removed pod → its last call", YLabel: "ms"},
		},
	}
}

func convergenceHeadlines(s *Section) {
	s.ratio("new pod → first call, Ballast ÷ istiod", colFirstCall, "Ballast", "istiod", 0).Top = true
	s.ratio("removed pod → last call, Ballast ÷ istiod", colLastCall, "Ballast", "istiod", 0).Top = true
}

// The greeter Service of the convergence scenario, and the TEST-NET-1
// (RFC 5737) network its pods are published under.
var (
	convergenceNet = netip.MustParsePrefix("192.0.2.0/24")
)

const convergenceTarget = "xds:///greeter.bench.svc.cluster.local:50051"

// publishedAddr is the address a pod on 127.0.0.x is published under.
func publishedAddr(pod netip.Addr) netip.Addr {
	b := pod.As4()
	return netip.AddrFrom4([4]byte{192, 0, 2, b[3]})
}

// loopbackDial dials a published pod address on loopback, and refuses
// anything else: the benchmark never dials outside 127.0.0.0/8.
func loopbackDial(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !convergenceNet.Contains(ap.Addr()) {
		return nil, fmt.Errorf("bench dialer: refusing %s: not a published pod address (192.0.2.0/24)", addr)
	}
	b := ap.Addr().As4()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, b[3]}), ap.Port()).String())
}

func podSliceName(p *pod) string { return benchService + "-" + p.Name }

// publishPod creates the pod's own EndpointSlice (each pod listens on a
// port of its own, and a slice's ports apply to all of its endpoints).
func (a *apiServer) publishPod(ctx context.Context, p *pod) error {
	slice := endpointSlice(benchNamespace, podSliceName(p), benchService, int32(p.Addr.Port()),
		[]discoveryv1.Endpoint{readyEndpoint(publishedAddr(p.Addr.Addr()))})
	if _, err := a.client.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create endpointslice %s/%s: %w", benchNamespace, slice.Name, err)
	}
	return nil
}

func (a *apiServer) unpublishPod(ctx context.Context, p *pod) error {
	err := a.client.DiscoveryV1().EndpointSlices(benchNamespace).Delete(ctx, podSliceName(p), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete endpointslice %s/%s: %w", benchNamespace, podSliceName(p), err)
	}
	return nil
}

// setUpConvergence creates greeter.bench with pods[:2] published.
func (a *apiServer) setUpConvergence(ctx context.Context, pods []*pod) error {
	if err := a.ensureNamespace(ctx, benchNamespace); err != nil {
		return err
	}
	if _, err := a.client.CoreV1().Services(benchNamespace).Create(ctx, grpcService(benchNamespace, benchService, benchPort), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s/%s: %w", benchNamespace, benchService, err)
	}
	for _, p := range pods[:2] {
		if err := a.publishPod(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// callLog is what a client's calls saw: for each pod, when it last and
// first answered (after a mark), and the failures.
type callLog struct {
	mu     sync.Mutex
	since  time.Time
	first  map[string]time.Time
	last   map[string]time.Time
	calls  map[string]int
	errors int
	err    error
}

func newCallLog() *callLog { return &callLog{} }

// reset starts counting afresh from now.
func (l *callLog) reset() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.since = time.Now()
	l.first, l.last, l.calls = map[string]time.Time{}, map[string]time.Time{}, map[string]int{}
	return l.since
}

func (l *callLog) record(pod string, at time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errors++
		l.err = err
		return
	}
	if _, ok := l.first[pod]; !ok {
		l.first[pod] = at
	}
	l.last[pod] = at
	l.calls[pod]++
}

func (l *callLog) get(pod string) (first, last time.Time, calls int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first[pod], l.last[pod], l.calls[pod]
}

func (l *callLog) failures() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errors, l.err
}

// measureConvergence runs one measurement of scenario 4 against a started
// control plane and records it in row. pods[2] is the one added and
// removed.
func (b *Bench) measureConvergence(ctx context.Context, rc *runningControl, api *apiServer, c convergenceConfig, pods []*pod, row *row) error {
	bootstrap, err := rc.node("convergence-client", benchNamespace).bootstrap(rc.xds)
	if err != nil {
		return err
	}
	newPod := pods[2]
	// A measurement cut short leaves nothing published for the next.
	defer api.unpublishPod(context.WithoutCancel(ctx), newPod)
	builder, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		return fmt.Errorf("xds bootstrap: %w", err)
	}
	conn, err := grpc.NewClient(convergenceTarget, grpc.WithResolvers(builder), grpc.WithContextDialer(loopbackDial),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", convergenceTarget, err)
	}
	defer conn.Close()

	log := newCallLog()
	log.reset()
	callCtx, stopCalls := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopCalls()
		wg.Wait()
	}()
	wg.Go(func() { callLoop(callCtx, conn, log) })

	// Until both listed pods answer, the client is still starting.
	if err := waitFor(ctx, c.Timeout, func() bool {
		_, _, a := log.get(pods[0].Name)
		_, _, bb := log.get(pods[1].Name)
		return a > 0 && bb > 0
	}); err != nil {
		n, last := log.failures()
		return fmt.Errorf("calls through %s did not reach both pods within %s (%d failed, last: %v)", rc.name, c.Timeout, n, last)
	}

	t0 := log.reset()
	if err := api.publishPod(ctx, newPod); err != nil {
		return err
	}
	if err := waitFor(ctx, c.Timeout, func() bool { _, _, n := log.get(newPod.Name); return n > 0 }); err != nil {
		api.unpublishPod(ctx, newPod)
		return fmt.Errorf("the new pod had no call %s after it was published", c.Timeout)
	}
	first, _, _ := log.get(newPod.Name)
	// The pod is in the client's rotation; give it a few calls more.
	if err := waitFor(ctx, c.Timeout, func() bool { _, _, n := log.get(newPod.Name); return n >= 10 }); err != nil {
		api.unpublishPod(ctx, newPod)
		return fmt.Errorf("the new pod had fewer than 10 calls %s after it was published", c.Timeout)
	}
	addErrs, _ := log.failures()

	t1 := log.reset()
	if err := api.unpublishPod(ctx, newPod); err != nil {
		return err
	}
	if err := waitFor(ctx, c.Timeout, func() bool {
		_, last, _ := log.get(newPod.Name)
		return time.Since(maxTime(last, t1)) >= c.Quiet
	}); err != nil {
		return fmt.Errorf("the removed pod still had calls %s after it was removed", c.Timeout)
	}
	_, last, _ := log.get(newPod.Name)
	removeErrs, lastErr := log.failures()
	lastCall := time.Duration(0)
	if !last.IsZero() {
		lastCall = last.Sub(t1)
	}
	row.add(colFirstCall, ms(first.Sub(t0)))
	row.add(colLastCall, ms(lastCall))
	row.add(colErrors, float64(addErrs+removeErrs))
	line := fmt.Sprintf("convergence: %-8s new pod first call after %.1f ms, removed pod last call after %.1f ms, %d failed calls",
		rc.name, ms(first.Sub(t0)), ms(lastCall), addErrs+removeErrs)
	if lastErr != nil {
		line += fmt.Sprintf(" (last: %v)", lastErr)
	}
	b.progress("%s", line)
	return nil
}

// callLoop makes SayHello calls one after another until ctx ends,
// recording which pod answered each and when.
func callLoop(ctx context.Context, conn *grpc.ClientConn, log *callLog) {
	client := pb.NewGreeterClient(conn)
	req := &pb.HelloRequest{Name: "convergence"}
	for ctx.Err() == nil {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		reply, err := client.SayHello(callCtx, req, grpc.WaitForReady(true))
		cancel()
		if ctx.Err() != nil {
			return
		}
		log.record(greeter.PodOf(reply.GetMessage()), time.Now(), err)
		if err != nil {
			// A failing path fails fast: pace the retries.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// waitFor polls cond every millisecond until it holds, timeout passes or
// ctx ends.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
