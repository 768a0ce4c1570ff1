package kube_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
	"github.com/ballast-dev/ballast/internal/testapi"
)

// env is the one API server (and etcd) shared by this package's tests; each
// test works in a namespace of its own.
var env *testapi.Env

func TestMain(m *testing.M) {
	testapi.Main(m, "discovery/kube", &env)
}

// waitTimeout bounds every wait for convergence; a healthy run takes far less.
const waitTimeout = 60 * time.Second

func ptr[T any](v T) *T { return &v }

// run starts a Source on client for namespace ns and stops it, checking that
// it returns and leaves no goroutine behind, when the test ends.
func run(t *testing.T, cfg *rest.Config, ns string) (*discovery.Registry, *kube.Source) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := discovery.NewRegistry()
	src := kube.New(cfg, reg, kube.Options{Namespace: ns, Logger: log})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("Run did not return within %v of its context ending", waitTimeout)
		}
		goleak.VerifyNone(t, ignore,
			// Keep-alive connections of HTTP clients outlive any one test.
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*http2ClientConn).readLoop"),
			// The test's proxy stops in its own cleanup, after this one.
			goleak.IgnoreAnyFunction("github.com/ballast-dev/ballast/discovery/kube_test.(*cuttableProxy).serve"),
			goleak.IgnoreAnyFunction("github.com/ballast-dev/ballast/discovery/kube_test.(*cuttableProxy).pipe"),
		)
	})
	return reg, src
}

// await waits until check passes, re-checking whenever the registry changes.
func await(t *testing.T, reg *discovery.Registry, what string, check func() error) {
	t.Helper()
	sub := reg.Subscribe()
	defer sub.Close()
	deadline := time.After(waitTimeout)
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-sub.C():
			sub.Drain()
		case <-deadline:
			t.Fatalf("%s: not reached within %v: %v", what, waitTimeout, err)
		}
	}
}

// ignoreClusterIPs leaves the API server's allocation out of comparisons.
var ignoreClusterIPs = cmp.Options{
	cmpopts.IgnoreFields(discovery.Service{}, "ClusterIPs"),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
}

func hasSnapshot(reg *discovery.Registry, want *discovery.Service) func() error {
	return func() error {
		got, ok := reg.Get(want.Key)
		if !ok {
			return fmt.Errorf("service %s not in registry", want.Key)
		}
		if diff := cmp.Diff(want, got, ignoreClusterIPs); diff != "" {
			return fmt.Errorf("snapshot mismatch (-want +got):\n%s", diff)
		}
		return nil
	}
}

func absent(reg *discovery.Registry, k discovery.Key) func() error {
	return func() error {
		if _, ok := reg.Get(k); ok {
			return fmt.Errorf("service %s still in registry", k)
		}
		return nil
	}
}

// greeterService has a named targetPort, resolved per EndpointSlice.
func greeterService(ns string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "greeter"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "grpc", Port: 80, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP},
			{Name: "metrics", Port: 9090, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP},
		}},
	}
}

type conds struct{ ready, serving, terminating bool }

var (
	up       = conds{ready: true, serving: true}
	down     = conds{}
	draining = conds{serving: true, terminating: true}
)

// endpoints maps address → conditions.
type endpoints map[string]conds

// endpointSlice makes a slice of ns/greeter whose grpc port is grpcPort.
// Addresses are only data in the API: nothing dials them.
func endpointSlice(ns, name string, at discoveryv1.AddressType, grpcPort int32, eps endpoints) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"},
		},
		AddressType: at,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("grpc"), Port: ptr(grpcPort), Protocol: ptr(corev1.ProtocolTCP)},
			{Name: ptr("metrics"), Port: ptr(int32(9090)), Protocol: ptr(corev1.ProtocolTCP)},
		},
	}
	for addr, c := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{addr},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr(c.ready), Serving: ptr(c.serving), Terminating: ptr(c.terminating),
			},
			NodeName:  ptr("node-1"),
			Zone:      ptr("zone-a"),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "pod-" + name},
		})
	}
	return es
}

