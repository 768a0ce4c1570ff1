// Package greeter is the article's test service: a helloworld.Greeter that
// answers with the name of the pod that served the call, and the client that
// calls it over one long-lived connection.
package greeter

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	echopb "google.golang.org/grpc/examples/features/proto/echo"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// PodName is the name a greeter reports: $POD_NAME, else the hostname.
func PodName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

// Reply is the message a greeter named pod sends to name, as in the article.
func Reply(pod, name string) string { return fmt.Sprintf("hostname:%s, in:%s", pod, name) }

// Server is a Greeter that replies with its pod name. It also serves
// grpc.health.v1 and server reflection, as any operator would expect, and
// grpc.examples.echo.Echo's bidirectional stream (answering each message
// with the pod's name) for streaming benchmarks.
type Server struct {
	pb.UnimplementedGreeterServer
	// Pod is the name put in every reply.
	Pod string
	// Log receives one debug line per call; nil means slog.Default().
	Log *slog.Logger
	// Delay is added to every call before it is answered, to play a slow
	// pod (ballast bench's latency-aware scenario); a call whose context
	// ends first fails with the context's status.
	Delay time.Duration
}

// SayHello implements helloworld.GreeterServer.
func (s *Server) SayHello(ctx context.Context, in *pb.HelloRequest) (*pb.HelloReply, error) {
	s.logger().Debug("greeting", "name", in.GetName())
	if s.Delay > 0 {
		t := time.NewTimer(s.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &pb.HelloReply{Message: Reply(s.Pod, in.GetName())}, nil
}

// warnSpent warns of a call whose deadline has passed as it arrives: its
// grpc-timeout left it no time, so grpc-go answers DEADLINE_EXCEEDED at
// once, and neither the caller nor any proxy on the way says why. A
// client sets its timeout from a deadline still ahead, so the time was
// spent, or the header garbled, on the way.
func (s *Server) warnSpent(ctx context.Context, info *tap.Info) (context.Context, error) {
	if d, ok := ctx.Deadline(); ok {
		if left := time.Until(d); left <= 0 {
			from := "unknown"
			if p, ok := peer.FromContext(ctx); ok {
				from = p.Addr.String()
			}
			s.logger().Warn("call arrived with its deadline already passed", "method", info.FullMethodName, "left", left, "peer", from)
		}
	}
	return ctx, nil
}

func (s *Server) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// Serve runs the greeter on lis until ctx ends, then stops taking calls,
// lets in-flight calls finish (health turns NOT_SERVING first) and returns.
//
// Serve sets the server's tap handle (grpc.InTapHandle), to warn of calls
// that arrive already out of time.
func (s *Server) Serve(ctx context.Context, lis net.Listener, opts ...grpc.ServerOption) error {
	gs := grpc.NewServer(append(opts, grpc.InTapHandle(s.warnSpent))...)
	pb.RegisterGreeterServer(gs, s)
	echopb.RegisterEchoServer(gs, echo{pod: s.Pod})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(pb.Greeter_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	select {
	case err := <-served:
		gs.Stop()
		return fmt.Errorf("greeter serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
		hs.Shutdown()
		gs.GracefulStop()
		return <-served
	}
}
