package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TestWindowSurvivesAbandonedCalls: a call that ends while the proxy
// holds its data (the side it goes to not reading) must still give back
// the flow-control window that data took on the connection it came from;
// else each such call shrinks that connection's window until every call
// on it stalls. Each case abandons, in rounds on the same two
// connections, calls holding more than the proxy's connection window in
// all; large calls must then still pass both ways.
func TestWindowSurvivesAbandonedCalls(t *testing.T) {
	cases := []struct {
		name   string
		server string // the server's x-mode: see creditService
		// end finishes a round whose calls are stalled holding data.
		end func(r *creditRound)
	}{
		{"client cancels, its requests unread", "hold", (*creditRound).cancel},
		{"client cancels, the responses unread", "flood", (*creditRound).cancel},
		{"server ends the call, the requests unread", "hold", (*creditRound).serverEnds},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc := &creditService{}
			_, proxyAddr := startOutbound(t, startTestService(t, svc), Options{})
			conn := dial(t, proxyAddr, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*bigMessage), grpc.MaxCallSendMsgSize(2*bigMessage)))
			client := testpb.NewTestServiceClient(conn)
			// Each round's calls hold up to a stream window each, in all
			// less than a connection window, so that every call stalls
			// full; the rounds together hold more than one.
			const calls, rounds = connWindow / streamWindow / 2, 3
			for range rounds {
				r := svc.startRound(t, client, tc.server, calls)
				waitStalled(t, "the calls' data", r.moved.Load)
				tc.end(r)
				r.wait(t)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			body := make([]byte, bigMessage)
			resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: bigMessage, Payload: &testpb.Payload{Body: body}})
			if err != nil {
				t.Fatalf("a large call after %d abandoned ones: %v", calls*rounds, err)
			}
			if n := len(resp.GetPayload().GetBody()); n != bigMessage {
				t.Fatalf("the large call's response has %d bytes, want %d", n, bigMessage)
			}
		})
	}
}

// creditChunk is the size of each message the calls send.
const creditChunk = 64 << 10

// creditService's FullDuplexCall does what the call's x-mode says: "hold"
// reads nothing until the call ends (or the round's end is closed, when it
// answers Aborted); "flood" sends messages until it cannot, reading
// nothing. UnaryCall answers with ResponseSize bytes.
type creditService struct {
	testpb.UnimplementedTestServiceServer
	mu    sync.Mutex
	round *creditRound
}

func (s *creditService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: make([]byte, req.GetResponseSize())}}, nil
}

func (s *creditService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	s.mu.Lock()
	r := s.round
	s.mu.Unlock()
	md, _ := metadata.FromIncomingContext(stream.Context())
	switch md.Get("x-mode")[0] {
	case "hold":
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-r.ended:
			return status.Error(codes.Aborted, "the server ended the call")
		}
	default: // flood
		msg := &testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, creditChunk)}}
		for stream.Send(msg) == nil {
			r.moved.Add(1)
		}
		return stream.Context().Err()
	}
}

// creditRound is one round of calls left stalled holding data.
type creditRound struct {
	moved   atomic.Int64 // messages sent, by the clients or the server
	ended   chan struct{}
	cancels []context.CancelFunc
	results chan error // each call's end, as its client saw it
	mode    string
}

// startRound opens calls streams of mode; in "hold" each client sends
// until flow control stops it.
func (s *creditService) startRound(t *testing.T, client testpb.TestServiceClient, mode string, calls int) *creditRound {
	r := &creditRound{ended: make(chan struct{}), results: make(chan error, calls), mode: mode}
	s.mu.Lock()
	s.round = r
	s.mu.Unlock()
	for range calls {
		ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(t.Context(), "x-mode", mode))
		r.cancels = append(r.cancels, cancel)
		go func() {
			stream, err := client.FullDuplexCall(ctx)
			if err != nil {
				r.results <- err
				return
			}
			if mode == "hold" {
				msg := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: make([]byte, creditChunk)}}
				for stream.Send(msg) == nil {
					r.moved.Add(1)
				}
			} else {
				<-ctx.Done() // reading nothing until then
			}
			for err == nil {
				_, err = stream.Recv()
			}
			r.results <- err
		}()
	}
	return r
}

func (r *creditRound) cancel() {
	for _, cancel := range r.cancels {
		cancel()
	}
}

func (r *creditRound) serverEnds() { close(r.ended) }

// wait waits for every call of the round to end, and checks how.
func (r *creditRound) wait(t *testing.T) {
	t.Helper()
	defer r.cancel()
	want := codes.Canceled
	select {
	case <-r.ended:
		want = codes.Aborted
	default:
	}
	for range r.cancels {
		select {
		case err := <-r.results:
			if status.Code(err) != want {
				t.Fatalf("an abandoned call ended with %v, want %v", err, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("an abandoned call had not ended 30 s after it was ended")
		}
	}
}