// greeterSnapshot is what the registry should hold for ns/greeter: grpc
// endpoints given as "addr:port" → conditions; metrics endpoints are the
// same addresses on 9090.
func greeterSnapshot(ns string, grpc map[string]conds, pods map[string]string) *discovery.Service {
	s := &discovery.Service{
		Key:   discovery.Key{Namespace: ns, Name: "greeter"},
		Ports: []discovery.Port{{Name: "grpc", Port: 80, Protocol: "TCP"}, {Name: "metrics", Port: 9090, Protocol: "TCP"}},
	}
	for ap, c := range grpc {
		addr := netip.MustParseAddrPort(ap)
		for i, port := range []uint16{addr.Port(), 9090} {
			s.Ports[i].Endpoints = append(s.Ports[i].Endpoints, discovery.Endpoint{
				Address: netip.AddrPortFrom(addr.Addr(), port),
				Ready:   c.ready, Serving: c.serving, Terminating: c.terminating,
				Zone: "zone-a", Node: "node-1", Pod: pods[ap],
			})
		}
	}
	for i := range s.Ports {
		slices.SortFunc(s.Ports[i].Endpoints, func(a, b discovery.Endpoint) int { return a.Address.Compare(b.Address) })
	}
	return s
}

// TestServiceLifecycle walks one Service through the changes a cluster makes
// and checks that the registry converges to the right snapshot after each.
func TestServiceLifecycle(t *testing.T) {
	ns := env.Namespace(t, "discovery")
	reg, _ := run(t, env.Config, ns)
	ctx := context.Background()
	services := env.Client.CoreV1().Services(ns)
	endpointSlices := env.Client.DiscoveryV1().EndpointSlices(ns)
	updateSlice := func(name string, at discoveryv1.AddressType, port int32, eps endpoints) func() error {
		return func() error {
			_, err := endpointSlices.Update(ctx, endpointSlice(ns, name, at, port, eps), metav1.UpdateOptions{})
			return err
		}
	}
	createSlice := func(name string, at discoveryv1.AddressType, port int32, eps endpoints) func() error {
		return func() error {
			_, err := endpointSlices.Create(ctx, endpointSlice(ns, name, at, port, eps), metav1.CreateOptions{})
			return err
		}
	}
	pods := map[string]string{
		"10.244.0.1:50051":       "pod-greeter-a",
		"10.244.0.2:50051":       "pod-greeter-a",
		"10.244.1.1:50052":       "pod-greeter-b",
		"[fd00:10:244::1]:50051": "pod-greeter-v6",
	}
	key := discovery.Key{Namespace: ns, Name: "greeter"}
	steps := []struct {
		name string
		do   func() error
		// want is the grpc endpoints expected after the step; nil with
		// gone means the Service is no longer in the registry.
		want map[string]conds
		gone bool
	}{
		{
			name: "service without slices",
			do: func() error {
				_, err := services.Create(ctx, greeterService(ns), metav1.CreateOptions{})
				return err
			},
			want: map[string]conds{},
		},
		{
			name: "first slice",
			do:   createSlice("greeter-a", discoveryv1.AddressTypeIPv4, 50051, endpoints{"10.244.0.1": up, "10.244.0.2": up}),
			want: map[string]conds{"10.244.0.1:50051": up, "10.244.0.2:50051": up},
		},
		{
			name: "second slice merges, named port resolved per slice",
			do:   createSlice("greeter-b", discoveryv1.AddressTypeIPv4, 50052, endpoints{"10.244.1.1": up}),
			want: map[string]conds{"10.244.0.1:50051": up, "10.244.0.2:50051": up, "10.244.1.1:50052": up},
		},
		{
			name: "IPv6 slice merges",
			do:   createSlice("greeter-v6", discoveryv1.AddressTypeIPv6, 50051, endpoints{"fd00:10:244::1": up}),
			want: map[string]conds{"10.244.0.1:50051": up, "10.244.0.2:50051": up, "10.244.1.1:50052": up, "[fd00:10:244::1]:50051": up},
		},
		{
			name: "readiness flips to not ready",
			do:   updateSlice("greeter-a", discoveryv1.AddressTypeIPv4, 50051, endpoints{"10.244.0.1": up, "10.244.0.2": down}),
			want: map[string]conds{"10.244.0.1:50051": up, "10.244.0.2:50051": down, "10.244.1.1:50052": up, "[fd00:10:244::1]:50051": up},
		},
		{
			name: "readiness flips back",
			do:   updateSlice("greeter-a", discoveryv1.AddressTypeIPv4, 50051, endpoints{"10.244.0.1": up, "10.244.0.2": up}),
			want: map[string]conds{"10.244.0.1:50051": up, "10.244.0.2:50051": up, "10.244.1.1:50052": up, "[fd00:10:244::1]:50051": up},
		},
		{
			name: "terminating but serving endpoint is kept, draining",
			do:   updateSlice("greeter-a", discoveryv1.AddressTypeIPv4, 50051, endpoints{"10.244.0.1": draining, "10.244.0.2": up}),
			want: map[string]conds{"10.244.0.1:50051": draining, "10.244.0.2:50051": up, "10.244.1.1:50052": up, "[fd00:10:244::1]:50051": up},
		},
		{
			name: "slice deleted",
			do:   func() error { return endpointSlices.Delete(ctx, "greeter-b", metav1.DeleteOptions{}) },
			want: map[string]conds{"10.244.0.1:50051": draining, "10.244.0.2:50051": up, "[fd00:10:244::1]:50051": up},
		},
		{
			name: "slice moved to another service",
			do: func() error {
				es := endpointSlice(ns, "greeter-v6", discoveryv1.AddressTypeIPv6, 50051, endpoints{"fd00:10:244::1": up})
				es.Labels[discoveryv1.LabelServiceName] = "other"
				_, err := endpointSlices.Update(ctx, es, metav1.UpdateOptions{})
				return err
			},
			want: map[string]conds{"10.244.0.1:50051": draining, "10.244.0.2:50051": up},
		},
		{
			name: "service deleted",
			do:   func() error { return services.Delete(ctx, "greeter", metav1.DeleteOptions{}) },
			gone: true,
		},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if step.gone {
			await(t, reg, step.name, absent(reg, key))
			continue
		}
		await(t, reg, step.name, hasSnapshot(reg, greeterSnapshot(ns, step.want, pods)))
		if step.name == "second slice merges, named port resolved per slice" {
			checkNamedPort(t, reg, key)
		}
	}
}

