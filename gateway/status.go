package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ballast-dev/ballast/discovery/kube"
)

// StatusWriterOptions configure a StatusWriter.
type StatusWriterOptions struct {
	// Controller is the controllerName whose route parent entries are
	// written; empty means ControllerName.
	Controller gatewayv1.GatewayController
	Log        *slog.Logger
}

// StatusWriter writes a gateway's Status to the Kubernetes API: the
// Accepted condition of its GatewayClasses, each Gateway's conditions,
// addresses and listeners, and its entries in each GRPCRoute's
// status.parents (other controllers' entries stay). A condition keeps its
// lastTransitionTime while its status stays the same. Objects whose status
// already says what the gateway says are not written.
type StatusWriter struct {
	cfg  *rest.Config
	opts StatusWriterOptions
	log  *slog.Logger

	mu      sync.Mutex
	latest  *Status
	changed chan struct{}
}

// NewStatusWriter returns a writer to the cluster cfg points at; give its
// Update to Options.Status and run it with Run.
func NewStatusWriter(cfg *rest.Config, opts StatusWriterOptions) *StatusWriter {
	opts.Controller = cmp.Or(opts.Controller, ControllerName)
	return &StatusWriter{cfg: cfg, opts: opts, log: cmp.Or(opts.Log, slog.Default()).With("component", "gateway-status"),
		changed: make(chan struct{}, 1)}
}

// Update takes the gateway's latest Status; Run writes it.
func (w *StatusWriter) Update(s Status) {
	w.mu.Lock()
	w.latest = &s
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// Run writes each Status Update gives until ctx ends; what fails to be
// written is tried again with backoff, from the latest Status.
func (w *StatusWriter) Run(ctx context.Context) error {
	gc, err := gatewayclient.NewForConfig(rest.CopyConfig(w.cfg))
	if err != nil {
		return fmt.Errorf("gateway status: %w", err)
	}
	backoff := time.Duration(0)
	for {
		var retry <-chan time.Time
		if backoff > 0 {
			retry = time.After(backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.changed:
		case <-retry:
		}
		w.mu.Lock()
		s := w.latest
		w.mu.Unlock()
		if s == nil {
			continue
		}
		if err := w.write(ctx, gc, s); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 10*time.Second)
			w.log.Warn("status not written; retrying", "in", backoff, "err", err)
			continue
		}
		backoff = 0
	}
}

// write writes every object of s whose status differs; it returns every
// failure, joined.
func (w *StatusWriter) write(ctx context.Context, gc gatewayclient.Interface, s *Status) error {
	now := metav1.Now()
	var errs []error
	for _, c := range s.Classes {
		errs = append(errs, ignoreGone(w.writeClass(ctx, gc, c, now)))
	}
	for _, g := range s.Gateways {
		errs = append(errs, ignoreGone(w.writeGateway(ctx, gc, g, now)))
	}
	for _, r := range s.Routes {
		errs = append(errs, ignoreGone(w.writeRoute(ctx, gc, r.Route.Namespace, r.Route.Name, r.Parents, now)))
	}
	return errors.Join(errs...)
}

func (w *StatusWriter) writeClass(ctx context.Context, gc gatewayclient.Interface, c ClassStatus, now metav1.Time) error {
	cur, err := gc.GatewayV1().GatewayClasses().Get(ctx, c.Class.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	next := mergeConditions(cur.Status.Conditions, c.Conditions, now)
	if equality.Semantic.DeepEqual(next, cur.Status.Conditions) {
		return nil
	}
	cur.Status.Conditions = next
	if _, err := gc.GatewayV1().GatewayClasses().UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("gatewayclass %s: %w", c.Class.Name, err)
	}
	return nil
}

func (w *StatusWriter) writeGateway(ctx context.Context, gc gatewayclient.Interface, g GatewayStatus, now metav1.Time) error {
	api := gc.GatewayV1().Gateways(g.Gateway.Namespace)
	cur, err := api.Get(ctx, g.Gateway.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	next := g.Status
	next.Conditions = mergeConditions(cur.Status.Conditions, g.Status.Conditions, now)
	next.Listeners = nil
	for _, l := range g.Status.Listeners {
		var old []metav1.Condition
		if i := slices.IndexFunc(cur.Status.Listeners, func(o gatewayv1.ListenerStatus) bool { return o.Name == l.Name }); i >= 0 {
			old = cur.Status.Listeners[i].Conditions
		}
		l.Conditions = mergeConditions(old, l.Conditions, now)
		next.Listeners = append(next.Listeners, l)
	}
	if equality.Semantic.DeepEqual(next, cur.Status) {
		return nil
	}
	cur.Status = next
	if _, err := api.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("gateway %s/%s: %w", g.Gateway.Namespace, g.Gateway.Name, err)
	}
	return nil
}

func (w *StatusWriter) writeRoute(ctx context.Context, gc gatewayclient.Interface, ns, name string, parents []gatewayv1.RouteParentStatus, now metav1.Time) error {
	api := gc.GatewayV1().GRPCRoutes(ns)
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	next := kube.MergeRouteParents(w.opts.Controller, cur.Status.Parents, parents, now)
	if equality.Semantic.DeepEqual(next, cur.Status.Parents) {
		return nil
	}
	cur.Status.Parents = next
	if _, err := api.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("grpcroute %s/%s: %w", ns, name, err)
	}
	return nil
}

// mergeConditions is ours, each condition keeping old's
// lastTransitionTime while its status is the same.
func mergeConditions(old, ours []metav1.Condition, now metav1.Time) []metav1.Condition {
	out := make([]metav1.Condition, 0, len(ours))
	for _, c := range ours {
		c.LastTransitionTime = now
		if o := meta.FindStatusCondition(old, c.Type); o != nil && o.Status == c.Status {
			c.LastTransitionTime = o.LastTransitionTime
		}
		out = append(out, c)
	}
	return out
}

// ignoreGone drops the error of an object deleted meanwhile (or, for a
// route, one that came from a file).
func ignoreGone(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
