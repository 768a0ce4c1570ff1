package client

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"

	corev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/core/v3"
	discoveryv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/service/discovery/v3"
)

// adsStream is one state-of-the-world ADS stream: what it has asked for
// of each type, and what it last accepted, which every request repeats.
type adsStream struct {
	st   grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	node *corev3.Node // sent on the first request only, as grpc-go does

	mu   sync.Mutex // sends come from the receiving and the subscribing goroutine
	subs map[string]*subscription
}

// subscription is a stream's state for one resource type.
type subscription struct {
	names          []string
	version, nonce string
}

func openStream(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node) (*adsStream, error) {
	st, err := conn.NewStream(ctx, &adsStreamDesc, adsMethod)
	if err != nil {
		return nil, err
	}
	return &adsStream{
		st:   &grpc.GenericClientStream[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]{ClientStream: st},
		node: node, subs: map[string]*subscription{},
	}, nil
}

// The ADS method, as Envoy's generated client calls it (the messages the
// client sends and reads are package wire's, not that client's).
const adsMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

var adsStreamDesc = grpc.StreamDesc{StreamName: "StreamAggregatedResources", ServerStreams: true, ClientStreams: true}

// subscribe asks for names of typeURL if they differ from what the stream
// asked for last. An empty list withdraws the subscription.
func (s *adsStream) subscribe(typeURL string, names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.subs[typeURL]
	if sub == nil {
		if len(names) == 0 {
			return nil
		}
		sub = &subscription{}
		s.subs[typeURL] = sub
	} else if slices.Equal(sub.names, names) {
		return nil
	}
	sub.names = names
	return s.sendLocked(typeURL, sub, nil)
}

// answer ACKs a response of typeURL (nack == nil: version becomes the
// accepted one) or NACKs it with the reason, keeping the last version.
func (s *adsStream) answer(typeURL, version, nonce string, nack error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.subs[typeURL]
	if sub == nil {
		return nil // a type the stream never asked for
	}
	sub.nonce = nonce
	if nack == nil {
		sub.version = version
	}
	return s.sendLocked(typeURL, sub, nack)
}

// subscribed reports whether the stream asks for typeURL.
func (s *adsStream) subscribed(typeURL string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subs[typeURL] != nil
}

func (s *adsStream) sendLocked(typeURL string, sub *subscription, nack error) error {
	req := &discoveryv3.DiscoveryRequest{
		Node: s.node, TypeUrl: typeURL, ResourceNames: sub.names,
		VersionInfo: sub.version, ResponseNonce: sub.nonce,
	}
	if nack != nil {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	s.node = nil
	if err := s.st.Send(req); err != nil {
		return fmt.Errorf("send %s request: %w", typeURL, err)
	}
	return nil
}

// reconnect is the backoff of the stream to the control plane and of the
// connection under it: grpc-go's default, but capped at 30 s, Envoy's cap
// for its xDS streams, instead of 120 s. A sidecar whose control plane was
// away for a minute then learns what changed meanwhile within about 30 s
// of its return, not two minutes; the jitter still spreads a fleet's
// reconnections.
var reconnect = backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 30 * time.Second}

// backoffDelay is the wait before retry number retries+1 on the reconnect
// schedule, r a uniform draw in [0, 1).
func backoffDelay(retries int, r float64) time.Duration {
	cfg := reconnect
	d := float64(cfg.BaseDelay)
	for range retries {
		d *= cfg.Multiplier
		if d > float64(cfg.MaxDelay) {
			d = float64(cfg.MaxDelay)
			break
		}
	}
	d *= 1 + cfg.Jitter*(2*r-1)
	return time.Duration(d)
}

// jitter is the random draw backoffDelay takes; a variable so tests can
// make it fixed.
var jitter = rand.Float64
