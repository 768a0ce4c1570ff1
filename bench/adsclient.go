package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// adsClient is one simulated proxyless gRPC client: one ADS stream, state
// of the world, asking for one Service the way grpc-go's xDS client does:
// the Listener for the target, then the RouteConfiguration its
// HttpConnectionManager names, then the Cluster the route points at, then
// that Cluster's ClusterLoadAssignment. It ACKs every response (a control
// plane sends nothing new on a type until the last response is answered)
// and reports every ClusterLoadAssignment it receives. It dials only the
// control plane, never an endpoint.
type adsClient struct {
	server   netip.AddrPort
	node     *corev3.Node
	listener string
	// onEndpoints is called on the stream's goroutine with the endpoint
	// addresses of every ClusterLoadAssignment received, and when.
	onEndpoints func(addrs []netip.Addr, at time.Time)
	// onRetry, if set, is called with the error that ended a stream, before
	// it is opened again.
	onRetry func(err error)
	// onAnswer, if set, is called on the first response the client gets.
	onAnswer func()
}

// subscription is what the client asks for of one type, and what it last
// accepted (the ACK repeats both).
type subscription struct {
	names          []string
	version, nonce string
}

// run keeps a stream open until ctx ends. A stream the control plane
// ends or refuses (istiod admits only so many new streams a second) is
// opened again after grpc-go's xDS backoff: 1 s, growing 1.6 times per
// failure in a row, jittered by 20%, at most 2 minutes; a stream that got
// a response resets it. A response the client cannot read ends run with
// the error.
func (c *adsClient) run(ctx context.Context) error {
	conn, err := grpc.NewClient("passthrough:///"+c.server.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", c.server, err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	for failures := 0; ; {
		answered, err := c.session(ctx, ads)
		if ctx.Err() != nil {
			return nil
		}
		var bad *badResponse
		if errors.As(err, &bad) {
			return err
		}
		if answered {
			failures = 0
		}
		if c.onRetry != nil {
			c.onRetry(err)
		}
		wait := xdsBackoff(failures, rand.Float64())
		failures++
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// xdsBackoff is grpc-go's default exponential backoff (the xDS client's):
// the wait before retry number failures+1, r a uniform draw in [0, 1).
func xdsBackoff(failures int, r float64) time.Duration {
	const base, factor, jitter, most = float64(time.Second), 1.6, 0.2, float64(120 * time.Second)
	d := base
	for range failures {
		d *= factor
		if d > most {
			d = most
			break
		}
	}
	d *= 1 + jitter*(2*r-1)
	return time.Duration(d)
}

// badResponse is a response the client could not read: a fault of the
// control plane, not of the connection, so retrying would not help.
type badResponse struct{ err error }

func (e *badResponse) Error() string { return e.err.Error() }
func (e *badResponse) Unwrap() error { return e.err }

// session is one ADS stream, until it fails; answered says whether the
// control plane sent anything on it.
func (c *adsClient) session(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (answered bool, _ error) {
	stream, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return false, c.streamErr(ctx, err)
	}
	subs := map[string]*subscription{}
	first := true
	send := func(typeURL string) error {
		s := subs[typeURL]
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: s.names, VersionInfo: s.version, ResponseNonce: s.nonce}
		if first { // the node goes on the first request only, as grpc-go does
			req.Node, first = c.node, false
		}
		return stream.Send(req)
	}
	// subscribe asks for name of typeURL, replacing what was asked before
	// (one Service, so one name per type).
	subscribe := func(typeURL, name string) error {
		s := subs[typeURL]
		if s == nil {
			s = &subscription{}
			subs[typeURL] = s
		}
		if len(s.names) == 1 && s.names[0] == name {
			return nil
		}
		s.names = []string{name}
		return send(typeURL)
	}
	if err := subscribe(resourcev3.ListenerType, c.listener); err != nil {
		return false, c.streamErr(ctx, err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return answered, c.streamErr(ctx, err)
		}
		if !answered && c.onAnswer != nil {
			c.onAnswer()
			c.onAnswer = nil
		}
		answered = true
		at := time.Now()
		s := subs[resp.GetTypeUrl()]
		if s == nil {
			continue // a type it never asked for
		}
		s.version, s.nonce = resp.GetVersionInfo(), resp.GetNonce()
		if err := send(resp.GetTypeUrl()); err != nil { // ACK
			return answered, c.streamErr(ctx, err)
		}
		next, name, addrs, err := c.read(resp)
		if err != nil {
			return answered, &badResponse{fmt.Errorf("%s: %w", c.listener, err)}
		}
		if addrs != nil {
			c.onEndpoints(addrs, at)
		}
		if next != "" {
			if err := subscribe(next, name); err != nil {
				return answered, c.streamErr(ctx, err)
			}
		}
	}
}

func (c *adsClient) streamErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("ads stream for %s: %w", c.listener, err)
}

