// Package kube fills a discovery.Registry from the Kubernetes API: shared
// informers on Services and EndpointSlices, a rate-limited work queue keyed by
// Service, and one worker that recomputes a Service's whole snapshot from the
// informer caches. Events only say "look at this Service again", so a missed,
// repeated or reordered event is harmless, and a burst of events for one
// Service costs one recomputation.
//
// The informer caches are the source's memory of the cluster: when the API
// server is unreachable they keep their contents, and so does the registry,
// until the watch resumes and the caches catch up.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/ballast-dev/ballast/discovery"
)

// Options configure a Source.
type Options struct {
	// Namespace restricts the source to one namespace; empty means all.
	Namespace string
	// Logger receives the source's logs, and client-go's for its informers.
	// Nil means slog.Default().
	Logger *slog.Logger
	// Routes reads GRPCRoutes and ReferenceGrants too (Gateway API; RBAC
	// get, list and watch on both), when the cluster has their CRDs.
	Routes bool
	// Gateways reads GatewayClasses, Gateways and TLS Secrets too, what a
	// gateway serves (RBAC get, list and watch on each); the cluster must
	// have the Gateway CRDs.
	Gateways bool
	// Policies reads TrafficPolicies (ballast.dev) and
	// XBackendTrafficPolicies (gateway.networking.x-k8s.io, Gateway API's
	// experimental channel) too (RBAC get, list and watch on each), each
	// when the cluster has its CRD.
	Policies bool
}

// Source keeps a Registry in step with the Services and EndpointSlices of a
// cluster. The informers never resync: the worker is level-triggered and the
// watch delivers every change, so a periodic replay would only cost CPU.
type Source struct {
	cfg    *rest.Config
	reg    *discovery.Registry
	opts   Options
	log    *slog.Logger
	synced atomic.Bool
}

// New returns a Source that reads the cluster cfg points at and writes to
// reg once Run is called.
func New(cfg *rest.Config, reg *discovery.Registry, opts Options) *Source {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Source{cfg: cfg, reg: reg, opts: opts, log: log.With("component", "discovery/kube")}
}

// HasSynced reports whether the informer caches have been filled and every
// Service found then has been written to the registry, so that a consumer
// starting afterwards sees the whole cluster, not a part of it.
func (s *Source) HasSynced() bool { return s.synced.Load() }

// byService indexes EndpointSlices by the "namespace/name" of their Service.
const byService = "service"

