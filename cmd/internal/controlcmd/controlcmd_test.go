package controlcmd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	grpcxds "google.golang.org/grpc/xds"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	// The files' Services name Ballast's balancers, which the test's
	// grpc-go client must know, as the ballast binary's do.
	_ "github.com/ballast-dev/ballast/balancer/p2c"
	_ "github.com/ballast-dev/ballast/balancer/peakewma"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/internal/testapi"
	"github.com/ballast-dev/ballast/xds"
)

var (
	api  *testapi.Env
	runs atomic.Int64
)

func TestMain(m *testing.M) {
	testapi.Main(m, "cmd/internal/controlcmd", &api)
}

// kubeconfig writes a kubeconfig for the test API server.
func kubeconfig(t *testing.T) string {
	t.Helper()
	c := api.Config
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.CertData, ClientKeyData: c.KeyData, Token: c.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestControlServesKubernetes runs `ballast control` against a real API
// server: it turns ready once discovery has synced, serves a Service's
// endpoints over ADS, pushes an EndpointSlice change, and stops cleanly.
func TestControlServesKubernetes(t *testing.T) {
	ctx := context.Background()
	ns := fmt.Sprintf("control-test-%d", runs.Add(1)) // fresh per run (-count)
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "greeter"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The addresses are only data here: nothing dials them.
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "greeter-1", Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Zone: ptr("zone-a")},
			{Addresses: []string{"10.0.0.2"}, Zone: ptr("zone-b")},
		},
	}
	slice, err := api.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	runCtx, cancel := context.WithCancel(ctx)
	addrs := make(chan [2]net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, Config{
			Kubeconfig:   kubeconfig(t),
			Insecure:     true,
			XDSAddress:   "127.0.0.1:0",
			HTTPAddress:  "127.0.0.1:0",
			DrainTimeout: time.Second,
			Serving:      func(x, h net.Addr) { addrs <- [2]net.Addr{x, h} },
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	var xdsAddr, httpAddr net.Addr
	select {
	case a := <-addrs:
		xdsAddr, httpAddr = a[0], a[1]
	case err := <-done:
		t.Fatalf("control exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("control never served")
	}
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	poll(t, "/readyz answers 200", func() bool {
		resp, err := http.Get("http://" + httpAddr.String() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	cc, err := grpc.NewClient(xdsAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	name := "greeter." + ns + ".svc.cluster.local:50051"
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "ballast~test." + ns},
		TypeUrl: resourcev3.EndpointType, ResourceNames: []string{name}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(t, resp); got != "10.0.0.1:8080 10.0.0.2:8080" {
		t.Fatalf("endpoints = %q, want 10.0.0.1:8080 10.0.0.2:8080", got)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{name},
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.0.3"}, Zone: ptr("zone-a")})
	if _, err := api.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := addresses(t, resp); got != "10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080" {
		t.Fatalf("endpoints after the update = %q", got)
	}

	cancel()
	stopped = true
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("control returned %v on shutdown", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("control did not stop")
	}
}

func addresses(t *testing.T, resp *discoveryv3.DiscoveryResponse) string {
	t.Helper()
	var out []string
	for _, a := range resp.GetResources() {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			t.Fatal(err)
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
			}
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

func ptr[T any](v T) *T { return &v }

// TestControlServesFiles runs `ballast control --files` with grpc-go's real
// xDS client dialing through it to greeters on loopback: every pod in the
// folder's EndpointSlice gets calls, and a pod added to the file does too.
func TestControlServesFiles(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	var ports []int
	for _, p := range greetertest.Serve(t, greetertest.Names("greeter", 3)...) {
		ports = append(ports, int(p.Addr.Port()))
	}
	dir := t.TempDir()
	write := func(n int) {
		t.Helper()
		var b strings.Builder
		b.WriteString("apiVersion: v1\nkind: Service\nmetadata: {name: greeter, namespace: default}\nspec:\n  ports: [{name: grpc, port: 50051}]\n")
		// fast asks for peak-EWMA, which this binary registers (main.go).
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: fast, namespace: default, annotations: {ballast.dev/lb-policy: peak_ewma}}\n"+
			"spec:\n  ports: [{name: grpc, port: 50051}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"+
			"metadata: {name: fast, namespace: default, labels: {kubernetes.io/service-name: fast}}\n"+
			"addressType: IPv4\nports: [{name: grpc, port: %d, protocol: TCP}]\nendpoints: [{addresses: [127.0.0.1]}]\n", ports[0])
		for i := range n {
			// One slice per pod: each pod listens on its own loopback port.
			fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"+
				"metadata: {name: greeter-%d, namespace: default, labels: {kubernetes.io/service-name: greeter}}\n"+
				"addressType: IPv4\nports: [{name: grpc, port: %d, protocol: TCP}]\n"+
				"endpoints: [{addresses: [127.0.0.1], targetRef: {kind: Pod, name: greeter-%d}}]\n", i, ports[i], i)
		}
		tmp := filepath.Join(dir, ".greeter.yaml.tmp")
		if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "greeter.yaml")); err != nil {
			t.Fatal(err)
		}
	}
	write(2)

	addrs := make(chan [2]net.Addr, 1)
	var debugAddr net.Addr // set before addrs is sent to
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := Run(ctx, Config{
			Files: dir, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0", DrainTimeout: time.Second,
			Serving:      func(x, h net.Addr) { addrs <- [2]net.Addr{x, h} },
			ServingDebug: func(d net.Addr) { debugAddr = d },
		}, quiet)
		if err != nil {
			t.Errorf("control: %v", err)
		}
	}()
	var xdsAddr, httpAddr net.Addr
	select {
	case a := <-addrs:
		xdsAddr, httpAddr = a[0], a[1]
	case <-time.After(30 * time.Second):
		t.Fatal("control never served")
	}

	bs, err := xds.Bootstrap{Server: xdsAddr.String(), Pod: "client", Namespace: "default"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bs)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///greeter.default:50051", grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	seen := map[string]bool{}
	callUntilSeen := func(pods ...string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !allSeen(seen, pods) {
			if time.Now().After(deadline) {
				t.Fatalf("pods %v never all answered; saw %v", pods, seen)
			}
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := pb.NewGreeterClient(conn).SayHello(cctx, &pb.HelloRequest{Name: "files"})
			ccancel()
			if err != nil {
				t.Fatalf("call failed: %v", err)
			}
			seen[greeter.PodOf(r.GetMessage())] = true
		}
	}
	callUntilSeen("greeter-0", "greeter-1")
	write(3)
	callUntilSeen("greeter-2")

	// The peak-EWMA Cluster is accepted and serves calls: a config the
	// balancer rejected would be NACKed.
	fast, err := grpc.NewClient("xds:///fast.default:50051", grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
	defer ccancel()
	if _, err := pb.NewGreeterClient(fast).SayHello(cctx, &pb.HelloRequest{Name: "fast"}); err != nil {
		t.Fatalf("call through the peak-EWMA cluster: %v", err)
	}
	// The client table is on the debug address, not beside the probes.
	if resp, err := http.Get("http://" + httpAddr.String() + "/debug/clients"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/debug/clients on --http-address: %v %v; want 404", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := http.Get("http://" + debugAddr.String() + "/debug/clients")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var clients []struct {
		Types map[string]struct {
			Status     string   `json:"status"`
			Error      string   `json:"error"`
			Subscribed []string `json:"subscribed"`
		} `json:"types"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&clients); err != nil {
		t.Fatal(err)
	}
	// grpc-go runs one xDS client per target: find the one for fast.
	found := false
	for _, cl := range clients {
		c := cl.Types["cluster"]
		if !slices.Contains(c.Subscribed, "fast.default.svc.cluster.local:50051") {
			continue
		}
		found = true
		if c.Status != "ACKED" {
			t.Fatalf("fast's cluster state = %+v, want ACKED", c)
		}
	}
	if !found {
		t.Fatalf("no xDS client subscribed to fast's cluster: %+v", clients)
	}
}

func allSeen(seen map[string]bool, pods []string) bool {
	for _, p := range pods {
		if !seen[p] {
			return false
		}
	}
	return true
}
