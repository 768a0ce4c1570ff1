package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/encoding/gzip"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/greeter"
)

// transportStream is the part of grpc-go's server transport stream that
// says which compression a call arrived with.
type transportStream interface {
	RecvCompress() string
}

// testService is the upstream for semantics tests: grpc's interop
// TestService, with behaviours chosen by request metadata.
type testService struct {
	testpb.UnimplementedTestServiceServer
	// started receives the deadline (zero if none) of a call told to block
	// ("x-block"); ended receives the context error it saw when it ended.
	started chan time.Time
	ended   chan error
	// sent counts streamed responses the server's Send accepted.
	sent atomic.Int64
}

func newTestService() *testService {
	return &testService{started: make(chan time.Time, 1), ended: make(chan error, 1)}
}

// UnaryCall echoes metadata into headers and trailers, blocks until the
// call ends when asked, returns the requested status with a detail, and
// otherwise answers with a payload of the requested size.
func (s *testService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	hdr := metadata.MD{"x-echo": md.Get("x-req"), "x-echo-bin": md.Get("x-req-bin")}
	if ts, ok := grpc.ServerTransportStreamFromContext(ctx).(transportStream); ok {
		hdr.Set("x-recv-compress", ts.RecvCompress())
	}
	grpc.SetHeader(ctx, hdr)
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t-"+strings.Join(md.Get("x-req"), ",")))
	if len(md.Get("x-block")) > 0 {
		deadline, _ := ctx.Deadline()
		s.started <- deadline
		<-ctx.Done()
		s.ended <- ctx.Err()
		return nil, ctx.Err()
	}
	if st := req.GetResponseStatus(); st != nil {
		s, err := status.New(codes.Code(st.GetCode()), st.GetMessage()).WithDetails(wrapperspb.String("detail:" + st.GetMessage()))
		if err != nil {
			return nil, err
		}
		return nil, s.Err()
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: bytes.Repeat([]byte{'r'}, int(req.GetResponseSize()))}}, nil
}

// StreamingOutputCall sends one response per requested size. Asked to
// ("x-header-first"), it sends headers and then waits for the call to end
// without sending a message.
func (s *testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	if md, _ := metadata.FromIncomingContext(stream.Context()); len(md.Get("x-header-first")) > 0 {
		if err := stream.SendHeader(metadata.Pairs("x-early", "1")); err != nil {
			return err
		}
		<-stream.Context().Done()
		s.ended <- stream.Context().Err()
		return stream.Context().Err()
	}
	for _, p := range req.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
		s.sent.Add(1)
	}
	return nil
}

func (s *testService) StreamingInputCall(stream grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	var total int32
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
		if err != nil {
			return err
		}
		total += int32(len(req.GetPayload().GetBody()))
	}
}

// FullDuplexCall answers each request at once with a payload of its first
// response size, so a client can ping-pong. Asked to ("x-abort-after"), it
// ends the call with Aborted after answering the first request, while the
// client may still be sending.
func (s *testService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	abort := len(md.Get("x-abort-after")) > 0
	for answered := false; ; answered = true {
		if abort && answered {
			return status.Error(codes.Aborted, "server gave up")
		}
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var size int32
		if ps := req.GetResponseParameters(); len(ps) > 0 {
			size = ps[0].GetSize()
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, size)}}); err != nil {
			return err
		}
	}
}

const bigMessage = 8 << 20

// startTestService serves s on loopback and returns its address.
func startTestService(t testing.TB, s testpb.TestServiceServer) string {
	t.Helper()
	lis := listen(t)
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(2*bigMessage), grpc.MaxSendMsgSize(2*bigMessage))
	testpb.RegisterTestServiceServer(gs, s)
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

// proxiedTestService starts a test service behind a proxy and returns a
// client of it through the proxy.
func proxiedTestService(t *testing.T) (*testService, testpb.TestServiceClient, *runningProxy) {
	svc := newTestService()
	addr := startTestService(t, svc)
	p, proxyAddr := startOutbound(t, addr, Options{})
	conn := dial(t, proxyAddr, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*bigMessage), grpc.MaxCallSendMsgSize(2*bigMessage)))
	return svc, testpb.NewTestServiceClient(conn), p
}

