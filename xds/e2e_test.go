package xds

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/policy"
)

// plane is a control plane serving on loopback, with the registry it reads.
type plane struct {
	reg     *discovery.Registry
	srv     *Server
	metrics *prometheus.Registry
	addr    string // xDS gRPC address
	http    string // health/metrics/debug base URL
	stop    func() // stops the plane; also run at cleanup
}

func startPlane(t *testing.T) *plane { return startPlaneAt(t, "127.0.0.1:0") }

// startPlaneAt serves a new control plane on addr, a loopback address.
func startPlaneAt(t *testing.T, addr string) *plane {
	t.Helper()
	p := &plane{reg: discovery.NewRegistry(), metrics: prometheus.NewRegistry()}
	var err error
	p.srv, err = NewServer(Config{
		Registry: p.reg,
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics:  p.metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.srv.Run(ctx)
	}()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		cancel()
		wg.Wait()
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	p.srv.Register(gs)
	wg.Add(1)
	go func() {
		defer wg.Done()
		gs.Serve(lis)
	}()
	mux := http.NewServeMux()
	mux.Handle("/", p.srv.Handler())
	mux.Handle("/debug/", p.srv.DebugHandler())
	hs := httptest.NewServer(mux)
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			hs.Close()
			gs.Stop()
			cancel()
			wg.Wait()
		})
	}
	t.Cleanup(p.stop)
	p.addr, p.http = lis.Addr().String(), hs.URL
	eventually(t, "the server is ready", func() bool { return p.srv.Ready() })
	return p
}

// greeters runs n greeter servers on loopback, named greeter-0..n-1.
func greeters(t *testing.T, n int) []netip.AddrPort {
	t.Helper()
	var addrs []netip.AddrPort
	for _, p := range greetertest.Serve(t, greetertest.Names("greeter", n)...) {
		addrs = append(addrs, p.Addr)
	}
	return addrs
}

func greeterService(addrs []netip.AddrPort, annotations map[string]string) *discovery.Service {
	var eps []discovery.Endpoint
	for i, a := range addrs {
		eps = append(eps, discovery.Endpoint{Address: a, Ready: true, Serving: true,
			Zone: fmt.Sprintf("zone-%d", i%2), Pod: fmt.Sprintf("greeter-%d", i)})
	}
	return &discovery.Service{
		Key:         discovery.Key{Namespace: "default", Name: "greeter"},
		Annotations: annotations,
		Ports:       []discovery.Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: eps}},
	}
}

// dialXDS dials target with grpc-go's own xDS resolver and client,
// bootstrapped with the file `ballast bootstrap` would write.
func dialXDS(t *testing.T, p *plane, target string) *grpc.ClientConn {
	t.Helper()
	bs, err := Bootstrap{Server: p.addr, Pod: "client-0", Namespace: "default", Zone: "zone-0"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bs)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

func call(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "e2e"})
	if err != nil {
		return "", err
	}
	return greeter.PodOf(r.GetMessage()), nil
}

// callUntil makes calls until every pod in want has answered; any failed
// call fails the test.
func callUntil(t *testing.T, conn *grpc.ClientConn, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		missing := 0
		for _, w := range want {
			if !seen[w] {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods %v never all answered; saw %v", want, seen)
		}
		pod, err := call(context.Background(), conn)
		if err != nil {
			t.Fatalf("call failed: %v", err)
		}
		seen[pod] = true
	}
}

