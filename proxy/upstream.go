package proxy

import (
	"fmt"
	"net"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// upstream is one destination Service as the proxy's client side sees it: a
// grpc-go ClientConn whose resolver and balancer make the per-call decision,
// exactly as a proxyless client dialling the same target would.
type upstream struct {
	target string
	// service names the upstream in metrics: the target without its
	// "xds:///" scheme.
	service     string
	conn        *grpc.ClientConn
	callOptions []grpc.CallOption
	metrics     upstreamMetrics
}

// upstreams holds one upstream per target, created on first use and kept
// until the proxy stops, so every connection to a Service shares one
// ClientConn and one balancer (and its load statistics).
type upstreams struct {
	dialOptions []grpc.DialOption
	callOptions []grpc.CallOption
	metrics     *metrics

	mu     sync.Mutex
	byName map[string]*upstream
	closed bool
}

func newUpstreams(dialOptions []grpc.DialOption, callOptions []grpc.CallOption, m *metrics) *upstreams {
	return &upstreams{dialOptions: dialOptions, callOptions: callOptions, metrics: m, byName: map[string]*upstream{}}
}

// get returns the upstream for target, creating its ClientConn (which
// connects lazily) the first time.
func (u *upstreams) get(target string) (*upstream, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if up, ok := u.byName[target]; ok {
		return up, nil
	}
	if u.closed {
		return nil, fmt.Errorf("upstream %s: proxy is stopping", target)
	}
	conn, err := grpc.NewClient(target, u.dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", target, err)
	}
	service := serviceLabel(target)
	up := &upstream{
		target:      target,
		service:     service,
		conn:        conn,
		callOptions: u.callOptions,
		metrics:     u.metrics.forService(service),
	}
	u.byName[target] = up
	return up, nil
}

// close closes every ClientConn; later gets fail.
func (u *upstreams) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for _, up := range u.byName {
		up.conn.Close()
	}
}

func serviceLabel(target string) string {
	if rest, ok := strings.CutPrefix(target, "xds:///"); ok {
		return rest
	}
	return target
}

// dialOptions are the options of every upstream ClientConn. The default
// service config asks for round_robin where the resolver says nothing (a
// dns:/// or static target), because a proxy that pinned each client
// connection to one backend would defeat its purpose; xDS targets get their
// policy from the control plane instead.
func dialOptions(maxMessageBytes int, extra []grpc.DialOption) []grpc.DialOption {
	return append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageBytes),
			grpc.MaxCallSendMsgSize(maxMessageBytes),
		),
	}, extra...)
}

func callOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.ForceCodecV2(rawCodec{})}
}

// routedAddr is the local address of a connection the proxy accepted,
// carrying the upstream chosen for it. grpc-go hands it to every call as
// peer.LocalAddr, so a call finds its upstream without a lookup.
type routedAddr struct {
	net.Addr
	up *upstream
}

// routedConn is an accepted connection bound to its upstream.
type routedConn struct {
	net.Conn
	local *routedAddr
}

func (c *routedConn) LocalAddr() net.Addr { return c.local }

func route(c net.Conn, local net.Addr, up *upstream) net.Conn {
	return &routedConn{Conn: c, local: &routedAddr{Addr: local, up: up}}
}

// codeIndex maps a status code to its slot in per-code metric arrays.
func codeIndex(c codes.Code) int {
	if c > maxCode {
		return int(codes.Unknown)
	}
	return int(c)
}

const maxCode = codes.Unauthenticated