// TestUnaryBalancedPerCall is the point of the sidecar: one client
// connection, calls spread over every backend.
func TestUnaryBalancedPerCall(t *testing.T) {
	target, resolve := staticTarget(startGreeters(t, 3))
	p, addr := startOutbound(t, target, Options{Resolvers: []resolver.Builder{resolve}})
	conn := dial(t, addr)
	up, _ := p.upstreams.get(target)
	if got := metricValue(up.metrics.streams[codes.OK]); got != 0 {
		t.Fatalf("ballast_proxy_streams_total{code=OK} = %v before any call", got)
	}
	if pods := spread(t, conn, 3, 30); !even(pods, 3, 30) {
		t.Fatalf("30 calls over one connection reached pods %v, want 10 on each of 3", pods)
	}
	if got := metricValue(up.metrics.streams[codes.OK]); got < 30 {
		t.Errorf("ballast_proxy_streams_total{code=OK} = %v, want at least the 30 counted calls", got)
	}
}

func TestStreamingKinds(t *testing.T) {
	_, client, _ := proxiedTestService(t)
	ctx := t.Context()

	t.Run("server streaming", func(t *testing.T) {
		sizes := []int32{1, 10, 100, 1000}
		req := &testpb.StreamingOutputCallRequest{}
		for _, s := range sizes {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: s})
		}
		stream, err := client.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var got []int32
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, int32(len(resp.GetPayload().GetBody())))
		}
		if !slices.Equal(got, sizes) {
			t.Fatalf("response sizes %v, want %v", got, sizes)
		}
	})

	t.Run("client streaming", func(t *testing.T) {
		stream, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{3, 5, 7} {
			if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, n)}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetAggregatedPayloadSize() != 15 {
			t.Fatalf("aggregated size %d, want 15", resp.GetAggregatedPayloadSize())
		}
	})

	t.Run("bidi ping-pong", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range int32(5) {
			req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: i + 1}}}
			if err := stream.Send(req); err != nil {
				t.Fatal(err)
			}
			// The reply to each message arrives before the next is sent:
			// the proxy forwards each message as it comes, not in batches.
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if got := int32(len(resp.GetPayload().GetBody())); got != i+1 {
				t.Fatalf("reply %d has %d bytes, want %d", i, got, i+1)
			}
		}
		stream.CloseSend()
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after half-close got %v, want EOF", err)
		}
	})
}

// TestHeadersBeforeMessages: response headers reach the client as soon as
// the server sends them, before any message; and the client's cancel then
// reaches the server.
func TestHeadersBeforeMessages(t *testing.T) {
	svc, client, _ := proxiedTestService(t)
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(t.Context(), "x-header-first", "1"))
	stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-early"); !slices.Equal(got, []string{"1"}) {
		t.Fatalf("header x-early %q, want [1]", got)
	}
	cancel()
	select {
	case err := <-svc.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("server stream ended with %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server never saw the cancellation")
	}
}

// TestServerEndsStreamEarly: the server ends a bidi call with an error while
// the client is still sending; the client gets that status.
func TestServerEndsStreamEarly(t *testing.T) {
	_, client, _ := proxiedTestService(t)
	stream, err := client.FullDuplexCall(metadata.AppendToOutgoingContext(t.Context(), "x-abort-after", "1"))
	if err != nil {
		t.Fatal(err)
	}
	req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// Keep sending until the proxy reports the end of the call (a Send
	// after it returns io.EOF), bounded.
	for range 1000 {
		if err := stream.Send(req); err != nil {
			break
		}
	}
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if st := status.Convert(err); st.Code() != codes.Aborted || st.Message() != "server gave up" {
			t.Fatalf("got %v, want Aborted: server gave up", err)
		}
		break
	}
}