// checkNamedPort looks a port up the way a client's target names it.
func checkNamedPort(t *testing.T, reg *discovery.Registry, key discovery.Key) {
	t.Helper()
	svc, _ := reg.Get(key)
	if len(svc.ClusterIPs) == 0 {
		t.Errorf("service %s has no cluster IP; the API server allocates one", key)
	}
	for _, ref := range []string{"grpc", "80"} {
		p, err := svc.Port(ref)
		if err != nil {
			t.Fatalf("Port(%q): %v", ref, err)
		}
		var got []string
		for _, e := range p.Routable() {
			got = append(got, e.Address.String())
		}
		want := []string{"10.244.0.1:50051", "10.244.0.2:50051", "10.244.1.1:50052"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Port(%q).Routable() mismatch (-want +got):\n%s", ref, diff)
		}
	}
}

// TestHasSyncedMeansInitialStateWritten checks that once HasSynced reports
// true, everything that existed at start is already in the registry.
func TestHasSyncedMeansInitialStateWritten(t *testing.T) {
	ns := env.Namespace(t, "discovery")
	ctx := context.Background()
	const count = 5
	for i := range count {
		svc := greeterService(ns)
		svc.Name = fmt.Sprintf("greeter-%d", i)
		if _, err := env.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		es := endpointSlice(ns, svc.Name+"-a", discoveryv1.AddressTypeIPv4, 50051, endpoints{fmt.Sprintf("10.244.2.%d", i+1): up})
		es.Labels[discoveryv1.LabelServiceName] = svc.Name
		if _, err := env.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	reg, src := run(t, env.Config, ns)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	deadline := time.After(waitTimeout)
	for !src.HasSynced() {
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatalf("HasSynced still false after %v", waitTimeout)
		}
	}
	got := reg.List()
	if len(got) != count {
		t.Fatalf("registry holds %d services at HasSynced, want %d", len(got), count)
	}
	for i, s := range got {
		p, err := s.Port("grpc")
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("10.244.2.%d:50051", i+1)
		if len(p.Endpoints) != 1 || p.Endpoints[0].Address.String() != want {
			t.Errorf("service %s endpoints %v, want [%s]", s.Key, p.Endpoints, want)
		}
	}
}

