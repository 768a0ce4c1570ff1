package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	echopb "google.golang.org/grpc/examples/features/proto/echo"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/inject"
	"github.com/ballast-dev/ballast/xds/node"
)

// The article's second half, on the dev cluster: ballast control and the
// injector deployed from deploy/ as written, the injector registered with
// the real kube-apiserver, and the article's client pod, unchanged, in a
// namespace labelled for injection.

const (
	// meshNS is labelled ballast-injection=enabled and holds the
	// article's objects.
	meshNS = "mesh"
	// slowDelay is how long the slow greeter holds every call: far longer
	// than any test, so a call still in flight at the proxy after its
	// deadline or cancellation would show for the whole run.
	slowDelay = "1h"
)

// meshReady is set once ballast control and the injector serve; later
// tests reuse them.
var meshReady bool

// setupMesh deploys deploy/control and deploy/inject (once per run, see
// devcluster.InstallMesh) and waits until the API server's calls to the
// webhook inject pods in meshNS.
func setupMesh(t *testing.T, ctx context.Context) {
	t.Helper()
	if meshReady {
		return
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpState(t, meshNS, "ballast-system")
		}
	})
	if err := cluster.InstallMesh(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cluster.EnableInjection(ctx, meshNS); err != nil {
		t.Fatal(err)
	}
	meshReady = true
}

func deployDir(t *testing.T, name string) string {
	dir, err := filepath.Abs(filepath.Join("..", "..", "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// plainPod is a pod that sleeps; annotations may opt it out.
func plainPod(name string, annotations map[string]string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "app", Image: "host:sh",
				Command: []string{"sh", "-c", "while true; do sleep 1; done"}}},
		},
	}
}

