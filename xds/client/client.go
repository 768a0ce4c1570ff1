package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ballast-dev/ballast/policy"
	clusterv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/cluster/v3"
	corev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/core/v3"
	endpointv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/endpoint/v3"
	listenerv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/listener/v3"
	routev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/route/v3"
)

// Config configures a Client.
type Config struct {
	// Server is the control plane's address, host:port, or any gRPC
	// target.
	Server string
	// Node is who the client is, sent on each stream's first request.
	Node Node
	// SidecarListeners subscribes to every sidecar listener (a wildcard
	// Listener subscription), which Target reads: the ClusterIP:port pairs
	// a transparent sidecar may intercept and the route of each.
	SidecarListeners bool
	// DialOptions are added to the connection's; without transport
	// credentials among them it is plaintext.
	DialOptions []grpc.DialOption
	// TokenFile, if set, holds the token sent on every stream as call
	// credentials (see TokenFile); the control plane needs one unless it
	// runs with --insecure or knows the client by its certificate.
	TokenFile string
	// CAFile, when set, makes the connection TLS, verifying the control
	// plane's certificate against the CAs in the file (read again when it
	// changes) and the host of Server.
	CAFile string
	// CertFile and KeyFile, with CAFile, are the client certificate (mTLS)
	// the control plane may know the client by, read again when they change.
	CertFile, KeyFile string
	Log               *slog.Logger

	// Optional hooks, called on the stream's goroutine: for every response;
	// for a response the client rejected (NACKed, the last good kept); and
	// when a stream ended, before it is opened again.
	OnResponse  func()
	OnReject    func(typeURL string, err error)
	OnStreamEnd func(err error)
}

// Node is the xDS node the client says it is.
type Node struct {
	ID string
	// Zone is the node's locality: Services with a trafficDistribution
	// send its calls to endpoints in the same zone. Empty: none.
	Zone string
	// UserAgent names the client's program (user_agent_name).
	UserAgent string
	// Metadata are the node's metadata fields, as strings.
	Metadata map[string]string
}

// proto is n as it goes on the wire.
func (n Node) proto() *corev3.Node {
	out := &corev3.Node{Id: n.ID, UserAgentName: n.UserAgent}
	if n.Zone != "" {
		out.Locality = &corev3.Locality{Zone: n.Zone}
	}
	if len(n.Metadata) > 0 {
		out.Metadata = &structpb.Struct{Fields: make(map[string]*structpb.Value, len(n.Metadata))}
		for k, v := range n.Metadata {
			out.Metadata.Fields[k] = structpb.NewStringValue(v)
		}
	}
	return out
}

// Client follows a control plane over one ADS stream. Create it with New,
// watch targets with Watch, and run it with Run.
type Client struct {
	cfg  Config
	log  *slog.Logger
	kick chan struct{} // wakes the stream to send changed subscriptions

	mu      sync.Mutex
	watches map[*watch]struct{}
	// What the control plane sent, decoded, by name. Listeners and
	// clusters come whole in each response; routes and endpoints one by
	// one, and are dropped once no longer subscribed to.
	listeners map[string]*listener
	routes    map[string]*routeConfig
	clusters  map[string]*cluster
	endpoints map[string]*policy.Endpoints
	// sidecarRoutes are the routes the sidecar listeners name.
	sidecarRoutes map[string]bool

	targets       atomic.Pointer[map[netip.AddrPort]string]
	sidecarSynced atomic.Bool
}

// New makes a Client; nothing is sent until Run.
func New(cfg Config) (*Client, error) {
	if cfg.Server == "" {
		return nil, errors.New("xds client: no server address")
	}
	c := &Client{
		cfg:           cfg,
		log:           cmp.Or(cfg.Log, slog.Default()).With("component", "xds-client", "server", cfg.Server),
		kick:          make(chan struct{}, 1),
		watches:       map[*watch]struct{}{},
		listeners:     map[string]*listener{},
		routes:        map[string]*routeConfig{},
		clusters:      map[string]*cluster{},
		endpoints:     map[string]*policy.Endpoints{},
		sidecarRoutes: map[string]bool{},
	}
	c.targets.Store(&map[netip.AddrPort]string{})
	return c, nil
}