// TestProxylessGRPC drives grpc-go's real xDS client against the control
// plane: calls spread evenly over 3 pods with round_robin, 2 more pods get
// calls once the registry lists them, removing a pod under load fails no
// call, and a config the client rejects is NACKed, counted and shown while
// the client keeps working on its last good config.
func TestProxylessGRPC(t *testing.T) {
	p := startPlane(t)
	addrs := greeters(t, 5)
	p.reg.Set(greeterService(addrs[:3], nil))
	conn := dialXDS(t, p, "xds:///greeter.default:50051")

	t.Run("spread over 3 pods", func(t *testing.T) {
		callUntil(t, conn, "greeter-0", "greeter-1", "greeter-2")
		counts := map[string]int{}
		for range 300 {
			pod, err := call(context.Background(), conn)
			if err != nil {
				t.Fatalf("call failed: %v", err)
			}
			counts[pod]++
		}
		if len(counts) != 3 {
			t.Fatalf("calls reached %v, want 3 pods", counts)
		}
		maxCount := 0
		for _, c := range counts {
			maxCount = max(maxCount, c)
		}
		if ratio := float64(maxCount) / 100; ratio > 1.1 {
			t.Fatalf("max/mean = %.2f > 1.1: %v", ratio, counts)
		}
	})

	t.Run("scale 3 to 5", func(t *testing.T) {
		p.reg.Set(greeterService(addrs, nil))
		callUntil(t, conn, "greeter-3", "greeter-4")
		if n := histogramCount(t, p.metrics, "ballast_xds_push_latency_seconds", "endpoints"); n == 0 {
			t.Fatal("no push latency observed for the endpoint change")
		}
	})

	t.Run("remove a pod under load", func(t *testing.T) {
		l := startLoad(conn)
		eventually(t, "load is running", func() bool { return l.calls.Load() > 100 })
		p.reg.Set(greeterService(addrs[1:], nil))
		// greeter-0 keeps serving (as a terminating pod would): the client
		// must stop picking it without failing a call.
		eventually(t, "greeter-0 stops receiving calls", func() bool { return l.callsSince("greeter-0") > 300 })
		l.stop(t)
	})

	t.Run("NACK keeps the last good config", func(t *testing.T) {
		// grpc-go rejects a Cluster whose policy list has no policy it
		// supports; Translate never writes one, so the test puts it in the
		// cache directly to make the real client NACK.
		name := "greeter.default.svc.cluster.local:50051"
		bad := edsCluster(name, &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
			TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "unknown", TypedConfig: mustAny(wrapperspb.String("no such policy"))},
		}}})
		before := counterValue(t, p.metrics, "ballast_xds_nacks_total", "cluster")
		if err := p.srv.caches[resourcev3.ClusterType].UpdateResource(name, bad); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the client NACKs the cluster", func() bool {
			return counterValue(t, p.metrics, "ballast_xds_nacks_total", "cluster") > before
		})
		callUntil(t, conn, "greeter-1", "greeter-2", "greeter-3", "greeter-4")

		var clients []struct {
			NodeID string `json:"nodeId"`
			Types  map[string]struct {
				Status string `json:"status"`
				Error  string `json:"error"`
			} `json:"types"`
		}
		getJSON(t, p.http+"/debug/clients", &clients)
		if len(clients) != 1 || clients[0].NodeID != "ballast~client-0.default" {
			t.Fatalf("/debug/clients = %+v, want one client ballast~client-0.default", clients)
		}
		if c := clients[0].Types["cluster"]; c.Status != "NACKED" || !strings.Contains(c.Error, "no supported policy") {
			t.Fatalf("/debug/clients cluster state = %+v, want NACKED with grpc-go's error", c)
		}
		if !csdsHas(t, p, resourcev3.ClusterType, name, "NACKED") {
			t.Fatal("CSDS does not show the cluster as NACKED")
		}

		// The next change of the Service's Cluster replaces the rejected
		// one; the client ACKs it.
		p.reg.Set(greeterService(addrs[1:], map[string]string{policy.LBAnnotation: "least_request"}))
		eventually(t, "the client ACKs the good cluster again", func() bool {
			return csdsHas(t, p, resourcev3.ClusterType, name, "ACKED")
		})
		callUntil(t, conn, "greeter-1", "greeter-2", "greeter-3", "greeter-4")
	})
}

// TestControlPlaneRestart replaces a client's control plane, under load,
// with a new one at the same address: no call fails while it is gone (the
// client keeps its config), and the client then follows the new plane.
func TestControlPlaneRestart(t *testing.T) {
	p1 := startPlane(t)
	addrs := greeters(t, 4)
	p1.reg.Set(greeterService(addrs[:3], nil))
	conn := dialXDS(t, p1, "xds:///greeter.default:50051")
	callUntil(t, conn, "greeter-0", "greeter-1", "greeter-2")

	l := startLoad(conn)
	eventually(t, "load is running", func() bool { return l.calls.Load() > 100 })
	p1.stop()
	before := l.calls.Load()
	eventually(t, "calls go on without a control plane", func() bool { return l.calls.Load() > before+300 })
	p2 := startPlaneAt(t, p1.addr)
	p2.reg.Set(greeterService(addrs, nil))
	eventually(t, "greeter-3, known only to the new plane, receives calls", func() bool { return l.count("greeter-3") > 0 })
	l.stop(t)
}

// load makes calls on a few goroutines until stopped, and records which
// pod answered and how many calls failed.
type load struct {
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	calls    atomic.Int64
	failures atomic.Int64
	lastErr  atomic.Value

	mu       sync.Mutex
	counts   map[string]int
	lastCall map[string]int64 // call number of each pod's last answer
}

