package greeter

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	echopb "google.golang.org/grpc/examples/features/proto/echo"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

// serve starts a greeter named pod on a loopback port and returns its
// address and a stop function that waits for Serve to return.
func serve(t *testing.T, pod string) (string, func() error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Pod: pod}).Serve(ctx, lis) }()
	var once bool
	var result error
	stop := func() error {
		if !once {
			once = true
			cancel()
			result = <-done
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return lis.Addr().String(), stop
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestServerRepliesWithPodNameHealthAndReflection(t *testing.T) {
	addr, _ := serve(t, "pod-a")
	conn := dial(t, addr)
	ctx := context.Background()

	reply, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "world"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := reply.GetMessage(), "hostname:pod-a, in:world"; got != want {
		t.Errorf("reply %q, want %q", got, want)
	}
	if got := PodOf(reply.GetMessage()); got != "pod-a" {
		t.Errorf("PodOf(%q) = %q, want pod-a", reply.GetMessage(), got)
	}

	for _, svc := range []string{"", "helloworld.Greeter"} {
		h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q = %v, %v; want SERVING", svc, h.GetStatus(), err)
		}
	}

	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !slices.Contains(names, "helloworld.Greeter") || !slices.Contains(names, "grpc.health.v1.Health") {
		t.Errorf("reflection lists %v; want helloworld.Greeter and grpc.health.v1.Health", names)
	}
}

func TestServerStopsTakingCallsOnShutdown(t *testing.T) {
	addr, stop := serve(t, "pod-a")
	conn := dial(t, addr)
	client := pb.NewGreeterClient(conn)
	if _, err := client.SayHello(context.Background(), &pb.HelloRequest{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after graceful stop, want nil", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "x"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call after shutdown: %v, want Unavailable", err)
	}
}

func TestClientReusesOneConnection(t *testing.T) {
	addr, _ := serve(t, "pod-a")
	c := &Client{Target: func(service string) string {
		if service != "native-tools-2" {
			t.Errorf("Target asked for %q", service)
		}
		return addr
	}}
	defer c.Close()
	h := httptest.NewServer(c)
	defer h.Close()

	for i := 0; i < 3; i++ {
		body, code := get(t, h.URL+"/grpc_client?name=native-tools-2")
		if code != http.StatusOK || body != "Greeting: hostname:pod-a, in:world" {
			t.Fatalf("GET = %d %q", code, body)
		}
	}
	if n := len(c.conns); n != 1 {
		t.Errorf("client opened %d connections for 3 calls, want 1", n)
	}
	if _, code := get(t, h.URL+"/grpc_client"); code != http.StatusBadRequest {
		t.Errorf("GET without name = %d, want 400", code)
	}
}

func TestCallCountsPods(t *testing.T) {
	addr, _ := serve(t, "pod-b")
	tally := Call(context.Background(), dial(t, addr), 5, time.Second, nil)
	if tally.Calls != 5 || tally.Errors != 0 || tally.Pods["pod-b"] != 5 {
		t.Fatalf("tally = %+v, want 5 calls all on pod-b", tally)
	}
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode
}

// A delayed greeter holds each call for Delay, and gives it up when the
// caller's deadline ends first.
func TestServerDelayHoldsCallsUntilDeadline(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Pod: "slow", Delay: time.Hour}).Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })
	conn := dial(t, lis.Addr().String())

	callCtx, callCancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer callCancel()
	_, err = pb.NewGreeterClient(conn).SayHello(callCtx, &pb.HelloRequest{Name: "world"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call to a greeter delayed by an hour: err %v, want DeadlineExceeded", err)
	}
}

// The echo stream answers every message, in order, with the pod's name.
func TestServerEchoStream(t *testing.T) {
	addr, _ := serve(t, "pod-a")
	conn := dial(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := echopb.NewEchoClient(conn).BidirectionalStreamingEcho(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"one", "two", "three"} {
		if err := stream.Send(&echopb.EchoRequest{Message: msg}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if want := Reply("pod-a", msg); resp.GetMessage() != want {
			t.Errorf("echo of %q = %q, want %q", msg, resp.GetMessage(), want)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("after CloseSend: %v, want io.EOF", err)
	}
}

// TestServerWarnsOfSpentDeadline: a call whose grpc-timeout leaves it no
// time gets DEADLINE_EXCEEDED from grpc-go at once, and the greeter warns
// of it, naming the method and the peer; a call with time left does not
// warn. A grpc-go client never sends a spent timeout, so the calls are
// raw HTTP/2 requests.
func TestServerWarnsOfSpentDeadline(t *testing.T) {
	for _, tc := range []struct {
		timeout  string
		wantCode string
		warned   bool
	}{
		{timeout: "1n", wantCode: "4", warned: true},
		{timeout: "5S", wantCode: "0", warned: false},
	} {
		t.Run(tc.timeout, func(t *testing.T) {
			var log syncBuffer
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- (&Server{Pod: "p", Log: slog.New(slog.NewTextHandler(&log, nil))}).Serve(ctx, lis)
			}()
			defer func() { cancel(); <-done }()

			h2c := &http.Client{Transport: &http2.Transport{
				AllowHTTP: true,
				DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, addr)
				},
			}}
			// An empty HelloRequest: the 5-byte gRPC message header alone.
			req, err := http.NewRequest(http.MethodPost, "http://"+lis.Addr().String()+"/helloworld.Greeter/SayHello", bytes.NewReader(make([]byte, 5)))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("content-type", "application/grpc")
			req.Header.Set("te", "trailers")
			req.Header.Set("grpc-timeout", tc.timeout)
			resp, err := h2c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			h2c.CloseIdleConnections() // so that the server's graceful stop need not wait for it
			code := resp.Trailer.Get("grpc-status")
			if code == "" {
				code = resp.Header.Get("grpc-status") // trailers-only
			}
			if code != tc.wantCode {
				t.Errorf("grpc-timeout %s: grpc-status %q, want %s", tc.timeout, code, tc.wantCode)
			}
			warned := strings.Contains(log.String(), "call arrived with its deadline already passed")
			if warned != tc.warned || warned && !strings.Contains(log.String(), "method=/helloworld.Greeter/SayHello") {
				t.Errorf("grpc-timeout %s: log %q, want a warning naming the method: %v", tc.timeout, log.String(), tc.warned)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer the server's goroutines may log to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