// Run keeps a stream to the control plane open until ctx ends, opening it
// again after a backoff (reconnect) when it fails; a stream that received a
// response resets the backoff. While the control plane is away, watchers
// keep what they were last given.
func (c *Client) Run(ctx context.Context) error {
	transport := insecure.NewCredentials()
	if c.cfg.CAFile != "" {
		var err error
		if transport, err = newTLSCredentials(c.cfg.CAFile, c.cfg.CertFile, c.cfg.KeyFile, c.log); err != nil {
			return fmt.Errorf("xds client: %w", err)
		}
	} else if c.cfg.CertFile != "" || c.cfg.KeyFile != "" {
		return errors.New("xds client: a client certificate needs the control plane's CA file too (TLS)")
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(transport),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnect, MinConnectTimeout: 20 * time.Second})}, c.cfg.DialOptions...)
	if c.cfg.TokenFile != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(TokenFile(c.cfg.TokenFile)))
	}
	conn, err := grpc.NewClient(c.cfg.Server, opts...)
	if err != nil {
		return fmt.Errorf("xds client: %w", err)
	}
	defer conn.Close()
	for retries := 0; ; retries++ {
		answered, err := c.follow(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		if answered {
			retries = 0
		}
		if c.cfg.OnStreamEnd != nil {
			c.cfg.OnStreamEnd(err)
		}
		wait := backoffDelay(retries, jitter())
		c.log.Warn("ADS stream ended; serving the last config", "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// follow runs one stream until it fails, and says whether the control
// plane answered on it.
func (c *Client) follow(ctx context.Context, conn grpc.ClientConnInterface) (answered bool, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := openStream(ctx, conn, c.cfg.Node.proto())
	if err != nil {
		return false, err
	}
	if err := c.resubscribe(s); err != nil {
		return false, err
	}
	subscribeErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.kick:
				if err := c.resubscribe(s); err != nil {
					subscribeErr <- err
					cancel()
					return
				}
			}
		}
	}()
	for {
		resp, err := s.st.Recv()
		if err != nil {
			select {
			case err = <-subscribeErr:
			default:
			}
			return answered, err
		}
		answered = true
		if c.cfg.OnResponse != nil {
			c.cfg.OnResponse()
		}
		typeURL := resp.GetTypeUrl()
		if !s.subscribed(typeURL) {
			continue
		}
		rejected := c.accept(typeURL, resp.GetResources())
		if rejected != nil {
			c.log.Warn("rejecting xDS response; keeping the last good one", "type", typeURL, "version", resp.GetVersionInfo(), "err", rejected)
			if c.cfg.OnReject != nil {
				c.cfg.OnReject(typeURL, rejected)
			}
		} else {
			c.log.Debug("xDS response", "type", typeURL, "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
		}
		if err := s.answer(typeURL, resp.GetVersionInfo(), resp.GetNonce(), rejected); err != nil {
			return answered, err
		}
		c.wake() // what was received may name what to ask for next
	}
}

func (c *Client) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// resubscribe sends the subscriptions the watches need now, those that
// changed.
func (c *Client) resubscribe(s *adsStream) error {
	c.mu.Lock()
	want := c.subscriptionsLocked()
	c.mu.Unlock()
	for _, typeURL := range []string{listenerType, routeType, clusterType, endpointType} {
		if err := s.subscribe(typeURL, want[typeURL]); err != nil {
			return err
		}
	}
	return nil
}

// accept decodes a response and, if every resource in it is valid, stores
// it and tells the watches what changed. One bad resource rejects the
// response: state of the world is all or nothing.
func (c *Client) accept(typeURL string, resources []*anypb.Any) error {
	var errs []error
	decoded := make([]any, 0, len(resources))
	for i, a := range resources {
		v, err := decode(typeURL, a)
		if err != nil {
			errs = append(errs, fmt.Errorf("resource %d: %w", i, err))
			continue
		}
		decoded = append(decoded, v)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch typeURL {
	case listenerType:
		c.storeListenersLocked(decoded)
	case routeType:
		for _, v := range decoded {
			rc := v.(*routeConfig)
			c.routes[rc.name] = rc
		}
	case clusterType:
		c.clusters = make(map[string]*cluster, len(decoded))
		for _, v := range decoded {
			cl := v.(*cluster)
			c.clusters[cl.policy.Name] = cl
		}
	case endpointType:
		for _, v := range decoded {
			e := v.(*policy.Endpoints)
			c.endpoints[e.Cluster] = e
		}
	}
	c.deliverLocked()
	return nil
}

// decode reads one resource of typeURL into its decoded form.
func decode(typeURL string, a *anypb.Any) (any, error) {
	switch typeURL {
	case listenerType:
		l := &listenerv3.Listener{}
		if err := unmarshalAny(a, listenerType, l); err != nil {
			return nil, err
		}
		return decodeListener(l)
	case routeType:
		rc := &routev3.RouteConfiguration{}
		if err := unmarshalAny(a, routeType, rc); err != nil {
			return nil, err
		}
		return decodeRouteConfig(rc)
	case clusterType:
		cl := &clusterv3.Cluster{}
		if err := unmarshalAny(a, clusterType, cl); err != nil {
			return nil, err
		}
		return decodeCluster(cl)
	case endpointType:
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := unmarshalAny(a, endpointType, cla); err != nil {
			return nil, err
		}
		e, err := decodeEndpoints(cla)
		return &e, err
	}
	return nil, fmt.Errorf("unexpected type %s", typeURL)
}
