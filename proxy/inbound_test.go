package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "google.golang.org/grpc/examples/helloworld/helloworld"

	"github.com/ballast-dev/ballast/greeter"
)

// inboundProxy runs a proxy with only an inbound listener. Connections
// from source 127.0.0.2 "were going to" app, those from 127.0.0.3 to
// httpApp (iptables sets this in production; see the netns test); any
// other source reads as a connection made to the listener itself.
func inboundProxy(t *testing.T, app, httpApp netip.AddrPort) (*runningProxy, net.Listener) {
	t.Helper()
	lis := listen(t)
	p, err := New(Options{
		Inbound: lis,
		OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
			switch c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().String() {
			case "127.0.0.2":
				return app, nil
			case "127.0.0.3":
				return httpApp, nil
			}
			return c.LocalAddr().(*net.TCPAddr).AddrPort(), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return start(t, p), lis
}

// dialInbound connects a grpc-go client to the inbound listener from
// source.
func dialInbound(t *testing.T, lis net.Listener, source string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	d := dialerFrom(source)
	return dial(t, "passthrough:///"+lis.Addr().String(), append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}))...)
}

// histogramCount reads how many observations a histogram child has.
func histogramCount(t *testing.T, o prometheus.Observer) uint64 {
	t.Helper()
	var d dto.Metric
	if err := o.(prometheus.Metric).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.Histogram.GetSampleCount()
}

// TestInbound: calls into the pod reach the app through the inbound
// listener with their metadata and status, and each is counted by the
// app's port and its status code, with its duration observed.
func TestInbound(t *testing.T) {
	svc := newTestService()
	app := netip.MustParseAddrPort(startTestService(t, svc))
	httpApp := serveHTTP(t, "plain http")
	p, lis := inboundProxy(t, app, httpApp)
	port := strconv.Itoa(int(app.Port()))
	client := testpb.NewTestServiceClient(dialInbound(t, lis, "127.0.0.2"))

	tests := []struct {
		name string
		code codes.Code
	}{
		{"ok", codes.OK},
		{"not found", codes.NotFound},
		{"permission denied", codes.PermissionDenied},
		{"ok again", codes.OK},
	}
	want := map[codes.Code]float64{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &testpb.SimpleRequest{ResponseSize: 3}
			if tc.code != codes.OK {
				req.ResponseStatus = &testpb.EchoStatus{Code: int32(tc.code), Message: tc.name}
			}
			var hdr, trl metadata.MD
			ctx := metadata.AppendToOutgoingContext(t.Context(), "x-req", tc.name)
			resp, err := client.UnaryCall(ctx, req, grpc.Header(&hdr), grpc.Trailer(&trl))
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, err, tc.code)
			}
			if tc.code == codes.OK && len(resp.GetPayload().GetBody()) != 3 {
				t.Fatalf("payload %d bytes, want 3", len(resp.GetPayload().GetBody()))
			}
			if tc.code != codes.OK && status.Convert(err).Message() != tc.name {
				t.Fatalf("message %q, want %q", status.Convert(err).Message(), tc.name)
			}
			if got := trl.Get("x-trailer"); len(got) != 1 || got[0] != "t-"+tc.name {
				t.Fatalf("trailer %v, want t-%s", got, tc.name)
			}
			want[tc.code]++
		})
	}
	m := p.inbound.metrics
	for c, n := range want {
		if got := metricValue(m.requests.WithLabelValues(port, c.String())); got != n {
			t.Errorf("ballast_proxy_inbound_requests_total{port=%s,code=%s} = %v, want %v", port, c, got, n)
		}
	}
	if got := histogramCount(t, m.duration.WithLabelValues(port)); got != uint64(len(tests)) {
		t.Errorf("duration observations %d, want %d", got, len(tests))
	}
	if got := metricValue(m.inFlight.WithLabelValues(port)); got != 0 {
		t.Errorf("in flight %v after every call ended, want 0", got)
	}
	if got := metricValue(p.metrics.streams.WithLabelValues(app.String(), "OK")); got != 0 {
		t.Errorf("inbound calls counted as outbound streams: %v", got)
	}

	t.Run("server streaming", func(t *testing.T) {
		stream, err := client.StreamingOutputCall(t.Context(), &testpb.StreamingOutputCallRequest{
			ResponseParameters: []*testpb.ResponseParameters{{Size: 1}, {Size: 2}, {Size: 3}},
		})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			_, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n != 3 {
			t.Fatalf("%d responses, want 3", n)
		}
	})

	t.Run("plain HTTP passes through", func(t *testing.T) {
		tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dialerFrom("127.0.0.3").DialContext(ctx, "tcp", lis.Addr().String())
		}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + httpApp.String())
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != "plain http" {
			t.Fatalf("body %q, %v", body, err)
		}
		if got := metricValue(p.metrics.passthrough.WithLabelValues(reasonInboundNotHTTP2)); got != 1 {
			t.Fatalf("passthrough{%s} = %v, want 1", reasonInboundNotHTTP2, got)
		}
	})

	t.Run("a connection made to the listener itself is closed", func(t *testing.T) {
		c, err := dialerFrom("127.0.0.4").Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("read %d bytes, %v; want EOF (closed, not forwarded to itself)", n, err)
		}
	})
}

