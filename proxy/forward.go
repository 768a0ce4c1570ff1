package proxy

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// bidi describes every proxied call: on the wire unary and streaming calls
// differ only in how many messages flow, so one full-duplex loop serves all
// four kinds without knowing which it is.
var bidi = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// transportStream is the part of grpc-go's server transport stream the proxy
// reads to forward a call as the client sent it. grpc-go's own
// SetSendCompressor reaches the same object; the methods are exported, the
// type is not, hence the interface.
type transportStream interface {
	RecvCompress() string
	ContentSubtype() string
}

// handle is the grpc.Server's handler for every method: it finds the
// upstream chosen for the connection the call arrived on and forwards the
// call there.
func (p *Proxy) handle(_ any, down grpc.ServerStream) error {
	ctx := down.Context()
	up := upstreamOf(ctx)
	if up == nil {
		return status.Error(codes.Internal, "ballast proxy: connection has no upstream")
	}
	up.metrics.inFlight.Inc()
	err := p.forward(ctx, down, up)
	up.metrics.inFlight.Dec()
	up.metrics.streams[codeIndex(status.Code(err))].Inc()
	return err
}

// upstreamOf returns the upstream that the connection of the call in ctx
// was routed to when it was accepted.
func upstreamOf(ctx context.Context) *upstream {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	if a, ok := pr.LocalAddr.(*routedAddr); ok {
		return a.up
	}
	return nil
}

// forward runs one call through the proxy. Messages flow one at a time in
// each direction: a message is read only after the previous one was handed
// to the other side's flow control, so a slow reader slows its writer and
// the proxy holds at most one message per direction.
//
// Metadata goes up as the client sent it (grpc-go drops the reserved and
// pseudo headers and sets its own); the deadline travels in ctx and so
// becomes the upstream's grpc-timeout; cancelling either side cancels the
// other. Response headers are sent down as soon as they arrive, trailers and
// the status (code, message and details) when the upstream call ends.
func (p *Proxy) forward(ctx context.Context, down grpc.ServerStream, up *upstream) error {
	method, _ := grpc.MethodFromServerStream(down)
	md, _ := metadata.FromIncomingContext(ctx)
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, md))
	defer cancel()

	opts := up.callOptions
	if ts, ok := grpc.ServerTransportStreamFromContext(ctx).(transportStream); ok {
		// grpc-go decompresses every message it receives and compresses every
		// one it sends; it cannot forward compressed bytes. So the proxy
		// compresses upstream with what the client used (responses go down
		// compressed as the request was, grpc-go's server default).
		if c := ts.RecvCompress(); c != "" && c != "identity" {
			opts = append(opts[:len(opts):len(opts)], grpc.UseCompressor(c))
		}
		if sub := ts.ContentSubtype(); sub != "" && sub != "proto" {
			opts = append(opts[:len(opts):len(opts)], grpc.CallContentSubtype(sub))
		}
	}
	upStream, err := up.conn.NewStream(ctx, bidi, method, opts...)
	if err != nil {
		up.metrics.newStreamErrors.Inc()
		return err
	}

	// Requests flow in their own goroutine, which ends when the client
	// half-closes, when the call ends (the server cancels the stream's
	// context as the handler returns), or on the first error. The proxy's
	// WaitGroup owns it so that Serve returns only once it has stopped.
	sendErr := make(chan error, 1)
	p.streams.Add(1)
	go func() {
		defer p.streams.Done()
		if err := copyRequests(down, upStream); err != nil {
			sendErr <- err
			cancel()
		}
	}()

	if err := copyResponses(upStream, down); err != nil {
		select {
		case e := <-sendErr:
			// The request side failed first (say a message over the size
			// limit): that, not the cancellation it caused, is the outcome.
			return e
		default:
		}
		return err
	}
	return nil
}

// copyRequests moves the client's messages upstream until the client
// half-closes (then half-closes upstream) or something fails. It reports
// only failures of the client side; an upstream that stopped taking
// messages reports its status to copyResponses.
func copyRequests(down grpc.ServerStream, up grpc.ClientStream) error {
	var f frame
	for {
		if err := down.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				up.CloseSend()
				return nil
			}
			return err
		}
		if err := up.SendMsg(&f); err != nil {
			f.free()
			return nil
		}
	}
}

// copyResponses moves the upstream's headers, messages, trailers and status
// down to the client. It returns the status to end the call with.
func copyResponses(up grpc.ClientStream, down grpc.ServerStream) error {
	// Header blocks until the upstream sends headers or ends; nil means a
	// trailers-only response, which must stay one.
	if md, _ := up.Header(); md != nil {
		if err := down.SendHeader(md); err != nil {
			return err
		}
	}
	var f frame
	for {
		if err := up.RecvMsg(&f); err != nil {
			down.SetTrailer(up.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := down.SendMsg(&f); err != nil {
			f.free()
			return err
		}
	}
}
