package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ballast-dev/ballast/xds/sidecar"
)

// SidecarListeners maps intercepted destinations to Service targets from
// the sidecar listeners the control plane serves, one per ClusterIP:port
// (see xds/sidecar). It subscribes to them by wildcard over ADS, as Envoy
// learns what to intercept, so the sidecar needs no access to the
// Kubernetes API.
//
// A response that cannot be read is NACKed and the last good map stays; so
// does the map while the control plane is unreachable, and the stream is
// re-opened with backoff.
type SidecarListeners struct {
	conn    grpc.ClientConnInterface
	node    *corev3.Node
	log     *slog.Logger
	targets atomic.Pointer[map[netip.AddrPort]string]
	synced  atomic.Bool
}

// NewSidecarListeners follows the sidecar listeners served on conn, a
// connection to the control plane, as node nodeID. Nothing happens until
// Run.
func NewSidecarListeners(conn grpc.ClientConnInterface, nodeID string, log *slog.Logger) *SidecarListeners {
	s := &SidecarListeners{conn: conn, node: &corev3.Node{Id: nodeID}, log: log.With("component", "sidecar-listeners")}
	s.targets.Store(&map[netip.AddrPort]string{})
	return s
}

// Target implements Destinations.
func (s *SidecarListeners) Target(dst netip.AddrPort) (string, bool) {
	t, ok := (*s.targets.Load())[unmap(dst)]
	return t, ok
}

// Synced reports whether a first set of listeners has arrived.
func (s *SidecarListeners) Synced() bool { return s.synced.Load() }

// Run follows the listeners until ctx ends.
func (s *SidecarListeners) Run(ctx context.Context) error {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for {
		received, err := s.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if received {
			backoff = minBackoff
		}
		s.log.Warn("control plane stream ended; serving the last listeners", "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// follow runs one ADS stream until it fails, and says whether any response
// arrived on it.
func (s *SidecarListeners) follow(ctx context.Context) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := sotw.NewADSClient(ctx, s.node, resourcev3.ListenerType)
	if err := c.InitConnect(s.conn); err != nil {
		return false, err
	}
	for {
		resp, err := c.Fetch()
		if err != nil {
			return received, err
		}
		received = true
		m, err := sidecarTargets(resp.Resources)
		if err != nil {
			s.log.Error("listeners rejected; serving the last good ones", "err", err)
			if err := c.Nack(err.Error()); err != nil {
				return received, err
			}
			continue
		}
		s.targets.Store(&m)
		s.synced.Store(true)
		s.log.Debug("listeners updated", "destinations", len(m))
		if err := c.Ack(); err != nil {
			return received, err
		}
	}
}

// sidecarTargets reads sidecar listeners into destination → xds:/// target.
// One bad listener rejects the response: state of the world is all or
// nothing.
func sidecarTargets(resources []*anypb.Any) (map[netip.AddrPort]string, error) {
	m := make(map[netip.AddrPort]string, len(resources))
	var errs []error
	for i, a := range resources {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			errs = append(errs, fmt.Errorf("resource %d: %w", i, err))
			continue
		}
		addr, route, err := sidecar.Route(l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m[addr] = "xds:///" + route
	}
	return m, errors.Join(errs...)
}