// Run watches the cluster and updates the registry until ctx is done. It
// returns nil when ctx ends and an error only when it cannot start.
func (s *Source) Run(ctx context.Context) error {
	c, err := newClient(s.cfg)
	if err != nil {
		return err
	}
	// The informers' goroutines: waited for after cancel, deferred next,
	// has told them to stop.
	var running sync.WaitGroup
	defer running.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// client-go logs through klog; route its contextual logger to ours.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(s.log.Handler()))

	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[discovery.Key](),
		workqueue.TypedRateLimitingQueueConfig[discovery.Key]{},
	)
	defer queue.ShutDown()
	stop := context.AfterFunc(ctx, queue.ShutDown)
	defer stop()

	svcs, err := c.services.Informer(s.opts.Namespace, nil, trim)
	if err != nil {
		return err
	}
	slices, err := c.slices.Informer(s.opts.Namespace, nil, trim)
	if err != nil {
		return err
	}
	svcInformer := cache.NewTypedSharedIndexInformer[*corev1.Service](svcs)
	sliceInformer := cache.NewTypedSharedIndexInformer[*discoveryv1.EndpointSlice](slices)
	if err := sliceInformer.AddTypedIndexers(cache.TypedIndexers[*discoveryv1.EndpointSlice]{
		byService: func(es *discoveryv1.EndpointSlice) ([]string, error) {
			if k, ok := serviceOf(es); ok {
				return []string{k.String()}, nil
			}
			return nil, nil
		},
	}); err != nil {
		return fmt.Errorf("index endpointslices by service: %w", err)
	}

	svcHandler, err := svcInformer.AddTypedEventHandler(cache.TypedResourceEventHandlerFuncs[*corev1.Service]{
		AddFunc:    func(svc *corev1.Service) { queue.Add(keyOf(svc.Namespace, svc.Name)) },
		UpdateFunc: func(_, svc *corev1.Service) { queue.Add(keyOf(svc.Namespace, svc.Name)) },
		DeleteFunc: func(d cache.DeletedObject[*corev1.Service]) {
			n := d.GetObjectName()
			queue.Add(keyOf(n.Namespace, n.Name))
		},
	})
	if err != nil {
		return fmt.Errorf("watch services: %w", err)
	}
	enqueueSlice := func(es *discoveryv1.EndpointSlice) {
		if k, ok := serviceOf(es); ok {
			queue.Add(k)
		}
	}
	svcLister := corelisters.NewServiceLister(svcInformer.GetIndexer())
	sliceHandler, err := sliceInformer.AddTypedEventHandler(cache.TypedResourceEventHandlerFuncs[*discoveryv1.EndpointSlice]{
		AddFunc: enqueueSlice,
		UpdateFunc: func(old, es *discoveryv1.EndpointSlice) {
			// A slice moved to another Service changes both.
			enqueueSlice(old)
			enqueueSlice(es)
		},
		DeleteFunc: func(d cache.DeletedObject[*discoveryv1.EndpointSlice]) {
			if d.OptionalObj != nil {
				enqueueSlice(d.OptionalObj)
				return
			}
			// The informer lost the slice without a copy, so its Service is
			// unknown: look again at every Service of its namespace.
			all, _ := svcLister.Services(d.GetNamespace()).List(labels.Everything())
			for _, svc := range all {
				queue.Add(keyOf(svc.Namespace, svc.Name))
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watch endpointslices: %w", err)
	}
	for name, inf := range map[string]cache.SharedIndexInformer{"services": svcInformer, "endpointslices": sliceInformer} {
		if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			// Expired versions and closed streams are routine: the reflector
			// lists again. Anything else (forbidden, unreachable) is worth
			// a warning; either way the caches, and the registry, stay.
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
				apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				cache.DefaultWatchErrorHandler(ctx, r, err)
				return
			}
			s.log.Warn("watch failed; keeping the last known state", "resource", name, "err", err)
		}); err != nil {
			return fmt.Errorf("watch %s: %w", name, err)
		}
	}

	var routesSynced []cache.InformerSynced
	if s.opts.Routes {
		// Routes first, so that the Services written at sync arrive with
		// their routes.
		if routesSynced, err = s.routeInformers(ctx, c, running.Go); err != nil {
			return err
		}
		if len(routesSynced) > 0 && !cache.WaitForCacheSync(ctx.Done(), routesSynced...) {
			return nil
		}
	}
	if s.opts.Gateways {
		gatewaysSynced, err := s.gatewayInformers(ctx, c, running.Go)
		if err != nil {
			return err
		}
		if !cache.WaitForCacheSync(ctx.Done(), gatewaysSynced...) {
			return nil
		}
	}
	if s.opts.Policies {
		// Policies before Services too, for the same reason.
		synced, err := s.policyInformer(ctx, c, running.Go)
		if err != nil {
			return err
		}
		backend, err := s.backendPolicyInformer(ctx, c, running.Go)
		if err != nil {
			return err
		}
		synced = append(synced, backend...)
		if len(synced) > 0 && !cache.WaitForCacheSync(ctx.Done(), synced...) {
			return nil
		}
	}
	running.Go(func() { svcInformer.RunWithContext(ctx) })
	running.Go(func() { sliceInformer.RunWithContext(ctx) })
	if !cache.WaitFor(ctx, "", svcHandler.HasSyncedChecker(), sliceHandler.HasSyncedChecker()) {
		return nil // ctx ended before the caches filled.
	}

	w := worker{reg: s.reg, services: svcLister, slices: sliceInformer.GetTypedIndexer(), queue: queue, log: s.log}
	// Every object in the caches has been handed to the handlers, so the
	// queue holds the whole initial state; only this goroutine takes from it.
	for queue.Len() > 0 && w.processNext() {
	}
	s.synced.Store(true)
	s.log.Debug("caches synced and initial state written", "services", len(s.reg.List()))
	for w.processNext() {
	}
	return nil
}

// worker turns queued Service keys into registry snapshots.
type worker struct {
	reg      *discovery.Registry
	services corelisters.ServiceLister
	slices   cache.TypedIndexer[*discoveryv1.EndpointSlice]
	queue    workqueue.TypedRateLimitingInterface[discovery.Key]
	log      *slog.Logger
}