func startLoad(conn *grpc.ClientConn) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, counts: map[string]int{}, lastCall: map[string]int64{}}
	for range 4 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < 50000 && ctx.Err() == nil; i++ {
				pod, err := call(ctx, conn)
				n := l.calls.Add(1)
				if err != nil {
					if ctx.Err() == nil {
						l.failures.Add(1)
						l.lastErr.Store(err)
					}
					continue
				}
				l.mu.Lock()
				l.counts[pod]++
				l.lastCall[pod] = n
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) count(pod string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[pod]
}

// callsSince is how many calls were made since pod last answered one.
func (l *load) callsSince(pod string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls.Load() - l.lastCall[pod]
}

// stop ends the load and fails the test if any call failed.
func (l *load) stop(t *testing.T) {
	t.Helper()
	l.cancel()
	l.wg.Wait()
	if n := l.failures.Load(); n > 0 {
		t.Fatalf("%d of %d calls failed; last: %v", n, l.calls.Load(), l.lastErr.Load())
	}
}

// TestPeakEWMAFallsBack checks that a client without Ballast's peak-EWMA
// balancer registered (this test binary does not import it) skips the
// custom policy and balances with the next one in the list.
func TestPeakEWMAFallsBack(t *testing.T) {
	p := startPlane(t)
	addrs := greeters(t, 3)
	p.reg.Set(greeterService(addrs, map[string]string{policy.LBAnnotation: "peak_ewma"}))
	conn := dialXDS(t, p, "xds:///greeter.default.svc.cluster.local:50051")
	callUntil(t, conn, "greeter-0", "greeter-1", "greeter-2")
	if !csdsHas(t, p, resourcev3.ClusterType, "greeter.default.svc.cluster.local:50051", "ACKED") {
		t.Fatal("the peak_ewma cluster was not ACKed")
	}
}

// TestTargetedPushes checks, over raw ADS streams in both protocol
// variants, that an endpoint change reaches a subscriber of that resource
// and no one else: after changing Service b then Service a, a subscriber of
// a's endpoints must receive a's change first. It also checks delta
// removals and that a NACK on a delta stream is counted.
func TestTargetedPushes(t *testing.T) {
	p := startPlane(t)
	svc := func(name string, ports ...uint16) *discovery.Service {
		var eps []discovery.Endpoint
		for _, port := range ports {
			eps = append(eps, discovery.Endpoint{Address: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Ready: true, Serving: true})
		}
		return &discovery.Service{Key: discovery.Key{Namespace: "default", Name: name},
			Ports: []discovery.Port{{Port: 80, Protocol: "TCP", Endpoints: eps}}}
	}
	p.reg.Set(svc("a", 1000))
	p.reg.Set(svc("b", 2000))
	waitResources(t, p, resourcev3.EndpointType, 2)
	aName := "a.default.svc.cluster.local:80"

	ads, ctx := adsService(t, p.addr)
	node := &corev3.Node{Id: "ballast~raw.default"}

	t.Run("sotw", func(t *testing.T) {
		s, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer s.CloseSend()
		send := func(r *discoveryv3.DiscoveryRequest) {
			if err := s.Send(r); err != nil {
				t.Fatal(err)
			}
		}
		send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNames: []string{aName}})
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := endpointPorts(t, resp.GetResources()); got != "1000" {
			t.Fatalf("first response endpoints = %s, want 1000", got)
		}
		send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{aName},
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
		p.reg.Set(svc("b", 2001))
		p.reg.Set(svc("a", 1001))
		resp, err = s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := endpointPorts(t, resp.GetResources()); got != "1001" {
			t.Fatalf("next push = %s, want only a's change (1001)", got)
		}
	})

	t.Run("delta", func(t *testing.T) {
		s, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer s.CloseSend()
		send := func(r *discoveryv3.DeltaDiscoveryRequest) {
			if err := s.Send(r); err != nil {
				t.Fatal(err)
			}
		}
		send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{aName}})
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var anys []*anypb.Any
		for _, r := range resp.GetResources() {
			anys = append(anys, r.GetResource())
		}
		if got := endpointPorts(t, anys); got != "1001" {
			t.Fatalf("first delta response endpoints = %s, want 1001", got)
		}
		// NACK it (a raw client can; grpc-go NACKs are covered above).
		nacks := counterValue(t, p.metrics, "ballast_xds_nacks_total", "endpoints")
		send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: resp.GetNonce(),
			ErrorDetail: statusProto("test rejects this")})
		eventually(t, "the delta NACK is counted", func() bool {
			return counterValue(t, p.metrics, "ballast_xds_nacks_total", "endpoints") > nacks
		})
		p.reg.Set(svc("b", 2002))
		p.reg.Set(svc("a", 1002))
		resp, err = s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		anys = anys[:0]
		for _, r := range resp.GetResources() {
			anys = append(anys, r.GetResource())
		}
		if got := endpointPorts(t, anys); got != "1002" {
			t.Fatalf("next delta push = %s, want only a's change (1002)", got)
		}
		send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: resp.GetNonce()})
		p.reg.Delete(discovery.Key{Namespace: "default", Name: "a"})
		resp, err = s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetRemovedResources()) != 1 || resp.GetRemovedResources()[0] != aName {
			t.Fatalf("removed = %v, want [%s]", resp.GetRemovedResources(), aName)
		}
	})
}