// slowGreeter is a Deployment of one greeter that holds every call for
// slowDelay, behind the Service slow.
func slowGreeter(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: slow
  namespace: %[1]s
spec:
  selector: {app: slow}
  ports:
  - {name: grpc, port: 50051}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: slow
  namespace: %[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: slow}
  template:
    metadata:
      labels: {app: slow}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: greeter
        image: %[2]s
        command: ["ballast", "greeter", "serve", "--delay", "%[3]s"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe:
          grpc: {port: 50051}
          periodSeconds: 1
`, ns, image, slowDelay)
}

// meshArticle deploys the article in meshNS (once) and returns the greeter
// pods, all ready, with the client pod ready.
var meshArticleUp bool

func meshArticle(t *testing.T, ctx context.Context) []corev1.Pod {
	t.Helper()
	setupMesh(t, ctx)
	if !meshArticleUp {
		apply(t, ctx, devcluster.ArticleManifestsIn(meshNS, image, 3)+"---\n"+slowGreeter(meshNS))
		meshArticleUp = true
	}
	if err := cluster.WaitReadyEndpoints(ctx, meshNS, "native-tools-2", "grpc", 3, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := cluster.WaitReadyEndpoints(ctx, meshNS, "slow", "grpc", 1, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := cluster.WaitPodReady(ctx, meshNS, "native-tools", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	return waitReadyPods(t, ctx, meshNS, "native-tools-2", 3)
}

// TestSidecarArticle is the article's second half: the same client pod,
// unchanged (one connection to native-tools-2:50051 through DNS and the
// ClusterIP), in a namespace labelled for injection, gets the proxy, and
// its calls spread over the three greeters.
func TestSidecarArticle(t *testing.T) {
	ctx := ctxFor(t, 8*time.Minute)
	greeters := meshArticle(t, ctx)
	client, err := cluster.Client.CoreV1().Pods(meshNS).Get(ctx, "native-tools", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !devcluster.Injected(client) {
		t.Fatalf("client pod not injected: init containers %v", client.Spec.InitContainers)
	}
	if got := client.Spec.Containers; len(got) != 1 || got[0].Name != "client" {
		t.Fatalf("client pod's own containers changed: %v", got)
	}
	// The client's connection is already open from the readiness wait of
	// the pods; the xDS client may not have every endpoint yet. Warm up
	// until each greeter has answered once (bounded), then count.
	seen := map[string]int{}
	if err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		counts, err := cluster.ArticleCallsIn(ctx, meshNS, 3)
		if err != nil {
			return false, err
		}
		for p, n := range counts {
			seen[p] += n
		}
		return len(seen) == 3, nil
	}); err != nil {
		t.Fatalf("warm-up: only %v answered: %v", seen, err)
	}
	counts, err := cluster.ArticleCallsIn(ctx, meshNS, 30)
	if err != nil {
		t.Fatalf("30 calls through /grpc_client: %v (so far %v)", err, counts)
	}
	total, most := 0, 0
	for _, p := range greeters {
		if counts[p.Name] == 0 {
			t.Errorf("greeter %s answered none of the 30 calls: %v", p.Name, counts)
		}
	}
	for _, n := range counts {
		total += n
		most = max(most, n)
	}
	if total != 30 {
		t.Fatalf("%d of 30 calls counted: %v", total, counts)
	}
	maxMean := float64(most) / (float64(total) / float64(len(greeters)))
	// round_robin (the control plane's default) gives 1.00; one call of
	// ten moved gives 1.3.
	if maxMean > 1.3 {
		t.Errorf("max/mean %.2f over %v, want ≤ 1.3", maxMean, counts)
	}
	t.Logf("30 calls, one client connection, through the injected sidecar: %v (max/mean %.2f)", counts, maxMean)
	t.Logf("the client pod's sidecar: %s", proxyProcess(t, ctx, meshNS, "native-tools"))

	// One xDS client, one stream: the sidecar's listener subscription and
	// its target's chain share it.
	id := node.ID("native-tools", meshNS)
	var streams int
	if err := devcluster.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
		streams = controlStreams(ctx, id)
		return streams == 1, nil
	}); err != nil {
		t.Fatalf("the control plane holds %d ADS streams of the client pod's sidecar (%s), want 1", streams, id)
	}
}

// controlStreams counts the ADS streams of node id on every control-plane
// pod, from their /debug/clients.
func controlStreams(ctx context.Context, id string) int {
	list, err := cluster.Client.CoreV1().Pods(controlNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		return -1
	}
	n := 0
	for _, p := range list.Items {
		var streams []struct {
			NodeID string `json:"nodeId"`
		}
		if err := controlGet(ctx, p.Name, "/debug/clients", &streams); err != nil {
			continue
		}
		for _, s := range streams {
			if s.NodeID == id {
				n++
			}
		}
	}
	return n
}

// proxyProcess describes the pod's sidecar process as the kernel sees it:
// its uid and resident memory (a measurement, not a target).
func proxyProcess(t *testing.T, ctx context.Context, ns, pod string) string {
	t.Helper()
	netns, err := cluster.PodNetns(ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range strings.Fields(run(t, ctx, "ip", "netns", "pids", netns)) {
		cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, []byte("\x00--transparent-address\x00")) {
			continue
		}
		st, err := os.ReadFile("/proc/" + pid + "/status")
		if err != nil {
			continue
		}
		var fields []string
		for _, l := range strings.Split(string(st), "\n") {
			if k, _, _ := strings.Cut(l, ":"); k == "Uid" || k == "VmRSS" {
				fields = append(fields, strings.Join(strings.Fields(l), " "))
			}
		}
		return "pid " + pid + ": " + strings.Join(fields, ", ")
	}
	t.Errorf("no sidecar process in %s/%s's netns", ns, pod)
	return ""
}

// podGRPC dials target from inside the client pod's network namespace as
// root: the connection is caught by the pod's iptables rules and goes
// through its sidecar, as the app's own would.
func podGRPC(t *testing.T, ns, pod, target string) *grpc.ClientConn {
	t.Helper()
	dial, err := cluster.PodDialer(ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// proxyMetrics reads the sidecar's Prometheus text from its admin port in
// the pod (loopback is never redirected) and sums the samples of name
// whose line contains every one of match (say `service="slow.mesh`).
func proxyMetrics(t *testing.T, ctx context.Context, ns, pod, name string, match ...string) float64 {
	t.Helper()
	v, _, err := readMetric(ctx, ns, pod, name, match...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// readMetric is proxyMetrics returning its error, and the lines of name
// for a failure message.
func readMetric(ctx context.Context, ns, pod, name string, match ...string) (float64, string, error) {
	client, err := cluster.PodHTTPClient(ns, pod)
	if err != nil {
		return 0, "", err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:15021/metrics", nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("sidecar metrics of %s/%s: %w", ns, pod, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("sidecar metrics of %s/%s: %w", ns, pod, err)
	}
	sum := 0.0
	var family strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		family.WriteString(line + "\n")
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, "", fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	return sum, family.String(), nil
}

// waitMetric polls a sidecar metric until cond holds.
func waitMetric(t *testing.T, ctx context.Context, what, name string, cond func(float64) bool, match ...string) {
	t.Helper()
	var (
		v        float64
		lines    string
		last     error
		deadline = time.Now().Add(30 * time.Second)
	)
	for time.Now().Before(deadline) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		v, lines, last = readMetric(rctx, meshNS, "native-tools", name, match...)
		cancel()
		if last == nil && cond(v) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s: %s%v = %v (last error %v); the sidecar has:\n%s", what, name, match, v, last, lines)
}

// TestSidecarGRPCSemantics: unary, server- and bidi-streaming, deadline and
// cancellation, from inside the injected client pod to ClusterIPs, through
// its sidecar.
func TestSidecarGRPCSemantics(t *testing.T) {
	ctx := ctxFor(t, 8*time.Minute)
	greeters := meshArticle(t, ctx)
	target := net.JoinHostPort(clusterIP(t, ctx, meshNS, "native-tools-2"), "50051")
	conn := podGRPC(t, meshNS, "native-tools", target)
	// The label names the Service (its form follows the proxy's target:
	// name.namespace:port or the cluster's FQDN); match the prefix.
	const svc = `service="native-tools-2.` + meshNS
	const inFlight = "ballast_proxy_streams_in_flight"

	t.Run("unary over one connection reaches every pod", func(t *testing.T) {
		before := proxyMetrics(t, ctx, meshNS, "native-tools", "ballast_proxy_streams_total", svc, `code="OK"`)
		tally := greeter.Call(ctx, conn, 30, 10*time.Second, nil)
		if tally.Errors > 0 {
			t.Fatalf("%d of 30 calls failed: %v", tally.Errors, tally.LastError)
		}
		for _, p := range greeters {
			if tally.Pods[p.Name] == 0 {
				t.Errorf("greeter %s answered none of 30 calls over one connection: %v", p.Name, tally.Pods)
			}
		}
		// They went through the sidecar (not straight to one pod).
		waitMetric(t, ctx, "30 OK calls counted by the sidecar", "ballast_proxy_streams_total",
			func(v float64) bool { return v >= before+30 }, svc, `code="OK"`)
	})

	t.Run("status codes and messages pass through", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"})
		if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "unknown service") {
			t.Errorf("health check of an unknown service: %v, want NotFound from the greeter", err)
		}
		err = conn.Invoke(cctx, "/helloworld.Greeter/NoSuchMethod", &pb.HelloRequest{}, &pb.HelloReply{})
		if st := status.Convert(err); st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "NoSuchMethod") {
			t.Errorf("unknown method: %v, want Unimplemented naming it", err)
		}
	})

	t.Run("large messages both ways", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		name := strings.Repeat("x", 1<<20)
		reply, err := pb.NewGreeterClient(conn).SayHello(cctx, &pb.HelloRequest{Name: name})
		if err != nil {
			t.Fatalf("1 MiB request: %v", err)
		}
		if !strings.HasSuffix(reply.GetMessage(), "in:"+name) {
			t.Fatalf("1 MiB request: reply of %d bytes does not end with it", len(reply.GetMessage()))
		}
	})

	t.Run("server streaming", func(t *testing.T) {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		w, err := healthpb.NewHealthClient(conn).Watch(sctx, &healthpb.HealthCheckRequest{Service: pb.Greeter_ServiceDesc.ServiceName})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health watch: %v", resp.GetStatus())
		}
		waitMetric(t, ctx, "open watch is in flight at the sidecar", inFlight, func(v float64) bool { return v >= 1 }, svc)
		cancel()
		if _, err := w.Recv(); status.Code(err) != codes.Canceled {
			t.Fatalf("after cancel: %v, want Canceled", err)
		}
		waitMetric(t, ctx, "cancelled watch ends at the sidecar", inFlight, func(v float64) bool { return v == 0 }, svc)
	})

	t.Run("bidi streams: one pod per stream, streams spread", func(t *testing.T) {
		echo := echopb.NewEchoClient(conn)
		pods := map[string]int{}
		for s := range 6 {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			stream, err := echo.BidirectionalStreamingEcho(sctx)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			first := ""
			for i := range 5 {
				msg := fmt.Sprintf("stream %d message %d", s, i)
				if err := stream.Send(&echopb.EchoRequest{Message: msg}); err != nil {
					cancel()
					t.Fatal(err)
				}
				resp, err := stream.Recv()
				if err != nil {
					cancel()
					t.Fatal(err)
				}
				pod := greeter.PodOf(resp.GetMessage())
				if !strings.HasSuffix(resp.GetMessage(), "in:"+msg) {
					t.Errorf("stream %d: reply %q to %q", s, resp.GetMessage(), msg)
				}
				if first == "" {
					first = pod
				} else if pod != first {
					t.Errorf("stream %d moved from %s to %s mid-stream", s, first, pod)
				}
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != io.EOF {
				t.Errorf("stream %d end: %v, want EOF", s, err)
			}
			cancel()
			pods[first]++
		}
		if len(pods) < 2 {
			t.Errorf("6 streams on one connection all went to %v: not balanced per call", pods)
		}
		t.Logf("6 bidi streams over one connection, per pod: %v", pods)
	})

	slowTarget := net.JoinHostPort(clusterIP(t, ctx, meshNS, "slow"), "50051")
	slow := pb.NewGreeterClient(podGRPC(t, meshNS, "native-tools", slowTarget))
	const slowSvc = `service="slow.` + meshNS

	t.Run("deadline", func(t *testing.T) {
		ended := proxyMetrics(t, ctx, meshNS, "native-tools", "ballast_proxy_streams_total", slowSvc)
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := slow.SayHello(dctx, &pb.HelloRequest{Name: "deadline"})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call past its deadline: %v, want DeadlineExceeded", err)
		}
		// The server holds calls for an hour: the sidecar let go of the
		// upstream call because the deadline reached it.
		waitMetric(t, ctx, "call past its deadline ends at the sidecar", inFlight, func(v float64) bool { return v == 0 }, slowSvc)
		waitMetric(t, ctx, "the sidecar saw it end", "ballast_proxy_streams_total", func(v float64) bool { return v >= ended+1 },
			slowSvc)
	})

	t.Run("cancel", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		errc := make(chan error, 1)
		go func() {
			_, err := slow.SayHello(cctx, &pb.HelloRequest{Name: "cancel"})
			errc <- err
		}()
		waitMetric(t, ctx, "held call in flight at the sidecar", inFlight, func(v float64) bool { return v == 1 }, slowSvc)
		cancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Fatalf("cancelled call: %v, want Canceled", err)
		}
		waitMetric(t, ctx, "cancelled call ends at the sidecar", inFlight, func(v float64) bool { return v == 0 }, slowSvc)
	})
}

