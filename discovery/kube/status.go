package kube

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
)

// StatusOptions configure a StatusWriter.
type StatusOptions struct {
	// LeaseNamespace holds the Lease that elects the one replica that
	// writes; empty means $POD_NAMESPACE, else ballast-system.
	LeaseNamespace string
	// Identity names this replica in the Lease; empty means the hostname
	// (the pod's name).
	Identity string
	// Synced reports whether the registry's sources have listed
	// everything once: nothing is written before, as a route's backends
	// may not be known yet. Nil means synced.
	Synced func() bool
	// Logger receives the writer's logs; nil means slog.Default().
	Logger *slog.Logger
}

// leaseName is the Lease of the replicas that write route status.
const leaseName = "ballast-control-route-status"

// StatusWriter writes what the registry says of each GRPCRoute
// (discovery.Registry.RouteStatus) to its status.parents, in the entries
// of ControllerName, leaving other controllers' entries as they are. One
// replica writes at a time (a Lease), so replicas never fight over a
// route's status; the others serve xDS all the same.
type StatusWriter struct {
	cfg  *rest.Config
	reg  *discovery.Registry
	opts StatusOptions
	log  *slog.Logger
}

// NewStatusWriter returns a writer of the status of reg's GRPCRoutes to
// the cluster cfg points at, once Run is called.
func NewStatusWriter(cfg *rest.Config, reg *discovery.Registry, opts StatusOptions) *StatusWriter {
	if opts.LeaseNamespace == "" {
		opts.LeaseNamespace = cmp.Or(os.Getenv("POD_NAMESPACE"), "ballast-system")
	}
	if opts.Identity == "" {
		host, _ := os.Hostname()
		opts.Identity = host
	}
	log := cmp.Or(opts.Logger, slog.Default())
	return &StatusWriter{cfg: cfg, reg: reg, opts: opts, log: log.With("component", "route-status")}
}

// Run writes status while this replica holds the Lease, until ctx ends.
func (w *StatusWriter) Run(ctx context.Context) error {
	c, err := newClient(w.cfg)
	if err != nil {
		return fmt.Errorf("route status: %w", err)
	}
	e := &elector{leases: c.leases, namespace: w.opts.LeaseNamespace, name: leaseName, identity: w.opts.Identity, log: w.log}
	e.run(ctx, func(ctx context.Context) {
		w.log.Info("writing route status", "identity", w.opts.Identity)
		w.write(ctx, c)
		w.log.Debug("no longer writing route status")
	})
	return nil
}

// write keeps the status of every route, TrafficPolicy and
// XBackendTrafficPolicy up to date until ctx ends.
func (w *StatusWriter) write(ctx context.Context, c *client) {
	for w.opts.Synced != nil && !w.opts.Synced() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		var keys []discovery.Key
		for _, p := range w.reg.Policies() {
			keys = append(keys, discovery.Key{Namespace: p.Namespace, Name: p.Name})
		}
		w.loop(ctx, "trafficpolicy", keys, w.reg.SubscribePolicies(), func(ctx context.Context, k discovery.Key) error {
			return w.syncPolicy(ctx, c, k)
		})
	})
	wg.Go(func() {
		var keys []discovery.Key
		for _, p := range w.reg.BackendPolicies() {
			keys = append(keys, discovery.Key{Namespace: p.Namespace, Name: p.Name})
		}
		w.loop(ctx, "xbackendtrafficpolicy", keys, w.reg.SubscribeBackendPolicies(), func(ctx context.Context, k discovery.Key) error {
			return w.syncBackendPolicy(ctx, c, k)
		})
	})
	var keys []discovery.Key
	for _, rt := range w.reg.Routes() {
		keys = append(keys, discovery.Key{Namespace: rt.Namespace, Name: rt.Name})
	}
	w.loop(ctx, "grpcroute", keys, w.reg.SubscribeRoutes(), func(ctx context.Context, k discovery.Key) error {
		return w.sync(ctx, c, k)
	})
	wg.Wait()
}

