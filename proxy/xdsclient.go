package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/leastrequest"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// xdsClient resolves xds:/// targets for the proxy over one ADS stream to
// the control plane: Listener (the dialled name) → RouteConfiguration →
// Cluster (its load-balancing policy) → ClusterLoadAssignment (its
// endpoints), the chain a proxyless grpc-go client follows. Each watched
// name feeds a host the Cluster's balancer name and config and the
// endpoints; the host runs that balancer.
//
// grpc-go's own xDS client cannot serve here: it only drives grpc-go's
// internal balancer tree, whose pickers need grpc-go's ClientConn.
type xdsClient struct {
	cfg XDSConfig
	log *slog.Logger
	ctx context.Context
	end context.CancelFunc

	mu      sync.Mutex
	watches map[string]*xdsWatch
	// Resources as last accepted, by name.
	listeners map[string]*listenerv3.Listener
	routes    map[string]*routev3.RouteConfiguration
	clusters  map[string]*clusterv3.Cluster
	endpoints map[string]*endpointv3.ClusterLoadAssignment
	// kick wakes the stream to resend subscriptions.
	kick chan struct{}
}

type xdsWatch struct {
	h *host
	// delivered are the resources last given to h, to skip repeats.
	cluster  *clusterv3.Cluster
	assigned *endpointv3.ClusterLoadAssignment
}

// The resource types in the order the chain needs them.
var xdsTypes = []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}

func newXDSClient(cfg XDSConfig, log *slog.Logger) *xdsClient {
	ctx, end := context.WithCancel(context.Background())
	return &xdsClient{
		cfg: cfg, log: log.With("xds", cfg.Server), ctx: ctx, end: end,
		watches:   map[string]*xdsWatch{},
		listeners: map[string]*listenerv3.Listener{},
		routes:    map[string]*routev3.RouteConfiguration{},
		clusters:  map[string]*clusterv3.Cluster{},
		endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		kick:      make(chan struct{}, 1),
	}
}

// watch starts resolving name (host:port, as dialled) into h.
func (x *xdsClient) watch(name string, h *host) func() {
	x.mu.Lock()
	w := &xdsWatch{h: h}
	x.watches[name] = w
	x.deliverLocked(name, w)
	x.mu.Unlock()
	x.wake()
	return func() {
		x.mu.Lock()
		if x.watches[name] == w {
			delete(x.watches, name)
		}
		x.mu.Unlock()
		x.wake()
	}
}

func (x *xdsClient) wake() {
	select {
	case x.kick <- struct{}{}:
	default:
	}
}

// close stops run; nil-safe.
func (x *xdsClient) close() {
	if x != nil {
		x.end()
	}
}