// TestSidecarPassthrough: what the sidecar does not balance it passes
// through untouched, on the intercepted path: HTTP/1 to a Service's
// ClusterIP (the control plane's HTTP port), and gRPC to a pod IP, which
// is no Service's address and so stays on that pod.
func TestSidecarPassthrough(t *testing.T) {
	ctx := ctxFor(t, 8*time.Minute)
	greeters := meshArticle(t, ctx)

	t.Run("HTTP/1 to a ClusterIP", func(t *testing.T) {
		before := proxyMetrics(t, ctx, meshNS, "native-tools", "ballast_proxy_passthrough_connections_total", `reason="not_http2"`)
		client, err := cluster.PodHTTPClient(meshNS, "native-tools")
		if err != nil {
			t.Fatal(err)
		}
		url := "http://" + net.JoinHostPort(clusterIP(t, ctx, "ballast-system", "ballast-control"), "15014") + "/healthz"
		for range 3 {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("GET %s from the injected pod: %v", url, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
			}
		}
		waitMetric(t, ctx, "3 HTTP/1 connections passed through", "ballast_proxy_passthrough_connections_total",
			func(v float64) bool { return v >= before+3 }, `reason="not_http2"`)
	})

	t.Run("gRPC to a pod IP stays on that pod", func(t *testing.T) {
		before := proxyMetrics(t, ctx, meshNS, "native-tools", "ballast_proxy_passthrough_connections_total", `reason="unknown_destination"`)
		pod := greeters[0]
		conn := podGRPC(t, meshNS, "native-tools", net.JoinHostPort(pod.Status.PodIP, "50051"))
		tally := greeter.Call(ctx, conn, 20, 10*time.Second, nil)
		if tally.Errors > 0 {
			t.Fatalf("%d of 20 calls failed: %v", tally.Errors, tally.LastError)
		}
		if got := slices.Collect(maps.Keys(tally.Pods)); len(got) != 1 || got[0] != pod.Name {
			t.Fatalf("20 calls to %s's IP answered by %v, want only %s", pod.Name, tally.Pods, pod.Name)
		}
		waitMetric(t, ctx, "the connection passed through", "ballast_proxy_passthrough_connections_total",
			func(v float64) bool { return v >= before+1 }, `reason="unknown_destination"`)
	})
}