// TestNamespaceOption checks that a source restricted to one namespace does
// not see Services of another.
func TestNamespaceOption(t *testing.T) {
	watched, other := env.Namespace(t, "discovery"), env.Namespace(t, "discovery")
	ctx := context.Background()
	reg, _ := run(t, env.Config, watched)
	for _, ns := range []string{other, watched} {
		if _, err := env.Client.CoreV1().Services(ns).Create(ctx, greeterService(ns), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	await(t, reg, "service in watched namespace", func() error {
		if _, ok := reg.Get(discovery.Key{Namespace: watched, Name: "greeter"}); !ok {
			return errors.New("not yet")
		}
		return nil
	})
	if err := absent(reg, discovery.Key{Namespace: other, Name: "greeter"})(); err != nil {
		t.Error(err)
	}
}

// TestKeepsStateWhileAPIServerUnreachable cuts the source's connection to the
// API server, checks that the registry keeps its entries while the informers
// fail, and that changes made meanwhile arrive once the connection returns.
func TestKeepsStateWhileAPIServerUnreachable(t *testing.T) {
	ns := env.Namespace(t, "discovery")
	ctx := context.Background()
	proxy := newCuttableProxy(t, env.Config.Host)
	cfg := rest.CopyConfig(env.Config)
	cfg.Host = "https://" + proxy.addr()
	cfg.TLSClientConfig.ServerName = "localhost"
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, greeterService(ns), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx,
		endpointSlice(ns, "greeter-a", discoveryv1.AddressTypeIPv4, 50051, endpoints{"10.244.0.1": up, "10.244.0.2": up}),
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reg, _ := run(t, cfg, ns)
	pods := map[string]string{"10.244.0.1:50051": "pod-greeter-a", "10.244.0.2:50051": "pod-greeter-a"}
	before := greeterSnapshot(ns, map[string]conds{"10.244.0.1:50051": up, "10.244.0.2:50051": up}, pods)
	await(t, reg, "initial state", hasSnapshot(reg, before))

	proxy.setCut(true)
	// Changes while cut off must not reach the source, nor must the loss of
	// the connection clear what it knows.
	if _, err := env.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx,
		endpointSlice(ns, "greeter-a", discoveryv1.AddressTypeIPv4, 50051, endpoints{"10.244.0.1": up, "10.244.0.2": draining}),
		metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Once the source has been refused a few times, both informers have
	// lost their watches and tried again: the outage is real to them.
	deadline := time.After(waitTimeout)
	for proxy.refusals() < 4 {
		select {
		case <-proxy.refused:
		case <-deadline:
			t.Fatalf("source made %d connection attempts within %v of the cut, want ≥ 4", proxy.refusals(), waitTimeout)
		}
	}
	if err := hasSnapshot(reg, before)(); err != nil {
		t.Fatalf("registry changed while the API server was unreachable: %v", err)
	}

	proxy.setCut(false)
	after := greeterSnapshot(ns, map[string]conds{"10.244.0.1:50051": up, "10.244.0.2:50051": draining}, pods)
	await(t, reg, "state after reconnect", hasSnapshot(reg, after))
}

// cuttableProxy forwards TCP to the API server until cut: then it closes
// every connection and refuses new ones, as a network partition would.
type cuttableProxy struct {
	ln       net.Listener
	upstream string
	refused  chan struct{} // signalled on each refused connection
	refusedN atomic.Int64

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCuttableProxy(t *testing.T, upstreamURL string) *cuttableProxy {
	t.Helper()
	if !strings.Contains(upstreamURL, "://") {
		upstreamURL = "https://" + upstreamURL
	}
	u, err := url.Parse(upstreamURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttableProxy{ln: ln, upstream: u.Host, refused: make(chan struct{}, 1), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *cuttableProxy) addr() string { return p.ln.Addr().String() }

func (p *cuttableProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			p.refusedN.Add(1)
			select {
			case p.refused <- struct{}{}:
			default:
			}
			continue
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *cuttableProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// setCut cuts (closing open connections) or restores the path.
func (p *cuttableProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
}

func (p *cuttableProxy) refusals() int64 { return p.refusedN.Load() }

func (p *cuttableProxy) close() {
	p.ln.Close()
	p.setCut(true)
	p.wg.Wait()
}

// TestUnreachableAtStart checks that a source that never reaches the API
// server does not claim to be synced, and still stops with its context.
func TestUnreachableAtStart(t *testing.T) {
	proxy := newCuttableProxy(t, env.Config.Host)
	proxy.setCut(true)
	cfg := rest.CopyConfig(env.Config)
	cfg.Host = "https://" + proxy.addr()
	cfg.TLSClientConfig.ServerName = "localhost"
	reg, src := run(t, cfg, env.Namespace(t, "discovery"))
	deadline := time.After(waitTimeout)
	for proxy.refusals() < 2 {
		select {
		case <-proxy.refused:
		case <-deadline:
			t.Fatalf("source made %d connection attempts within %v, want ≥ 2", proxy.refusals(), waitTimeout)
		}
	}
	if src.HasSynced() {
		t.Errorf("HasSynced() = true without ever reaching the API server")
	}
	if n := len(reg.List()); n != 0 {
		t.Errorf("registry holds %d services without ever reaching the API server", n)
	}
	// run's cleanup checks that Run returns once its context ends.
}