func endpointPorts(t *testing.T, anys []*anypb.Any) string {
	t.Helper()
	var ports []string
	for _, a := range anys {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			t.Fatal(err)
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				ports = append(ports, fmt.Sprint(e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()))
			}
		}
	}
	return strings.Join(ports, ",")
}

func csdsHas(t *testing.T, p *plane, typeURL, name, status string) bool {
	t.Helper()
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := statusv3.NewClientStatusDiscoveryServiceClient(cc).FetchClientStatus(context.Background(), &statusv3.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range resp.GetConfig() {
		for _, g := range c.GetGenericXdsConfigs() {
			if g.GetTypeUrl() == typeURL && g.GetName() == name && g.GetClientStatus().String() == status {
				return true
			}
		}
	}
	return false
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func metricFamily(t *testing.T, reg *prometheus.Registry, name, typeLabel string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" && l.GetValue() == typeLabel {
					return m
				}
			}
		}
	}
	return nil
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, typeLabel string) float64 {
	return metricFamily(t, reg, name, typeLabel).GetCounter().GetValue()
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name, typeLabel string) uint64 {
	return metricFamily(t, reg, name, typeLabel).GetHistogram().GetSampleCount()
}

func statusProto(msg string) *statuspb.Status { return &statuspb.Status{Code: 3, Message: msg} }

// A sidecar cannot know the ClusterIPs it will intercept, so it asks for
// listeners by wildcard and gets one per ClusterIP:port; a proxyless client
// names the listener it dials and gets only that api_listener.
func TestSidecarListenersByWildcard(t *testing.T) {
	p := startPlane(t)
	p.reg.Set(&discovery.Service{
		Key:        discovery.Key{Namespace: "default", Name: "greeter"},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []discovery.Port{{Port: 50051, Protocol: "TCP"}, {Port: 8081, Protocol: "TCP"}},
	})
	waitResources(t, p, sidecarListenerCache, 2)
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		name  string
		names []string
		want  string
	}{
		{"wildcard gets sidecar listeners", nil, "10.96.0.10:50051 10.96.0.10:8081"},
		{"explicit wildcard too", []string{"*"}, "10.96.0.10:50051 10.96.0.10:8081"},
		{"named gets its api_listener", []string{"greeter.default:50051"}, "greeter.default:50051"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ads.StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.CloseSend()
			if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "ballast-proxy~default~client"},
				TypeUrl: resourcev3.ListenerType, ResourceNames: tt.names}); err != nil {
				t.Fatal(err)
			}
			resp, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			got := listenerNames(t, resp)
			if strings.Join(got, " ") != tt.want {
				t.Fatalf("listeners %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRequestsWaitUntilReady: before discovery has synced, the caches
// hold an incomplete world: a sidecar would take the Services missing from
// it for unknown destinations, and a proxyless client back from another
// replica (its version not this server's) would be answered at once
// without them, which deletes their Listeners. So requests wait, counted in
// ballast_xds_requests_waiting_for_sync, and the first answer is the one a
// request gets once the server is ready; one still waiting after ReadyWait
// is refused Unavailable, and the client retries.
func TestRequestsWaitUntilReady(t *testing.T) {
	ips := map[string]netip.Addr{"a": netip.MustParseAddr("10.96.0.10"), "b": netip.MustParseAddr("10.96.0.11")}
	svc := func(name string) *discovery.Service {
		return &discovery.Service{Key: discovery.Key{Namespace: "default", Name: name}, ClusterIPs: []netip.Addr{ips[name]},
			Ports: []discovery.Port{{Name: "grpc", Port: 80, Protocol: "TCP"}}}
	}
	cases := []struct {
		name string
		req  *discoveryv3.DiscoveryRequest
		b    string // b's Listener, which only the synced world has
	}{
		{"a sidecar's wildcard request", &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "ballast-proxy~default~c"}, TypeUrl: resourcev3.ListenerType},
			"10.96.0.11:80"},
		{"a proxyless client back from another replica", &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "ballast~client.default"},
			TypeUrl: resourcev3.ListenerType, VersionInfo: "another-replica-7", ResourceNames: []string{"a.default:80", "b.default:80"}},
			"b.default:80"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := discovery.NewRegistry()
			reg.Set(svc("a"))
			var synced atomic.Bool
			srv, addr := serveUnsynced(t, Config{Registry: reg, Synced: synced.Load, ReadyWait: time.Minute})
			s := adsStream(t, addr)
			if err := s.Send(tc.req); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the request waiting for the sync", func() bool { return testutil.ToFloat64(srv.metrics.waiting) == 1 })
			reg.Set(svc("b"))
			synced.Store(true)
			first, err := s.Recv()
			if err != nil {
				t.Fatalf("the waiting request: %v", err)
			}
			// What the same request gets from the ready server.
			fresh := adsStream(t, addr)
			if err := fresh.Send(tc.req); err != nil {
				t.Fatal(err)
			}
			ready, err := fresh.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := listenerNames(t, first), listenerNames(t, ready); len(want) == 0 || !slices.Equal(got, want) || !slices.Contains(got, tc.b) {
				t.Fatalf("first answer %q; want what the ready server answers, %q, with %s", got, want, tc.b)
			}
		})
	}
	t.Run("never synced", func(t *testing.T) {
		_, addr := serveUnsynced(t, Config{Registry: discovery.NewRegistry(), Synced: func() bool { return false }, ReadyWait: 100 * time.Millisecond})
		s := adsStream(t, addr)
		if err := s.Send(cases[1].req); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not synced") {
			t.Fatalf("a request to a server that never syncs: %v, want Unavailable saying it has not synced", err)
		}
	})
}