// run keeps an ADS stream open until close, reconnecting with backoff.
func (x *xdsClient) run() {
	conn, err := grpc.NewClient(x.cfg.Server, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		x.log.Error("xds client", "err", err)
		return
	}
	defer conn.Close()
	backoff := time.Second
	for x.ctx.Err() == nil {
		start := time.Now()
		err := x.stream(conn)
		if x.ctx.Err() != nil {
			return
		}
		x.log.Warn("ADS stream ended; reconnecting", "err", err, "in", backoff)
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		select {
		case <-x.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// typeState is one resource type's subscription on a stream.
type typeState struct {
	names   []string
	version string
	nonce   string
}

func (x *xdsClient) stream(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(x.ctx)
	defer cancel()
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	node := &corev3.Node{Id: x.cfg.NodeID, UserAgentName: "ballast-proxy"}
	var sendMu sync.Mutex
	state := map[string]*typeState{}
	// send asks for typ's current names, acknowledging (or, with nack,
	// rejecting) the last response.
	send := func(typ string, nack error) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		ts := state[typ]
		req := &discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: ts.names, VersionInfo: ts.version, ResponseNonce: ts.nonce}
		if nack != nil {
			req.ErrorDetail = &status.Status{Code: 3, Message: nack.Error()}
		}
		node = nil // the node goes in the first request only
		x.log.Debug("xds request", "type", typ, "names", ts.names, "version", ts.version, "nack", nack)
		return st.Send(req)
	}
	// resubscribe sends requests for types whose names changed.
	resubscribe := func() error {
		x.mu.Lock()
		want := x.subscriptionsLocked()
		x.mu.Unlock()
		for _, typ := range xdsTypes {
			ts := state[typ]
			if ts == nil {
				ts = &typeState{}
				state[typ] = ts
			} else if strings.Join(ts.names, "\x00") == strings.Join(want[typ], "\x00") {
				continue
			}
			if len(want[typ]) == 0 && len(ts.names) == 0 {
				continue
			}
			ts.names = want[typ]
			if err := send(typ, nil); err != nil {
				return err
			}
		}
		return nil
	}
	if err := resubscribe(); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-x.kick:
				if err := resubscribe(); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	for {
		resp, err := st.Recv()
		if err != nil {
			select {
			case e := <-errc:
				return e
			default:
			}
			return err
		}
		x.log.Debug("xds response", "type", resp.GetTypeUrl(), "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
		ts := state[resp.GetTypeUrl()]
		if ts == nil {
			continue
		}
		err = x.accept(resp.GetTypeUrl(), resp.GetResources())
		ts.nonce = resp.GetNonce()
		if err == nil {
			ts.version = resp.GetVersionInfo()
		} else {
			x.log.Warn("rejecting xDS response; keeping the last good one", "type", resp.GetTypeUrl(), "version", resp.GetVersionInfo(), "err", err)
		}
		if err := send(resp.GetTypeUrl(), err); err != nil {
			return err
		}
		x.wake()
	}
}

// subscriptionsLocked lists, per type, the names the watches need now.
func (x *xdsClient) subscriptionsLocked() map[string][]string {
	want := map[string][]string{}
	seen := map[string]bool{}
	add := func(typ, name string) {
		if name != "" && !seen[typ+"\x00"+name] {
			seen[typ+"\x00"+name] = true
			want[typ] = append(want[typ], name)
		}
	}
	for name := range x.watches {
		add(resource.ListenerType, name)
		rc, routeName, _ := x.routeOfLocked(name)
		add(resource.RouteType, routeName)
		if rc == nil {
			continue
		}
		cluster, _ := clusterOf(rc, name)
		add(resource.ClusterType, cluster)
		if c := x.clusters[cluster]; c != nil {
			add(resource.EndpointType, edsName(c))
		}
	}
	return want
}

// accept parses and stores one response's resources, then feeds every
// watch whose chain is complete. Nothing is stored if any resource is
// invalid.
func (x *xdsClient) accept(typ string, resources []*anypb.Any) error {
	msgs := make([]proto.Message, 0, len(resources))
	for _, a := range resources {
		var m proto.Message
		switch typ {
		case resource.ListenerType:
			m = &listenerv3.Listener{}
		case resource.RouteType:
			m = &routev3.RouteConfiguration{}
		case resource.ClusterType:
			m = &clusterv3.Cluster{}
		case resource.EndpointType:
			m = &endpointv3.ClusterLoadAssignment{}
		default:
			return fmt.Errorf("unexpected type %s", typ)
		}
		if err := a.UnmarshalTo(m); err != nil {
			return fmt.Errorf("%s: %w", typ, err)
		}
		msgs = append(msgs, m)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	switch typ {
	case resource.ListenerType:
		x.listeners = map[string]*listenerv3.Listener{}
		for _, m := range msgs {
			l := m.(*listenerv3.Listener)
			x.listeners[l.GetName()] = l
		}
	case resource.RouteType:
		for _, m := range msgs {
			r := m.(*routev3.RouteConfiguration)
			x.routes[r.GetName()] = r
		}
	case resource.ClusterType:
		x.clusters = map[string]*clusterv3.Cluster{}
		for _, m := range msgs {
			c := m.(*clusterv3.Cluster)
			x.clusters[c.GetName()] = c
		}
	case resource.EndpointType:
		for _, m := range msgs {
			e := m.(*endpointv3.ClusterLoadAssignment)
			x.endpoints[e.GetClusterName()] = e
		}
	}
	for name, w := range x.watches {
		x.deliverLocked(name, w)
	}
	return nil
}

// deliverLocked gives w's host the Cluster's policy and endpoints if the
// chain for name is complete and changed.
func (x *xdsClient) deliverLocked(name string, w *xdsWatch) {
	rc, _, err := x.routeOfLocked(name)
	if rc == nil {
		if err != nil {
			x.log.Warn("xds listener", "name", name, "err", err)
		}
		return
	}
	clusterName, err := clusterOf(rc, name)
	if err != nil {
		x.log.Warn("xds route", "name", name, "err", err)
		return
	}
	c := x.clusters[clusterName]
	if c == nil {
		return
	}
	cla := x.endpoints[edsName(c)]
	if cla == nil || (c == w.cluster && cla == w.assigned) {
		return
	}
	policy, cfg, err := clusterPolicy(c)
	if err != nil {
		x.log.Warn("xds cluster: keeping the last good policy", "cluster", clusterName, "err", err)
		return
	}
	w.cluster, w.assigned = c, cla
	w.h.update(policy, cfg, resolver.State{Endpoints: endpointsOf(cla)})
}

// routeOfLocked returns the RouteConfiguration of the Listener called
// name (inline, or the RDS one once received) and the RDS name to
// subscribe to.
func (x *xdsClient) routeOfLocked(name string) (*routev3.RouteConfiguration, string, error) {
	l := x.listeners[name]
	if l == nil {
		return nil, "", nil
	}
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(&hcm); err != nil {
		return nil, "", fmt.Errorf("listener %s: api_listener: %w", name, err)
	}
	if rc := hcm.GetRouteConfig(); rc != nil {
		return rc, "", nil
	}
	rdsName := hcm.GetRds().GetRouteConfigName()
	if rdsName == "" {
		return nil, "", fmt.Errorf("listener %s: no route configuration", name)
	}
	return x.routes[rdsName], rdsName, nil
}

// clusterOf finds the Cluster that a RouteConfiguration sends name to: the
// virtual host for its domain (or "*"), the first route's cluster.
func clusterOf(rc *routev3.RouteConfiguration, name string) (string, error) {
	host, _, err := net.SplitHostPort(name)
	if err != nil {
		host = name
	}
	var vh *routev3.VirtualHost
	for _, v := range rc.GetVirtualHosts() {
		for _, d := range v.GetDomains() {
			if d == name || d == host {
				vh = v
			} else if d == "*" && vh == nil {
				vh = v
			}
		}
	}
	if vh == nil || len(vh.GetRoutes()) == 0 {
		return "", fmt.Errorf("route configuration %s: no route for %s", rc.GetName(), name)
	}
	cluster := vh.GetRoutes()[0].GetRoute().GetCluster()
	if cluster == "" {
		return "", fmt.Errorf("route configuration %s: the route for %s names no single cluster", rc.GetName(), name)
	}
	return cluster, nil
}

func edsName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

// endpointsOf lists a ClusterLoadAssignment's usable endpoints (HEALTHY or
// UNKNOWN, as grpc-go uses them) of its first priority.
func endpointsOf(cla *endpointv3.ClusterLoadAssignment) []resolver.Endpoint {
	var eps []resolver.Endpoint
	for _, loc := range cla.GetEndpoints() {
		if loc.GetPriority() != 0 {
			continue
		}
		for _, e := range loc.GetLbEndpoints() {
			switch e.GetHealthStatus() {
			case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
			default:
				continue
			}
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				continue
			}
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
			eps = append(eps, resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}})
		}
	}
	return eps
}