// processNext handles one key; it returns false once the queue shuts down.
func (w *worker) processNext() bool {
	k, shutdown := w.queue.Get()
	if shutdown {
		return false
	}
	defer w.queue.Done(k)
	if err := w.sync(k); err != nil {
		w.log.Error("sync service", "service", k, "err", err)
		w.queue.AddRateLimited(k)
		return true
	}
	w.queue.Forget(k)
	return true
}

// sync recomputes one Service from the caches.
func (w *worker) sync(k discovery.Key) error {
	svc, err := w.services.Services(k.Namespace).Get(k.Name)
	if apierrors.IsNotFound(err) {
		w.reg.Delete(k)
		w.log.Debug("service deleted", "service", k)
		return nil
	}
	if err != nil {
		return fmt.Errorf("get service %s from cache: %w", k, err)
	}
	slices, err := w.slices.ByTypedIndex(byService, k.String())
	if err != nil {
		return fmt.Errorf("endpointslices of service %s from cache: %w", k, err)
	}
	w.reg.Set(discovery.Build(svc, slices))
	w.log.Debug("service synced", "service", k, "endpointslices", len(slices))
	return nil
}

func keyOf(namespace, name string) discovery.Key {
	return discovery.Key{Namespace: namespace, Name: name}
}

// serviceOf names the Service an EndpointSlice belongs to, by its
// kubernetes.io/service-name label.
func serviceOf(es *discoveryv1.EndpointSlice) (discovery.Key, bool) {
	name := es.Labels[discoveryv1.LabelServiceName]
	return keyOf(es.Namespace, name), name != ""
}

// trim keeps, of the objects the informers hold, only what discovery
// reads (see discovery.Build) and what the informers key them by. The
// caches hold every Service and EndpointSlice of the cluster for the life
// of the process, so what is dropped here (managedFields, kubectl's
// last-applied copy, annotations other than ballast.dev/ ones, owner
// references, Service status and selectors, each
// endpoint's hints, hostname and full pod reference) is most of their
// memory. It is idempotent, as client-go requires of a transform.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Service:
		return trimService(o), nil
	case *discoveryv1.EndpointSlice:
		return trimSlice(o), nil
	}
	return obj, nil
}

// trimService and trimSlice trim in place: the object is the one the
// informer just decoded, and a trimmed copy would double what each decode
// allocates.
func trimService(svc *corev1.Service) *corev1.Service {
	annotations := svc.Annotations
	for k := range annotations {
		if !strings.HasPrefix(k, discovery.AnnotationPrefix) {
			annotations = nil
			for k, v := range svc.Annotations {
				if strings.HasPrefix(k, discovery.AnnotationPrefix) {
					if annotations == nil {
						annotations = map[string]string{}
					}
					annotations[k] = v
				}
			}
			break
		}
	}
	svc.ObjectMeta = trimMeta(svc.ObjectMeta)
	svc.Annotations = annotations
	ports := svc.Spec.Ports
	for i, p := range ports {
		ports[i] = corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port}
	}
	svc.Spec = corev1.ServiceSpec{ClusterIP: svc.Spec.ClusterIP, ClusterIPs: svc.Spec.ClusterIPs, Ports: ports, TrafficDistribution: svc.Spec.TrafficDistribution}
	svc.Status = corev1.ServiceStatus{}
	return svc
}

func trimSlice(es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	labels := es.Labels
	if name, ok := labels[discoveryv1.LabelServiceName]; !ok {
		labels = nil
	} else if len(labels) > 1 {
		labels = map[string]string{discoveryv1.LabelServiceName: name}
	}
	es.ObjectMeta = trimMeta(es.ObjectMeta)
	es.Labels = labels
	for i, ep := range es.Endpoints {
		if r := ep.TargetRef; r != nil {
			*r = corev1.ObjectReference{Kind: r.Kind, Name: r.Name}
		}
		es.Endpoints[i] = discoveryv1.Endpoint{Addresses: ep.Addresses, Conditions: ep.Conditions, NodeName: ep.NodeName, Zone: ep.Zone, TargetRef: ep.TargetRef}
	}
	return es
}

// trimMeta keeps what identifies an object to the informer's store.
func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
}