// TestInjection: against the real API server, the webhook injects pods in
// labelled namespaces only, honours the per-pod opt-out, and when it is
// down pods are still created (failurePolicy Ignore), without the sidecar.
// The injected pod runs: iptables installed by the init container, and
// the proxy, as uid 1337, excluded from them.
func TestInjection(t *testing.T) {
	ctx := ctxFor(t, 8*time.Minute)
	setupMesh(t, ctx)
	const plainNS = "no-injection"
	apply(t, ctx, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+plainNS+"\n")
	tests := []struct {
		name, ns    string
		annotations map[string]string
		want        bool
	}{
		{"labelled namespace", meshNS, nil, true},
		{"unlabelled namespace", plainNS, nil, false},
		{"opt-out annotation", meshNS, map[string]string{inject.OptOutAnnotation: "false"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "inject-" + strings.ReplaceAll(tt.name, " ", "-")
			began := time.Now()
			pod, err := cluster.Client.CoreV1().Pods(tt.ns).Create(ctx, plainPod(name, tt.annotations), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cluster.Client.CoreV1().Pods(tt.ns).Delete(context.Background(), name, metav1.DeleteOptions{})
			})
			if got := devcluster.Injected(pod); got != tt.want {
				t.Fatalf("injected = %v, want %v; init containers %v", got, tt.want, pod.Spec.InitContainers)
			}
			if err := cluster.WaitPodReady(ctx, tt.ns, name, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
			t.Logf("created → Ready in %s (injected %v)", time.Since(began).Round(100*time.Millisecond), tt.want)
			netns, err := cluster.PodNetns(tt.ns, name)
			if err != nil {
				t.Fatal(err)
			}
			rules := output(ctx, "ip", "netns", "exec", netns, "iptables", "-t", "nat", "-S", "BALLAST_OUTPUT")
			if has := strings.Contains(rules, "--uid-owner 1337 -j RETURN"); has != tt.want {
				t.Fatalf("BALLAST_OUTPUT excludes uid 1337 = %v, want %v:\n%s", has, tt.want, rules)
			}
			if !tt.want {
				return
			}
			ss := run(t, ctx, "ip", "netns", "exec", netns, "ss", "-Htlne", "sport", "=", ":15001")
			if !strings.Contains(ss, "uid:1337") {
				t.Fatalf("the proxy's listener is not owned by uid 1337:\n%s", ss)
			}
		})
	}

	// A webhook that accepts connections but never answers: the API
	// server gives up after the registration's timeoutSeconds and, with
	// failurePolicy Ignore, creates the pod as it is.
	t.Run("webhook hangs", func(t *testing.T) {
		// Every injector replica hangs, once a rollout (of an install
		// before) has left only the ones the Deployment wants.
		var injectors []string
		if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
			dep, err := cluster.Client.AppsV1().Deployments("ballast-system").Get(ctx, "ballast-inject", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			pods, err := cluster.Client.CoreV1().Pods("ballast-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=ballast-inject"})
			if err != nil {
				return false, nil
			}
			injectors = nil
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil {
					injectors = append(injectors, p.Name)
				}
			}
			want := int32(1)
			if dep.Spec.Replicas != nil {
				want = *dep.Spec.Replicas
			}
			return len(injectors) == len(pods.Items) && int32(len(injectors)) == want && dep.Status.ReadyReplicas == want, nil
		}); err != nil {
			t.Fatalf("injector pods %v not settled: %v", injectors, err)
		}
		var pids []string
		for _, name := range injectors {
			netns, err := cluster.PodNetns("ballast-system", name)
			if err != nil {
				t.Fatal(err)
			}
			in := strings.Fields(run(t, ctx, "ip", "netns", "pids", netns))
			if len(in) == 0 {
				t.Fatalf("no process in the injector's netns %s", netns)
			}
			pids = append(pids, in...)
		}
		t.Cleanup(func() { run(t, ctx, "kill", append([]string{"-CONT"}, pids...)...) })
		run(t, ctx, "kill", append([]string{"-STOP"}, pids...)...)
		const name = "webhook-hangs"
		began := time.Now()
		pod, err := cluster.Client.CoreV1().Pods(meshNS).Create(ctx, plainPod(name, nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("pod creation with the webhook hanging: %v (failurePolicy Ignore, timeoutSeconds)", err)
		}
		took := time.Since(began)
		t.Cleanup(func() {
			cluster.Client.CoreV1().Pods(meshNS).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
		if devcluster.Injected(pod) {
			t.Fatal("injected by a stopped webhook?")
		}
		t.Logf("pod created without the sidecar in %s while the injector was stopped", took.Round(time.Millisecond))
	})

	t.Run("webhook down", func(t *testing.T) {
		kubectl(t, ctx, "-n", "ballast-system", "scale", "deployment/ballast-inject", "--replicas=0")
		t.Cleanup(func() {
			// Leave it serving for whatever runs next.
			kubectl(t, ctx, "-n", "ballast-system", "scale", "deployment/ballast-inject", "--replicas=1")
			if err := cluster.WaitReadyEndpoints(ctx, "ballast-system", "ballast-inject", "https", 1, 2*time.Minute); err != nil {
				t.Error(err)
			}
			if err := cluster.WaitInjecting(ctx, meshNS, true); err != nil {
				t.Fatal(err)
			}
		})
		if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
			ready, terminating, err := cluster.ReadyEndpoints(ctx, "ballast-system", "ballast-inject", "https")
			return err == nil && ready == 0 && terminating == 0, nil
		}); err != nil {
			t.Fatalf("injector endpoint still there: %v", err)
		}
		const name = "webhook-down"
		began := time.Now()
		pod, err := cluster.Client.CoreV1().Pods(meshNS).Create(ctx, plainPod(name, nil), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("pod creation with the webhook down: %v (failurePolicy must be Ignore)", err)
		}
		took := time.Since(began)
		t.Cleanup(func() {
			cluster.Client.CoreV1().Pods(meshNS).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
		if devcluster.Injected(pod) {
			t.Fatal("injected with the webhook down?")
		}
		if err := cluster.WaitPodReady(ctx, meshNS, name, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("pod created without the sidecar in %s while the injector had no endpoint", took.Round(time.Millisecond))
	})
}

// output runs a command and returns its combined output, failed or not.
func output(ctx context.Context, name string, args ...string) string {
	out, _ := osexec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out)
}

// dumpState logs what a failed test needs to see: pods, their container
// states, and EndpointSlices of the namespaces.
func dumpState(t *testing.T, namespaces ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range namespaces {
		out, err := cluster.Kubectl(ctx, nil, "-n", ns, "get", "pods,endpointslices", "-o", "wide")
		t.Logf("namespace %s:\n%s%v", ns, out, err)
		out, _ = cluster.Kubectl(ctx, nil, "-n", ns, "get", "pods", "-o",
			`jsonpath={range .items[*]}{.metadata.name}{": "}{.status.conditions}{" init="}{.status.initContainerStatuses}{" containers="}{.status.containerStatuses}{"\n"}{end}`)
		t.Logf("namespace %s pod status:\n%s", ns, out)
	}
}