func TestMetadataAndStatus(t *testing.T) {
	_, client, _ := proxiedTestService(t)
	tests := []struct {
		name      string
		req       *testpb.SimpleRequest
		opts      []grpc.CallOption
		wantCode  codes.Code
		wantMsg   string
		wantCompr string
	}{
		{name: "ok", req: &testpb.SimpleRequest{ResponseSize: 3}, wantCode: codes.OK},
		{name: "gzip request", req: &testpb.SimpleRequest{ResponseSize: 3}, opts: []grpc.CallOption{grpc.UseCompressor(gzip.Name)}, wantCode: codes.OK, wantCompr: "gzip"},
		{name: "error with details", req: &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "not today"}}, wantCode: codes.FailedPrecondition, wantMsg: "not today"},
		{name: "unicode message", req: &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "nö: 100% missing\n"}}, wantCode: codes.NotFound, wantMsg: "nö: 100% missing\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(t.Context(), "x-req", "a", "x-req", "b", "x-req-bin", string([]byte{0, 1, 255}))
			var hdr, trl metadata.MD
			resp, err := client.UnaryCall(ctx, tc.req, append(tc.opts, grpc.Header(&hdr), grpc.Trailer(&trl))...)
			st := status.Convert(err)
			if st.Code() != tc.wantCode || st.Message() != tc.wantMsg {
				t.Fatalf("status %v %q, want %v %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
			if tc.wantCode == codes.OK && len(resp.GetPayload().GetBody()) != 3 {
				t.Fatalf("payload %d bytes, want 3", len(resp.GetPayload().GetBody()))
			}
			if tc.wantMsg != "" {
				details := st.Details()
				if len(details) != 1 || !proto.Equal(details[0].(proto.Message), wrapperspb.String("detail:"+tc.wantMsg)) {
					t.Fatalf("details %v, want one StringValue %q", details, "detail:"+tc.wantMsg)
				}
			}
			if got := hdr.Get("x-echo"); !slices.Equal(got, []string{"a", "b"}) {
				t.Errorf("header x-echo %q, want [a b] (request metadata reached the server in order)", got)
			}
			if got := hdr.Get("x-echo-bin"); len(got) != 1 || got[0] != string([]byte{0, 1, 255}) {
				t.Errorf("header x-echo-bin %q, want the binary value", got)
			}
			if got := hdr.Get("x-recv-compress"); !slices.Equal(got, []string{tc.wantCompr}) {
				t.Errorf("server received compression %q, want %q", got, tc.wantCompr)
			}
			if got := trl.Get("x-trailer"); !slices.Equal(got, []string{"t-a,b"}) {
				t.Errorf("trailer x-trailer %q, want [t-a,b]", got)
			}
		})
	}
}

// TestBackpressure: a client that stops reading a stream stops the server
// sending it (the proxy gives flow-control credit back only for bytes it
// wrote, so it buffers a window, not the stream), while other calls on the
// same client connection go on; once the client reads, everything arrives.
func TestBackpressure(t *testing.T) {
	svc, client, _ := proxiedTestService(t)
	const n, size = 48, 1 << 20
	req := &testpb.StreamingOutputCallRequest{}
	for range n {
		req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: size})
	}
	stream, err := client.StreamingOutputCall(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	// The sender has stalled once its count stops moving: then the windows
	// on the way are full, and what it sent is all it will send until the
	// client reads. (Without backpressure it would have sent all n, and
	// stopped there.)
	stalledAt := waitStalled(t, "the server's sends", svc.sent.Load)
	for i := range 10 {
		if _, err := client.UnaryCall(t.Context(), &testpb.SimpleRequest{ResponseSize: 10}); err != nil {
			t.Fatalf("unary call %d beside the stalled stream: %v", i, err)
		}
	}
	// Windows on the way (the client's, at most 16 MiB with grpc-go's BDP
	// estimate, the proxy's 1 MiB per stream, the server's write quota and
	// the proxy's one buffered frame each way) hold at most maxHeld.
	const maxHeld = 20 // responses of 1 MiB
	t.Logf("the server sent %d of %d responses before the client read any", stalledAt, n)
	if stalledAt > maxHeld {
		t.Fatalf("the server sent %d MiB to a client that read none, before stalling: more than the %d MiB the windows hold", stalledAt, maxHeld)
	}
	if got := svc.sent.Load(); got != stalledAt {
		t.Fatalf("the stalled server sent %d responses, then %d while other calls ran: the unary calls opened the stream's window", stalledAt, got)
	}
	for i := range n {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if len(resp.GetPayload().GetBody()) != size {
			t.Fatalf("response %d has %d bytes, want %d", i, len(resp.GetPayload().GetBody()), size)
		}
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after %d responses got %v, want EOF", n, err)
	}
}