// TestInboundAppDown: when the app does not accept connections, callers
// must stop picking this pod. A new caller connection is closed before the
// HTTP/2 handshake (as a refused connection would be); a call on a
// connection made while the app was up is refused (GOAWAY, then
// REFUSED_STREAM: it never reached the app), so grpc-go retries it on a
// new connection, which is closed in turn. Either way the call fails
// Unavailable here, and a balancer with another pod would have sent it
// there (see TestInboundPodShutdown).
func TestInboundAppDown(t *testing.T) {
	t.Run("down before the caller connects", func(t *testing.T) {
		lis := listen(t)
		app := lis.Addr().(*net.TCPAddr).AddrPort()
		lis.Close() // nothing listens there now
		p, inLis := inboundProxy(t, app, app)
		client := testpb.NewTestServiceClient(dialInbound(t, inLis, "127.0.0.2"))
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable {
			t.Fatalf("call to a closed app port: %v, want Unavailable", err)
		}
		port := strconv.Itoa(int(app.Port()))
		if got := metricValue(p.inbound.metrics.requests.WithLabelValues(port, "Unavailable")); got != 0 {
			t.Fatalf("requests{code=Unavailable} %v, want 0: the connection should close before any call", got)
		}
	})
	t.Run("down after the caller connected", func(t *testing.T) {
		svc := newTestService()
		appLis := listen(t)
		app := appLis.Addr().(*net.TCPAddr).AddrPort()
		gs := grpc.NewServer()
		testpb.RegisterTestServiceServer(gs, svc)
		served := make(chan struct{})
		go func() { defer close(served); gs.Serve(appLis) }()
		t.Cleanup(func() { gs.Stop(); <-served })
		p, inLis := inboundProxy(t, app, app)
		conn := dialInbound(t, inLis, "127.0.0.2")
		client := testpb.NewTestServiceClient(conn)
		if _, err := client.UnaryCall(t.Context(), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		gs.Stop() // the app goes; the caller's connection to the proxy stays
		<-served
		// Once the proxy has seen its connection to the app end (a call
		// racing that would be lost with it, as with any hard stop).
		up, err := p.inbound.upstreams.get(appTarget(app))
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "the proxy's connection to the app closed", func() bool {
			h := hostOf(t, up, "")
			h.mu.Lock()
			defer h.mu.Unlock()
			return len(h.live) == 0
		})
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call after the app stopped: %v, want Unavailable", err)
		}
		port := strconv.Itoa(int(app.Port()))
		// The first attempt reached the proxy and was refused; the
		// transparent retry found the pod's connections closed.
		if got := metricValue(p.inbound.metrics.appErrors.WithLabelValues(port)); got != 1 {
			t.Fatalf("app errors %v, want 1", got)
		}
		if got := metricValue(p.inbound.metrics.requests.WithLabelValues(port, "Unavailable")); got != 1 {
			t.Fatalf("requests{code=Unavailable} %v, want 1", got)
		}
	})
}

