package kubernetes

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"k8s.io/client-go/rest"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
)

// Cluster resolves kubernetes:/// targets straight from a cluster's API: a
// discovery/kube source filling a registry of its own. It is the default for
// a client that has no registry to share; one Cluster serves any number of
// ClientConns.
type Cluster struct {
	reg  *discovery.Registry
	done chan struct{}
	err  error // of the source's Run, once done is closed
}

// StartCluster runs a discovery/kube source on the cluster cfg points at until ctx ends and
// returns once the source has synced, so the first calls see every Service
// rather than "not found" for those not read yet. It fails if the source
// stops before that, or ctx ends first. With opts.Routes the source reads
// GRPCRoutes and ReferenceGrants too, and calls are routed by them: the
// client's ServiceAccount then needs RBAC get, list and watch on both.
func StartCluster(ctx context.Context, cfg *rest.Config, opts kube.Options) (*Cluster, error) {
	c := &Cluster{reg: discovery.NewRegistry(), done: make(chan struct{})}
	src := kube.New(cfg, c.reg, opts)
	go func() {
		defer close(c.done)
		c.err = src.Run(ctx)
	}()
	// kube.Source offers HasSynced, not a channel; a start-up poll is cheap.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !src.HasSynced() {
		select {
		case <-c.done:
			if c.err != nil {
				return nil, fmt.Errorf("kubernetes resolver: discovery stopped before it synced: %w", c.err)
			}
			return nil, fmt.Errorf("kubernetes resolver: discovery stopped before it synced: %w", context.Cause(ctx))
		case <-tick.C:
		}
	}
	return c, nil
}

// Builder is the resolver builder reading this cluster.
func (c *Cluster) Builder() resolver.Builder { return NewBuilder(c.reg) }

// DialOption resolves kubernetes:/// targets of one ClientConn from this cluster.
func (c *Cluster) DialOption() grpc.DialOption { return WithRegistry(c.reg) }

// DialOptions resolve kubernetes:/// targets of one ClientConn from this
// cluster and apply its routes' header filters (see DialOptions).
func (c *Cluster) DialOptions() []grpc.DialOption { return DialOptions(c.reg) }

// Registry is the registry the cluster's source fills, for other consumers.
func (c *Cluster) Registry() *discovery.Registry { return c.reg }

// Wait blocks until the source has stopped, after the context given to
// StartCluster ends, and returns its error.
func (c *Cluster) Wait() error {
	<-c.done
	return c.err
}