func TestDeadlinePropagates(t *testing.T) {
	svc, client, _ := proxiedTestService(t)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	want, _ := ctx.Deadline()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-block", "1")
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	// grpc-timeout travelled: the server's deadline is the client's, less
	// the time the request took to get there.
	// (It is computed from a relative timeout on arrival, so allow slack.)
	if got := <-svc.started; got.IsZero() || got.Sub(want) > time.Second {
		t.Errorf("server deadline %v, want about the client's %v", got, want)
	}
	select {
	case err := <-svc.ended:
		// By its own deadline or by the proxy's cancellation, whichever
		// came first: both are the client's deadline reaching it.
		if err == nil {
			t.Fatal("server call ended without a context error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server call still running 10s after the client's deadline")
	}
}

func TestClientCancelReachesServer(t *testing.T) {
	svc, client, _ := proxiedTestService(t)
	ctx, cancel := context.WithCancel(t.Context())
	ctx = metadata.AppendToOutgoingContext(ctx, "x-block", "1")
	errc := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		errc <- err
	}()
	<-svc.started
	cancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Fatalf("client got %v, want Canceled", err)
	}
	select {
	case err := <-svc.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("server context ended with %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server never saw the client's cancellation")
	}
}

func TestLargeMessage(t *testing.T) {
	_, client, _ := proxiedTestService(t)
	body := bytes.Repeat([]byte{'q'}, bigMessage)
	resp, err := client.UnaryCall(t.Context(), &testpb.SimpleRequest{ResponseSize: bigMessage, Payload: &testpb.Payload{Body: body}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetPayload().GetBody(); !bytes.Equal(got, bytes.Repeat([]byte{'r'}, bigMessage)) {
		t.Fatalf("response of %d bytes, want %d bytes of 'r'", len(got), bigMessage)
	}
}

func TestMessageOverLimitIsRejected(t *testing.T) {
	svc := newTestService()
	addr := startTestService(t, svc)
	_, proxyAddr := startOutbound(t, addr, Options{MaxMessageBytes: 1 << 20})
	client := testpb.NewTestServiceClient(dial(t, proxyAddr))
	_, err := client.UnaryCall(t.Context(), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 2<<20)}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("2 MiB request through a 1 MiB proxy: got %v, want ResourceExhausted", err)
	}
}

func TestNoUpstreamIsUnavailable(t *testing.T) {
	lis := listen(t)
	deadAddr := lis.Addr().String()
	lis.Close()
	p, proxyAddr := startOutbound(t, deadAddr, Options{})
	client := pb.NewGreeterClient(dial(t, proxyAddr))
	_, err := client.SayHello(t.Context(), &pb.HelloRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call to a dead upstream: got %v, want Unavailable", err)
	}
	up, _ := p.upstreams.get(deadAddr)
	if got := metricValue(up.metrics.streams[codes.Unavailable]); got != 1 {
		t.Errorf("ballast_proxy_streams_total{code=Unavailable} = %v, want 1", got)
	}
}