// read finds, in a response, the name of the next resource to ask for
// (and its type), or the endpoint addresses.
func (c *adsClient) read(resp *discoveryv3.DiscoveryResponse) (nextType, nextName string, addrs []netip.Addr, err error) {
	for _, a := range resp.GetResources() {
		switch resp.GetTypeUrl() {
		case resourcev3.ListenerType:
			l := &listenerv3.Listener{}
			if err := unmarshal(a, l); err != nil {
				return "", "", nil, err
			}
			if l.GetName() != c.listener {
				continue
			}
			hcm := &hcmv3.HttpConnectionManager{}
			if err := unmarshal(l.GetApiListener().GetApiListener(), hcm); err != nil {
				return "", "", nil, fmt.Errorf("listener %s: %w", l.GetName(), err)
			}
			if rc := hcm.GetRouteConfig(); rc != nil {
				cluster, err := routeCluster(rc, c.listener)
				return resourcev3.ClusterType, cluster, nil, err
			}
			return resourcev3.RouteType, hcm.GetRds().GetRouteConfigName(), nil, nil
		case resourcev3.RouteType:
			rc := &routev3.RouteConfiguration{}
			if err := unmarshal(a, rc); err != nil {
				return "", "", nil, err
			}
			cluster, err := routeCluster(rc, c.listener)
			return resourcev3.ClusterType, cluster, nil, err
		case resourcev3.ClusterType:
			cl := &clusterv3.Cluster{}
			if err := unmarshal(a, cl); err != nil {
				return "", "", nil, err
			}
			if name := cl.GetEdsClusterConfig().GetServiceName(); name != "" {
				return resourcev3.EndpointType, name, nil, nil
			}
			return resourcev3.EndpointType, cl.GetName(), nil, nil
		case resourcev3.EndpointType:
			cla := &endpointv3.ClusterLoadAssignment{}
			if err := unmarshal(a, cla); err != nil {
				return "", "", nil, err
			}
			return "", "", endpointAddrs(cla), nil
		}
	}
	return "", "", nil, nil
}

func unmarshal(a *anypb.Any, m proto.Message) error {
	if a == nil {
		return errors.New("no resource")
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("decode %s: %w", a.GetTypeUrl(), err)
	}
	return nil
}

// routeCluster is the cluster of the first route of the virtual host
// serving host (the listener name, host:port), as grpc-go picks it: an
// exact domain match first, then a wildcard.
func routeCluster(rc *routev3.RouteConfiguration, listener string) (string, error) {
	host := listener
	var vh *routev3.VirtualHost
	for _, v := range rc.GetVirtualHosts() {
		for _, d := range v.GetDomains() {
			switch {
			case d == host || d == strings.Split(host, ":")[0]:
				vh = v
			case d == "*" && vh == nil:
				vh = v
			}
		}
	}
	if vh == nil || len(vh.GetRoutes()) == 0 {
		return "", fmt.Errorf("route %s: no virtual host with a route for %s", rc.GetName(), host)
	}
	action := vh.GetRoutes()[0].GetRoute()
	if name := action.GetCluster(); name != "" {
		return name, nil
	}
	if wc := action.GetWeightedClusters().GetClusters(); len(wc) > 0 {
		return wc[0].GetName(), nil
	}
	return "", fmt.Errorf("route %s: first route for %s names no cluster", rc.GetName(), host)
}

// endpointAddrs lists every endpoint address of every locality.
func endpointAddrs(cla *endpointv3.ClusterLoadAssignment) []netip.Addr {
	out := []netip.Addr{}
	for _, loc := range cla.GetEndpoints() {
		for _, e := range loc.GetLbEndpoints() {
			if a, err := netip.ParseAddr(e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()); err == nil {
				out = append(out, a)
			}
		}
	}
	return out
}
