package kube

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	"github.com/ballast-dev/ballast/discovery"
)

// routeInformers watch GRPCRoutes (gateway.networking.k8s.io/v1) and
// ReferenceGrants (v1beta1, which every Gateway API release since v0.6
// serves) and write them to the registry as they come: the registry
// itself re-resolves the Services they touch. A cluster without the
// Gateway API CRDs has no routes: the source reads Services as before,
// and looks for the CRDs again every crdPoll, since they are often
// installed with the control plane, in the same apply. It returns the
// informers' sync checks; none when the CRDs are missing.
func (s *Source) routeInformers(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	if ok, err := c.Served(ctx, gatewayv1.SchemeGroupVersion, "grpcroutes"); err != nil {
		return nil, err
	} else if !ok {
		s.log.Info("the GRPCRoute CRD is not installed: no routes until it is", "group", gatewayv1.GroupVersion.String())
		start(func() { s.awaitRoutes(ctx, c, start) })
		return nil, nil
	}
	return s.watchRoutes(ctx, c, start)
}

// crdPoll is how often a source without the GRPCRoute CRD looks for it.
const crdPoll = 5 * time.Second

// awaitRoutes watches routes once the GRPCRoute CRD is served.
func (s *Source) awaitRoutes(ctx context.Context, c *client, start func(func())) {
	t := time.NewTicker(crdPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ok, err := c.Served(ctx, gatewayv1.SchemeGroupVersion, "grpcroutes"); err != nil || !ok {
			continue
		}
		s.log.Info("the GRPCRoute CRD is installed: reading routes")
		if _, err := s.watchRoutes(ctx, c, start); err != nil {
			s.log.Error("cannot watch routes", "err", err)
		}
		return
	}
}

// watchRoutes starts the informers on GRPCRoutes and ReferenceGrants.
func (s *Source) watchRoutes(ctx context.Context, c *client, start func(func())) ([]cache.InformerSynced, error) {
	grants, err := c.Served(ctx, gatewayv1beta1.SchemeGroupVersion, "referencegrants")
	if err != nil {
		return nil, err
	}
	routes, err := c.routes.Informer(s.opts.Namespace, nil, trimGateway)
	if err != nil {
		return nil, err
	}
	rh, err := routes.AddEventHandler(mirror(s.setRoute, s.reg.DeleteRoute))
	if err != nil {
		return nil, fmt.Errorf("watch grpcroutes: %w", err)
	}
	synced := []cache.InformerSynced{rh.HasSynced}
	start(func() { routes.RunWithContext(ctx) })
	if grants {
		gi, err := c.grants.Informer(s.opts.Namespace, nil, trimGateway)
		if err != nil {
			return nil, err
		}
		gh, err := gi.AddEventHandler(mirror(s.setGrant, s.reg.DeleteGrant))
		if err != nil {
			return nil, fmt.Errorf("watch referencegrants: %w", err)
		}
		synced = append(synced, gh.HasSynced)
		start(func() { gi.RunWithContext(ctx) })
	}
	return synced, nil
}

func (s *Source) setRoute(obj any) {
	if rt, ok := obj.(*gatewayv1.GRPCRoute); ok {
		s.reg.SetRoute(rt)
	}
}

func (s *Source) setGrant(obj any) {
	if g, ok := obj.(*gatewayv1beta1.ReferenceGrant); ok {
		v1 := gatewayv1.ReferenceGrant(*g)
		s.reg.SetGrant(&v1)
	}
}

// trimGateway keeps of GRPCRoutes and ReferenceGrants what the registry
// reads: identity, generation, creation time (rule precedence) and spec.
// Status is written from the registry's view, never read back from the
// cache.
func trimGateway(obj any) (any, error) {
	switch o := obj.(type) {
	case *gatewayv1.GRPCRoute:
		o.ObjectMeta = metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, UID: o.UID, ResourceVersion: o.ResourceVersion,
			Generation: o.Generation, CreationTimestamp: o.CreationTimestamp}
		o.Status = gatewayv1.GRPCRouteStatus{}
	case *gatewayv1beta1.ReferenceGrant:
		o.ObjectMeta = trimMeta(o.ObjectMeta)
	}
	return obj, nil
}

// mirror is the event handler that keeps the registry in step with one
// kind of object: set on add and update (an object of another type is
// ignored), del with its key on delete, tombstones included.
func mirror[T any](set func(T), del func(discovery.Key)) cache.ResourceEventHandlerFuncs {
	put := func(obj any) {
		if o, ok := obj.(T); ok {
			set(o)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    put,
		UpdateFunc: func(_, obj any) { put(obj) },
		DeleteFunc: func(obj any) {
			if k, err := cache.DeletionHandlingObjectToName(obj); err == nil {
				del(discovery.Key{Namespace: k.Namespace, Name: k.Name})
			}
		},
	}
}