// loop syncs the objects of one kind until ctx ends: those in keys at
// first, then each whose status sub says may have changed, from the
// registry's view at the time it is taken from the queue.
func (w *StatusWriter) loop(ctx context.Context, kind string, keys []discovery.Key, sub *discovery.Subscription, sync func(context.Context, discovery.Key) error) {
	defer sub.Close()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[discovery.Key]())
	defer queue.ShutDown()
	stop := context.AfterFunc(ctx, queue.ShutDown)
	defer stop()
	for _, k := range keys {
		queue.Add(k)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-sub.C():
				for _, k := range sub.Drain() {
					queue.Add(k)
				}
			}
		}
	}()
	for {
		k, shutdown := queue.Get()
		if shutdown {
			return
		}
		if err := sync(ctx, k); err != nil {
			w.log.Warn("status not written; retrying", kind, k.String(), "err", err)
			queue.AddRateLimited(k)
		} else {
			queue.Forget(k)
		}
		queue.Done(k)
	}
}

// sync writes one route's status if it differs from what the API holds.
func (w *StatusWriter) sync(ctx context.Context, c *client, k discovery.Key) error {
	_, parents, ok := w.reg.RouteStatus(k)
	if !ok {
		return nil // deleted
	}
	rt, err := c.routes.Get(ctx, k.Namespace, k.Name)
	if apierrors.IsNotFound(err) {
		return nil // not from the API (a file), or deleted meanwhile
	}
	if err != nil {
		return err
	}
	next := mergeParents(rt.Status.Parents, parents, metav1.Now())
	if equality.Semantic.DeepEqual(next, rt.Status.Parents) {
		return nil
	}
	rt.Status.Parents = next
	if _, err := c.routes.UpdateStatus(ctx, k.Namespace, k.Name, rt); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	w.log.Debug("route status written", "grpcroute", k.String(), "generation", rt.Generation)
	return nil
}

// mergeParents is old with Ballast's mesh entries replaced by ours (see
// MergeRouteParents).
func mergeParents(old, ours []gatewayv1.RouteParentStatus, now metav1.Time) []gatewayv1.RouteParentStatus {
	return MergeRouteParents(discovery.ControllerName, old, ours, now)
}

// MergeRouteParents is old with controller's entries replaced by ours:
// other controllers' entries stay, in their order; each condition keeps
// its last transition time while its status stays the same.
func MergeRouteParents(controller gatewayv1.GatewayController, old, ours []gatewayv1.RouteParentStatus, now metav1.Time) []gatewayv1.RouteParentStatus {
	return mergeStatuses(old, ours, now,
		func(p gatewayv1.RouteParentStatus) bool { return p.ControllerName == controller },
		func(a, b gatewayv1.RouteParentStatus) bool {
			return equality.Semantic.DeepEqual(a.ParentRef, b.ParentRef)
		},
		func(p *gatewayv1.RouteParentStatus) *[]metav1.Condition { return &p.Conditions })
}

// mergeStatuses merges per-parent status entries (a route's parents, a
// policy's ancestors): old's entries that are not ours stay, in their
// order, then ours follow, each keeping the transition times of the
// conditions of our old entry for the same parent while their status
// stays the same.
func mergeStatuses[S any](old, ours []S, now metav1.Time, isOurs func(S) bool, sameParent func(a, b S) bool, conditions func(*S) *[]metav1.Condition) []S {
	var out []S
	for _, e := range old {
		if !isOurs(e) {
			out = append(out, e)
		}
	}
	for _, e := range ours {
		var conds []metav1.Condition
		if i := slices.IndexFunc(old, func(o S) bool { return isOurs(o) && sameParent(o, e) }); i >= 0 {
			conds = slices.Clone(*conditions(&old[i]))
		}
		for _, c := range *conditions(&e) {
			c.LastTransitionTime = now
			meta.SetStatusCondition(&conds, c)
		}
		*conditions(&e) = conds
		out = append(out, e)
	}
	return out
}