// TestInboundDrain: on shutdown the inbound side sends GOAWAY (the
// caller's connection leaves READY, so its next calls go to other pods),
// the call in flight completes, and Serve returns only after it.
func TestInboundDrain(t *testing.T) {
	svc := newTestService()
	app := netip.MustParseAddrPort(startTestService(t, svc))
	lis := listen(t)
	p, err := New(Options{
		Inbound:     lis,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return app, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(int(app.Port()))
	checkDrain(t, p, lis.Addr().String(), func() {
		if got := metricValue(p.inbound.metrics.inFlight.WithLabelValues(port)); got != 1 {
			t.Fatalf("in flight %v, want 1", got)
		}
	})
	if got := metricValue(p.inbound.metrics.requests.WithLabelValues(port, "OK")); got != 1 {
		t.Fatalf("requests{code=OK} = %v after the drained call, want 1", got)
	}
	if _, err := net.DialTimeout("tcp", lis.Addr().String(), time.Second); err == nil {
		t.Fatal("inbound listener still accepts after shutdown")
	}
}

// TestInboundPodShutdown is a pod going away under load, as Kubernetes
// stops it: the app (a greeter, which stops gracefully) and its proxy get
// the signal at the same moment. A caller balancing over two such pods
// loses no call: calls in flight finish, the proxy's GOAWAY moves new
// calls to the other pod, and a call that arrives after the app closed
// its listener is refused, which grpc-go retries elsewhere.
func TestInboundPodShutdown(t *testing.T) {
	type pod struct {
		lis  net.Listener
		stop context.CancelFunc
		done chan struct{}
	}
	startPod := func(name string) *pod {
		appLis := listen(t)
		app := appLis.Addr().(*net.TCPAddr).AddrPort()
		lis := listen(t)
		p, err := New(Options{Inbound: lis, OriginalDst: func(net.Conn) (netip.AddrPort, error) { return app, nil }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		var both sync.WaitGroup
		both.Go(func() { (&greeter.Server{Pod: name}).Serve(ctx, appLis) })
		both.Go(func() {
			if err := p.Serve(ctx); err != nil {
				t.Errorf("%s proxy: %v", name, err)
			}
		})
		go func() { both.Wait(); close(done) }()
		t.Cleanup(func() {
			stop()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Errorf("%s did not stop", name)
			}
		})
		eventually(t, name+" proxy ready", p.Ready)
		return &pod{lis: lis, stop: stop, done: done}
	}
	a, b := startPod("pod-a"), startPod("pod-b")
	target, resolve := staticTarget([]string{a.lis.Addr().String(), b.lis.Addr().String()})
	conn := dial(t, target, grpc.WithResolvers(resolve), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	if pods := spread(t, conn, 2, 10); len(pods) != 2 {
		t.Fatalf("calls reached %v, want both pods", pods)
	}

	// Load: a few callers, each making calls back to back until stopped
	// (bounded in count). A call the test's own stop cancels is not lost.
	ctx, stopLoad := context.WithCancel(t.Context())
	defer stopLoad()
	const callers, maxCalls = 4, 5000
	type result struct {
		calls int
		lost  []error
	}
	results := make(chan result, callers)
	client := pb.NewGreeterClient(conn)
	for range callers {
		go func() {
			var r result
			for ; r.calls < maxCalls && ctx.Err() == nil; r.calls++ {
				callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := client.SayHello(callCtx, &pb.HelloRequest{Name: "load"})
				cancel()
				if err != nil && ctx.Err() == nil {
					r.lost = append(r.lost, err)
				}
			}
			results <- r
		}()
	}
	a.stop() // SIGTERM to the app and the proxy of pod a
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("pod a did not stop:\n%s", buf[:runtime.Stack(buf, true)])
	}
	// Calls keep flowing, to pod b only, after a is gone.
	after := greeter.Call(t.Context(), conn, 20, 10*time.Second, nil)
	stopLoad()
	var calls int
	var lost []error
	for range callers {
		r := <-results
		calls += r.calls
		lost = append(lost, r.lost...)
	}
	t.Logf("%d calls while pod a stopped", calls)
	if len(lost) > 0 {
		t.Fatalf("%d of %d calls lost while pod a stopped: %v", len(lost), calls, lost)
	}
	if after.Errors > 0 || after.Pods["pod-b"] != 20 {
		t.Fatalf("after pod a stopped: %+v, want 20 calls on pod-b", after)
	}
}