// pingStream opens a bidi stream on conn; ping sends one message on it and
// fails t unless the answer comes back.
func pingStream(t *testing.T, conn *grpc.ClientConn) (testpb.TestService_FullDuplexCallClient, func()) {
	stream, err := testpb.NewTestServiceClient(conn).FullDuplexCall(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return stream, func() {
		t.Helper()
		if err := stream.Send(&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{Size: 1}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
}

// checkDrain serves p, opens a stream through it at addr and, while the
// stream is in flight (inFlight checks what it must), stops p as SIGTERM
// does in the command. It checks the drain: p stops being ready, its
// GOAWAY moves the client connection out of READY, the stream still works
// and Serve waits for it, and Serve returns nil once the stream ends. It
// returns the client connection.
func checkDrain(t *testing.T, p *Proxy, addr string, inFlight func()) *grpc.ClientConn {
	t.Helper()
	ctx, stop := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	eventually(t, "proxy ready", p.Ready)
	conn := dial(t, addr)
	stream, ping := pingStream(t, conn)
	ping()
	// (grpc-go publishes the picker before the state, so poll.)
	eventually(t, "client connection READY", func() bool { return conn.GetState() == connectivity.Ready })
	inFlight()

	stop()
	eventually(t, "proxy not ready", func() bool { return !p.Ready() })
	eventually(t, "GOAWAY moves the client connection out of READY", func() bool { return conn.GetState() != connectivity.Ready })
	ping() // the in-flight stream still works
	select {
	case err := <-served:
		t.Fatalf("Serve returned (%v) while a stream was in flight", err)
	default:
	}
	stream.CloseSend()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("in-flight stream ended with %v, want EOF", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the last stream finished")
	}
	return conn
}

// TestGracefulShutdown: on shutdown the proxy stops being ready, sends
// GOAWAY (the client's connection leaves READY), lets the in-flight stream
// finish, and only then returns.
func TestGracefulShutdown(t *testing.T) {
	svc := newTestService()
	addr := startTestService(t, svc)
	lis := listen(t)
	p, err := New(Options{Outbound: []Outbound{{Listener: lis, Target: addr}}})
	if err != nil {
		t.Fatal(err)
	}
	conn := checkDrain(t, p, lis.Addr().String(), func() {})
	if _, err := testpb.NewTestServiceClient(conn).UnaryCall(t.Context(), &testpb.SimpleRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("new call after shutdown: got %v, want Unavailable", err)
	}
}

// TestReadyWaitsForSync: /ready says 503 until the listeners serve and the
// discovery source has synced, 200 after, and 503 again once draining.
func TestReadyWaitsForSync(t *testing.T) {
	var synced atomic.Bool
	lis := listen(t)
	p, err := New(Options{Outbound: []Outbound{{Listener: lis, Target: "dns:///127.0.0.1:1"}}, Synced: synced.Load})
	if err != nil {
		t.Fatal(err)
	}
	ready := func() int {
		rec := httptest.NewRecorder()
		p.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
		return rec.Code
	}
	if got := ready(); got != http.StatusServiceUnavailable {
		t.Fatalf("/ready before Serve: %d, want 503", got)
	}
	ctx, stop := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	eventually(t, "listeners up", p.ready.Load)
	if got := ready(); got != http.StatusServiceUnavailable {
		t.Fatalf("/ready before sync: %d, want 503", got)
	}
	synced.Store(true)
	if got := ready(); got != http.StatusOK {
		t.Fatalf("/ready after sync: %d, want 200", got)
	}
	stop()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if got := ready(); got != http.StatusServiceUnavailable {
		t.Fatalf("/ready after shutdown: %d, want 503", got)
	}
}

// TestUpstreamGoesAway: an endpoint that shuts down gracefully (GOAWAY)
// while calls flow loses no call: streams it will not serve are refused
// back to the client, which retries them, and the balancer moves on to the
// endpoint left. An endpoint killed under an in-flight call fails that
// call with Unavailable, not a hang.
func TestUpstreamGoesAway(t *testing.T) {
	type backend struct {
		gs   *grpc.Server
		addr string
	}
	start := func(pod string, svc *testService) backend {
		lis := listen(t)
		gs := grpc.NewServer()
		pb.RegisterGreeterServer(gs, &greeter.Server{Pod: pod})
		testpb.RegisterTestServiceServer(gs, svc)
		done := make(chan struct{})
		go func() { defer close(done); gs.Serve(lis) }()
		t.Cleanup(func() { gs.Stop(); <-done })
		return backend{gs: gs, addr: lis.Addr().String()}
	}
	svcA := newTestService()
	a, b := start("pod-a", svcA), start("pod-b", newTestService())
	target, resolve := staticTarget([]string{a.addr, b.addr})
	_, addr := startOutbound(t, target, Options{Resolvers: []resolver.Builder{resolve}})
	conn := dial(t, addr)
	spread(t, conn, 2, 10)

	// Two blocking calls: round robin puts one on each pod. The one on
	// pod-a is in flight when pod-a is killed.
	client := testpb.NewTestServiceClient(conn)
	blockCtx, unblock := context.WithCancel(metadata.AppendToOutgoingContext(t.Context(), "x-block", "1"))
	defer unblock()
	blocked := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := client.UnaryCall(blockCtx, &testpb.SimpleRequest{})
			blocked <- err
		}()
	}
	<-svcA.started

	graceful := make(chan struct{})
	go func() { defer close(graceful); a.gs.GracefulStop() }()
	tally := greeter.Call(t.Context(), conn, 50, 5*time.Second, nil)
	if tally.Errors > 0 {
		t.Fatalf("%d of 50 calls failed while pod-a went away; last: %v", tally.Errors, tally.LastError)
	}
	a.gs.Stop() // kills the in-flight call's connection
	<-graceful
	if err := <-blocked; status.Code(err) != codes.Unavailable {
		t.Fatalf("call in flight on a killed endpoint ended with %v, want Unavailable", err)
	}
	unblock()
	<-blocked
	tally = greeter.Call(t.Context(), conn, 20, 5*time.Second, nil)
	if tally.Errors > 0 || tally.Pods["pod-b"] != 20 {
		t.Fatalf("after pod-a left: %d errors (last %v), pods %v; want all 20 on pod-b", tally.Errors, tally.LastError, tally.Pods)
	}
}
