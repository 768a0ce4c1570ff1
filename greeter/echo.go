package greeter

import (
	"errors"
	"io"

	echopb "google.golang.org/grpc/examples/features/proto/echo"
)

// echo serves grpc.examples.echo.Echo's bidirectional stream: every
// message is answered with the pod's name and the message, in order. It
// gives `ballast bench` a long-lived stream to push through each path;
// the other Echo methods stay unimplemented.
type echo struct {
	echopb.UnimplementedEchoServer
	pod string
}

func (e echo) BidirectionalStreamingEcho(stream echopb.Echo_BidirectionalStreamingEchoServer) error {
	for {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&echopb.EchoResponse{Message: Reply(e.pod, in.GetMessage())}); err != nil {
			return err
		}
	}
}