// listenerNames are the names of a response's Listeners, sorted.
func listenerNames(t *testing.T, resp *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var names []string
	for _, a := range resp.GetResources() {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		names = append(names, l.GetName())
	}
	slices.Sort(names)
	return names
}

// serveUnsynced runs a Server of cfg, whose discovery may not have synced,
// on a loopback gRPC server for the test's duration.
func serveUnsynced(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Metrics = prometheus.NewRegistry()
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); srv.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go gs.Serve(lis)
	t.Cleanup(func() { gs.Stop(); cancel(); <-ran })
	return srv, lis.Addr().String()
}

// adsService dials the server at addr for a test that speaks the
// protocol itself. The connection, and the returned context that bounds
// the test's streams, end with the test.
func adsService(t *testing.T, addr string) (discoveryv3.AggregatedDiscoveryServiceClient, context.Context) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return discoveryv3.NewAggregatedDiscoveryServiceClient(cc), ctx
}

// adsStream opens a raw ADS stream to the server at addr, closed with the
// test.
func adsStream(t *testing.T, addr string) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	ads, ctx := adsService(t, addr)
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A Service whose ClusterIP changes (deleted and re-created with another)
// keeps its ports and endpoints; its sidecar listener must still move.
func TestSidecarListenerFollowsClusterIP(t *testing.T) {
	p := startPlane(t)
	svc := func(ip string) *discovery.Service {
		return &discovery.Service{
			Key:        discovery.Key{Namespace: "default", Name: "greeter"},
			ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)},
			Ports:      []discovery.Port{{Port: 50051, Protocol: "TCP"}},
		}
	}
	p.reg.Set(svc("10.96.0.10"))
	waitResources(t, p, sidecarListenerCache, 1)
	s := adsStream(t, p.addr)
	defer s.CloseSend()
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "ballast-proxy~default~c"}, TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(listenerNames(t, resp), " "); got != "10.96.0.10:50051" {
		t.Fatalf("listeners %q, want 10.96.0.10:50051", got)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	p.reg.Set(svc("10.96.0.20"))
	resp, err = s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(listenerNames(t, resp), " "); got != "10.96.0.20:50051" {
		t.Fatalf("after the ClusterIP changed: listeners %q, want 10.96.0.20:50051", got)
	}
}

// waitResources waits until the cache holds n resources: the Registry's
// change has been translated.
func waitResources(t *testing.T, p *plane, cache string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d resources in the %s cache", n, cache), func() bool { return p.srv.caches[cache].NumResources() == n })
}