// Type URLs of the load-balancing policies a Cluster may list.
const (
	roundRobinPolicyType   = "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"
	leastRequestPolicyType = "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
	typedStructType        = "type.googleapis.com/xds.type.v3.TypedStruct"
	udpaTypedStructType    = "type.googleapis.com/udpa.type.v1.TypedStruct"
)

// clusterPolicy maps a Cluster's load-balancing policy to a registered
// grpc-go balancer and its parsed config, as grpc-go's xDS client does
// (gRFC A52): the first supported entry of load_balancing_policy; a
// TypedStruct names a custom balancer by its type_url's last segment;
// without a list, the lb_policy enum.
func clusterPolicy(c *clusterv3.Cluster) (string, serviceconfig.LoadBalancingConfig, error) {
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
		for _, p := range lbp.GetPolicies() {
			tc := p.GetTypedExtensionConfig().GetTypedConfig()
			switch tc.GetTypeUrl() {
			case roundRobinPolicyType:
				return parsePolicy("round_robin", nil)
			case leastRequestPolicyType:
				var lr leastrequestv3.LeastRequest
				if err := tc.UnmarshalTo(&lr); err != nil {
					return "", nil, fmt.Errorf("least_request config: %w", err)
				}
				n := uint32(2)
				if v := lr.GetChoiceCount(); v != nil {
					n = v.GetValue()
				}
				cfg, _ := json.Marshal(map[string]uint32{"choiceCount": n})
				return parsePolicy(leastrequest.Name, cfg)
			case typedStructType, udpaTypedStructType:
				var ts xdstypev3.TypedStruct
				if err := tc.UnmarshalTo(&ts); err != nil {
					// A udpa TypedStruct has the same wire shape.
					return "", nil, fmt.Errorf("TypedStruct policy: %w", err)
				}
				name := ts.GetTypeUrl()[strings.LastIndex(ts.GetTypeUrl(), "/")+1:]
				if balancer.Get(name) == nil {
					continue
				}
				cfg, err := protojson.Marshal(ts.GetValue())
				if err != nil {
					return "", nil, fmt.Errorf("policy %s config: %w", name, err)
				}
				return parsePolicy(name, cfg)
			}
		}
		return "", nil, errors.New("no supported policy in load_balancing_policy")
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		return parsePolicy("round_robin", nil)
	case clusterv3.Cluster_LEAST_REQUEST:
		return parsePolicy(leastrequest.Name, []byte(`{"choiceCount":2}`))
	}
	return "", nil, fmt.Errorf("unsupported lb_policy %s", c.GetLbPolicy())
}

// parsePolicy parses cfg with the balancer's own ParseConfig, if it has
// one.
func parsePolicy(name string, cfg []byte) (string, serviceconfig.LoadBalancingConfig, error) {
	b := balancer.Get(name)
	if b == nil {
		return "", nil, fmt.Errorf("balancer %q is not registered", name)
	}
	p, ok := b.(balancer.ConfigParser)
	if !ok {
		return name, nil, nil
	}
	if cfg == nil {
		cfg = []byte("{}")
	}
	parsed, err := p.ParseConfig(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("balancer %s config: %w", name, err)
	}
	return name, parsed, nil
}
