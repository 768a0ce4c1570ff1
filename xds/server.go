package xds

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// Config is everything a Server needs; flags become one of these.
type Config struct {
	// Registry is the source of Services. Required.
	Registry *discovery.Registry
	// Translate shapes the resources.
	Translate Options
	// Synced reports whether the discovery sources have listed everything
	// once; /readyz fails until it does, so a new replica takes no clients
	// before it knows every Service. Nil means synced.
	Synced func() bool
	// ReadyWait bounds how long a request that arrives before the server is
	// ready waits for it (see clientTable.awaitReady) before it is refused
	// Unavailable; zero means 10 seconds.
	ReadyWait time.Duration
	// Log receives the server's structured logs; nil means slog.Default().
	Log *slog.Logger
	// Metrics is where the server registers its metrics and what /metrics
	// serves; nil means a new registry with the Go and process collectors.
	Metrics *prometheus.Registry
	// VersionPrefix starts every version the server sends, so a client that
	// moves to another replica is never told "nothing changed" against a
	// version number the other replica counted. Empty means the hostname and
	// the start time.
	VersionPrefix string

	// Authenticator, when set, makes every ADS and CSDS call prove who it
	// is with a bearer token, and a client is sent only the resources of
	// its own namespace's Services and of those exported to it (see
	// ExportAnnotation). Nil, with no TrustDomain either, serves every
	// client everything, unasked.
	Authenticator Authenticator
	// TrustDomain, when set, lets a client prove who it is with a client
	// certificate the transport verified (mTLS), naming it
	// spiffe://<TrustDomain>/ns/<namespace>/sa/<account>; such a client
	// needs no token, and reads what its namespace may read, as a token's.
	// The gRPC server's TLS must verify client certificates for any to be
	// seen.
	TrustDomain string
	// ReadAllNamespaces are the namespaces whose clients read every
	// Service and may use CSDS: where the control plane's own tools and a
	// gateway run. Only with an Authenticator or a TrustDomain.
	ReadAllNamespaces []string
}

// typeURLs are the resource types served, in make-before-break order:
// a Cluster and its endpoints exist before a route points at them, and the
// route before a listener names it.
var typeURLs = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType, resourcev3.ListenerType}

// sidecarListenerCache keys the cache of the sidecar listeners (see
// Resources.SidecarListeners). A state-of-the-world LDS request that names
// no listener, a wildcard, is what a sidecar sends, since it cannot know the
// addresses it will intercept; it is served from this cache. Proxyless
// clients name the listener of the target they dial and are served from the
// Listener cache, so neither sees the other's listeners.
const sidecarListenerCache = "sidecar-listeners"

// cacheKeys are the caches, in make-before-break order: sidecar listeners
// name routes too, so they come last.
var cacheKeys = append(slices.Clone(typeURLs), sidecarListenerCache)

// cacheType is the type URL of the resources in a cache.
func cacheType(key string) string {
	switch {
	case key == sidecarListenerCache:
		return resourcev3.ListenerType
	case isEndpointCache(key):
		return resourcev3.EndpointType
	}
	return key
}

// classify picks the cache that serves a state-of-the-world request.
func classify(r *cachev3.Request) string {
	if r.GetTypeUrl() == resourcev3.ListenerType && isWildcard(r.GetResourceNames()) {
		return sidecarListenerCache
	}
	return r.GetTypeUrl()
}

func isWildcard(names []string) bool {
	return len(names) == 0 || slices.Contains(names, "*")
}

// typeName is the short name of a type URL, used in metrics and logs.
func typeName(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoints"
	case sidecarListenerCache:
		return "sidecar_listener"
	}
	return "other"
}

// Server is Ballast's xDS control plane. It keeps one go-control-plane
// LinearCache per resource type, all clients sharing them: every client of
// a cluster sees the same Services, so per-client snapshots would only
// multiply memory and work. A LinearCache versions each resource on its own
// and wakes only the watches of the resources that changed, so an endpoint
// change re-sends one ClusterLoadAssignment to the clients subscribed to it
// and nothing to anyone else, in state-of-the-world and delta streams alike.
//
// A slow client never slows the others: go-control-plane keeps at most one
// response in flight per stream and type, removing the watch once it has
// answered and re-creating it on the client's ACK, so the cache never
// blocks on a stream, and a client that ACKs late gets the newest state in
// one response instead of a queue of stale ones.
//
// Run owns the translation: it follows the Registry, retranslates the
// Services that changed and writes only the resources whose content changed.
type Server struct {
	cfg     Config
	log     *slog.Logger
	caches  map[string]*cachev3.LinearCache
	xds     serverv3.Server
	clients *clientTable
	metrics *metrics
	// access is who may read each resource; nil without an Authenticator,
	// when everyone reads everything and no index is kept.
	access *accessIndex

	// served is the last good translation of each Service; Run uses it,
	// and zoneCache, both holding zoneMu.
	served map[discovery.Key]servedService
	// endpoints serves ClusterLoadAssignments, from a cache per zone
	// (zones.go).
	endpoints *zonedCache
	// zoneMu is held by each translation pass and by the making of a
	// zone's cache, which reads what the passes wrote.
	zoneMu sync.Mutex

	// changes remembers, per resource, when the change that produced its
	// current content was noticed, for the push latency histogram.
	changesMu sync.Mutex
	changes   map[string]time.Time

	started atomic.Bool // the first full translation is in the caches
	ready   atomic.Bool // the caches hold everything discovery listed at sync
	// readyCh is closed when ready is set, for requests waiting on it.
	readyCh chan struct{}
}

// servedResource is one resource of a Service, with the cache it is in.
type servedResource struct {
	cache, name string
	res         types.Resource
}

// serviceResources are one Service's resources, sorted by cache then name.
// A sorted slice rather than a map per type: the server keeps this for
// every Service of the cluster, and a few small maps per Service would
// take more memory than the handful of entries they hold.
type serviceResources []servedResource

func compareServed(a, b servedResource) int {
	return cmp.Or(cmp.Compare(a.cache, b.cache), cmp.Compare(a.name, b.name))
}

// get finds the resource of a cache with a name.
func (rs serviceResources) get(cache, name string) (types.Resource, bool) {
	i, ok := slices.BinarySearchFunc(rs, servedResource{cache: cache, name: name}, compareServed)
	if !ok {
		return nil, false
	}
	return rs[i].res, true
}

// servedService is a Service's last good translation and the shape it was
// made from.
type servedService struct {
	shape     shape
	resources serviceResources
	// svc is the snapshot translated, from which a new zone's endpoints
	// are made.
	svc *discovery.Service
	// aliases are the alias Listeners of the Service that clients have
	// asked for (see aliases.go), which resources holds.
	aliases []string
}

// NewServer builds a Server; nothing runs until Run.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Registry == nil {
		return nil, fmt.Errorf("xds server: no registry")
	}
	if cfg.Translate.DefaultPolicy != "" {
		if _, err := policy.ParseLB(string(cfg.Translate.DefaultPolicy)); err != nil {
			return nil, fmt.Errorf("xds server: default policy: %w", err)
		}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
		cfg.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if cfg.VersionPrefix == "" {
		host, _ := os.Hostname()
		cfg.VersionPrefix = host + "-" + strconv.FormatInt(time.Now().Unix(), 36) + "-"
	}
	s := &Server{
		cfg:     cfg,
		log:     cmp.Or(cfg.Log, slog.Default()).With("component", "xds"),
		caches:  map[string]*cachev3.LinearCache{},
		served:  map[discovery.Key]servedService{},
		changes: map[string]time.Time{},
		readyCh: make(chan struct{}),
	}
	s.cfg.ReadyWait = cmp.Or(s.cfg.ReadyWait, 10*time.Second)
	m, err := newMetrics(cfg.Metrics, s)
	if err != nil {
		return nil, fmt.Errorf("xds server: %w", err)
	}
	s.metrics = m
	mux := &cachev3.MuxCache{
		Classify: classify,
		// Delta clients are proxyless ones (grpc-go's sidecar listeners
		// come over state of the world): every delta request goes by type.
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{},
	}
	for _, k := range cacheKeys {
		c := cachev3.NewLinearCache(cacheType(k), cachev3.WithVersionPrefix(cfg.VersionPrefix))
		s.caches[k] = c
		mux.Caches[k] = c
	}
	s.endpoints = newZonedCache(s.caches[resourcev3.EndpointType], s.zoneCache)
	mux.Caches[resourcev3.EndpointType] = s.endpoints
	mux.Caches[resourcev3.ListenerType] = &listenerCache{s: s, next: s.caches[resourcev3.ListenerType]}
	s.clients = newClientTable(s)
	if cfg.Authenticator != nil || cfg.TrustDomain != "" {
		s.access = newAccessIndex()
	}
	// The server's context only bounds go-control-plane's own bookkeeping;
	// streams end with their gRPC contexts, which GracefulStop ends.
	s.xds = serverv3.NewServer(context.Background(), mux, s.clients)
	return s, nil
}

// Register adds ADS (state-of-the-world and delta) and CSDS to a gRPC server.
// With an Authenticator or a TrustDomain both need valid credentials.
func (s *Server) Register(gs grpc.ServiceRegistrar) {
	if s.access == nil {
		discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, s.xds)
		statusv3.RegisterClientStatusDiscoveryServiceServer(gs, &csds{clients: s.clients})
		return
	}
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, &guardedADS{s: s, next: s.xds})
	statusv3.RegisterClientStatusDiscoveryServiceServer(gs, &guardedCSDS{s: s, next: &csds{clients: s.clients}})
}

// Ready reports whether the server serves a full view: discovery has synced
// and every Service it had written by then is in the caches.
func (s *Server) Ready() bool { return s.ready.Load() }

func (s *Server) synced() bool { return s.cfg.Synced == nil || s.cfg.Synced() }

// markReady sets ready and wakes the requests waiting for it.
func (s *Server) markReady() {
	if !s.ready.Swap(true) {
		close(s.readyCh)
	}
}

// syncPoll is how often Run asks an unsynced discovery whether it has
// synced; it stops asking once it has.
const syncPoll = 20 * time.Millisecond

// Run follows the Registry until ctx ends. A lone change is translated and
// pushed at once; changes that arrive while a pass runs are drained together
// by the next pass, so a burst costs few passes and no fixed delay.
func (s *Server) Run(ctx context.Context) error {
	sub := s.cfg.Registry.Subscribe()
	defer sub.Close()
	// Sources write what they listed before they report synced, so a sync
	// seen before a pass means that pass covers it.
	synced := s.synced()
	// Subscribed before listing, so nothing changed in between is missed.
	var keys []discovery.Key
	for _, svc := range s.cfg.Registry.List() {
		keys = append(keys, svc.Key)
	}
	s.apply(keys, time.Now())
	s.started.Store(true)
	s.log.Info("initial translation done", "services", len(keys), "synced", synced)
	var syncTick <-chan time.Time
	if synced {
		s.markReady()
	} else {
		t := time.NewTicker(syncPoll)
		defer t.Stop()
		syncTick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.C():
			noticed := time.Now()
			s.apply(sub.Drain(), noticed)
		case <-syncTick:
			if !s.synced() {
				continue
			}
			s.apply(sub.Drain(), time.Now())
			s.markReady()
			syncTick = nil
			s.log.Info("discovery synced; ready")
		}
	}
}

// apply retranslates the given Services and writes what changed into the
// caches, one update per type. A Service that fails to translate keeps
// serving its last good resources.
func (s *Server) apply(keys []discovery.Key, noticed time.Time) {
	s.zoneMu.Lock()
	defer s.zoneMu.Unlock()
	s.applyLocked(keys, noticed)
}

// applyLocked is apply, for callers that hold zoneMu.
func (s *Server) applyLocked(keys []discovery.Key, noticed time.Time) {
	zones := s.endpoints.zoneList()
	caches := s.cacheKeys(zones)
	toUpdate := map[string]map[string]types.Resource{}
	toDelete := map[string][]string{}
	for _, t := range caches {
		toUpdate[t] = map[string]types.Resource{}
	}
	for _, k := range keys {
		prev := s.served[k]
		var next servedService
		var o *owner
		if svc, ok := s.cfg.Registry.Get(k); ok {
			s.endpoints.learnZones(svc)
			res, err := s.translate(svc, prev, zones)
			if err != nil {
				s.metrics.translateErrors.Inc()
				s.log.Error("service not updated; still serving its last good resources", "service", k.String(), "err", err)
				continue
			}
			next = res
			o = ownerOf(svc)
		}
		// A change of who may read a Service changes none of its
		// resources, yet the clients that gain or lose it must be told:
		// its resources are written again, which sends them to every
		// client that subscribes to them or to all (the filter deciding
		// anew what each may see).
		exportChanged := false
		if s.access != nil {
			exportChanged = s.access.update(k, o, prev.resources, next.resources)
		}
		for _, r := range next.resources {
			// A resource kept from the last translation is the same
			// pointer: no need to compare its content.
			if old, ok := prev.resources.get(r.cache, r.name); ok && !exportChanged && (old == r.res || proto.Equal(old, r.res)) {
				continue
			}
			toUpdate[r.cache][r.name] = r.res
		}
		for _, r := range prev.resources {
			if _, ok := next.resources.get(r.cache, r.name); !ok {
				toDelete[r.cache] = append(toDelete[r.cache], r.name)
			}
		}
		if len(next.resources) == 0 {
			delete(s.served, k)
		} else {
			s.served[k] = next
		}
	}
	// Until the server is ready, the passes fill the caches with what
	// discovery lists: clients are not sent to a replica that is not
	// ready, so there is no push latency to time yet, and remembering when
	// every resource of the cluster was first seen would only hold memory
	// (a map entry per resource).
	if s.ready.Load() {
		s.changesMu.Lock()
		for _, t := range caches {
			for name := range toUpdate[t] {
				s.changes[changeKey(cacheType(t), name)] = noticed
			}
			for _, name := range toDelete[t] {
				delete(s.changes, changeKey(cacheType(t), name))
			}
		}
		s.changesMu.Unlock()
	}
	for _, t := range caches {
		if len(toUpdate[t]) == 0 && len(toDelete[t]) == 0 {
			continue
		}
		if err := s.cache(t).UpdateResources(toUpdate[t], toDelete[t]); err != nil {
			s.log.Error("cache update failed", "cache", t, "err", err)
		}
		s.log.Debug("resources changed", "cache", t, "updated", len(toUpdate[t]), "deleted", len(toDelete[t]))
	}
}

// cacheKeys are the keys of every cache, in make-before-break order, a
// zone's endpoints beside the default ones.
func (s *Server) cacheKeys(zones []string) []string {
	if len(zones) == 0 {
		return cacheKeys
	}
	out := make([]string, 0, len(cacheKeys)+len(zones))
	for _, k := range cacheKeys {
		out = append(out, k)
		if k == resourcev3.EndpointType {
			for _, z := range zones {
				out = append(out, zoneCacheKey(z))
			}
		}
	}
	return out
}

// cache is the cache of a key of cacheKeys. Callers hold zoneMu.
func (s *Server) cache(key string) *cachev3.LinearCache {
	if key != resourcev3.EndpointType && isEndpointCache(key) {
		return (*s.endpoints.zones.Load())[strings.TrimPrefix(key, resourcev3.EndpointType+"@")]
	}
	return s.caches[key]
}

// translate turns a Service into the resources the server holds: all but
// the alias Listeners no client has asked for (see aliases.go). When its
// shape is the one prev was made from, and prev holds every alias asked
// for, only the endpoints have changed: the Listeners,
// RouteConfigurations and Clusters of prev are kept as they are (the same
// objects, never modified once built) and only the ClusterLoadAssignments
// are rebuilt, which is most of what an endpoint change would otherwise
// cost before it can be pushed. Callers hold zoneMu.
func (s *Server) translate(svc *discovery.Service, prev servedService, zones []string) (servedService, error) {
	sh := shapeOf(svc)
	var next serviceResources
	aliases := prev.aliases
	if len(prev.resources) > 0 && prev.shape == sh && !slices.ContainsFunc(prev.aliases, func(name string) bool {
		_, ok := prev.resources.get(resourcev3.ListenerType, name)
		return !ok
	}) {
		endpoints := translateEndpoints(svc, "", s.cfg.Translate)
		next = make(serviceResources, 0, len(prev.resources))
		for _, r := range prev.resources {
			if !isEndpointCache(r.cache) {
				next = append(next, r)
			}
		}
		for _, e := range endpoints {
			p, err := pack(e)
			if err != nil {
				return servedService{}, fmt.Errorf("service %s: endpoints %s: %w", svc.Key, e.ClusterName, err)
			}
			next = append(next, servedResource{resourcev3.EndpointType, e.ClusterName, p})
		}
	} else {
		res, err := TranslateService(svc, s.cfg.Translate)
		if err != nil {
			return servedService{}, err
		}
		res.Listeners, aliases = s.servedListeners(res, prev.aliases)
		if next, err = packAll(byType(res)); err != nil {
			return servedService{}, fmt.Errorf("service %s: %w", svc.Key, err)
		}
	}
	def := next
	for _, z := range zones {
		zr, err := s.zoneResources(svc, def, z)
		if err != nil {
			return servedService{}, err
		}
		next = append(next, zr...)
	}
	slices.SortFunc(next, compareServed)
	return servedService{shape: sh, resources: next, svc: svc, aliases: aliases}, nil
}

// pack turns a resource into what the caches hold: its wire encoding
// (deterministic, so equal content is equal bytes), carried as the unknown
// fields of a message that has no fields of its own. Such a message
// marshals to exactly those bytes, which go-control-plane sends in an Any
// of the cache's type, so clients receive the resource unchanged. The
// server holds every resource of the cluster for as long as it runs, and
// the encoding is far smaller than the message tree (each endpoint of a
// ClusterLoadAssignment is a tree of small messages); the tree is built,
// validated and dropped.
func pack(r types.Resource) (types.Resource, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	p := &emptypb.Empty{}
	p.ProtoReflect().SetUnknown(b)
	return p, nil
}

// packAll packs rs in place.
func packAll(rs serviceResources) (serviceResources, error) {
	for i, r := range rs {
		p, err := pack(r.res)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", typeName(r.cache), r.name, err)
		}
		rs[i].res = p
	}
	return rs, nil
}

func changeKey(typeURL, name string) string { return typeURL + "\x00" + name }

// changedAt is when the current content of a resource was noticed.
func (s *Server) changedAt(typeURL, name string) (time.Time, bool) {
	s.changesMu.Lock()
	defer s.changesMu.Unlock()
	t, ok := s.changes[changeKey(typeURL, name)]
	return t, ok
}

func byType(r Resources) serviceResources {
	out := make(serviceResources, 0, len(r.Listeners)+len(r.SidecarListeners)+len(r.Routes)+len(r.Clusters)+len(r.Endpoints))
	for _, l := range r.Listeners {
		out = append(out, servedResource{resourcev3.ListenerType, l.Name, l})
	}
	for _, l := range r.SidecarListeners {
		out = append(out, servedResource{sidecarListenerCache, l.Name, l})
	}
	for _, rc := range r.Routes {
		out = append(out, servedResource{resourcev3.RouteType, rc.Name, rc})
	}
	for _, c := range r.Clusters {
		out = append(out, servedResource{resourcev3.ClusterType, c.Name, c})
	}
	for _, e := range r.Endpoints {
		out = append(out, servedResource{resourcev3.EndpointType, e.ClusterName, e})
	}
	// Translation names every resource of a type differently; were two
	// alike, get would find one of them, as a map would have kept one.
	slices.SortFunc(out, compareServed)
	return out
}

// Handler serves /healthz, /readyz and /metrics: what probes and
// Prometheus read, which shows no client's config (DebugHandler does).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Ready() {
			http.Error(w, "not ready: discovery has not synced yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Metrics, promhttp.HandlerOpts{}))
	return mux
}

// metrics are the server's Prometheus metrics, ballast_xds_*.
type metrics struct {
	clients         *prometheus.GaugeVec
	pushes          *prometheus.CounterVec
	pushLatency     *prometheus.HistogramVec
	nacks           *prometheus.CounterVec
	translateErrors prometheus.Counter
	waiting         prometheus.Gauge
	authFailures    *prometheus.CounterVec
	forbidden       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ballast_xds_connected_clients",
			Help: "xDS streams open now, by protocol variant (sotw or delta).",
		}, []string{"mode"}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ballast_xds_requests_waiting_for_sync",
			Help: "xDS requests held until discovery has synced, so that none is answered from an incomplete world.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_xds_pushes_total",
			Help: "xDS responses sent, by resource type and protocol variant.",
		}, []string{"type", "mode"}),
		pushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ballast_xds_push_latency_seconds",
			Help:    "Time from noticing a registry change to sending the changed resource to a client that already had it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_xds_nacks_total",
			Help: "xDS responses rejected by clients, by resource type.",
		}, []string{"type"}),
		translateErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ballast_xds_translate_errors_total",
			Help: "Service updates that could not be translated; the Service keeps its last good resources.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_xds_auth_failures_total",
			Help: "xDS and CSDS calls refused for their credentials: no_token, malformed, refused (by the token check), unavailable (the check could not be made).",
		}, []string{"reason"}),
		forbidden: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_xds_forbidden_requests_total",
			Help: "Resource names clients subscribed to that belong to another namespace's unexported Services, by type; they are not sent.",
		}, []string{"type"}),
	}
	// Every type shows up at zero, so a dashboard sees "no NACKs", not "no data".
	for _, t := range typeURLs {
		m.nacks.WithLabelValues(typeName(t))
		m.pushLatency.WithLabelValues(typeName(t))
	}
	for _, c := range []prometheus.Collector{m.clients, m.waiting, m.pushes, m.pushLatency, m.nacks, m.translateErrors, m.authFailures, m.forbidden, &resourceCollector{s: s}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// resourceCollector reports ballast_xds_resources from the caches at scrape
// time, so the count never drifts from what is served.
type resourceCollector struct{ s *Server }

var resourcesDesc = prometheus.NewDesc("ballast_xds_resources",
	"xDS resources served, by type.", []string{"type"}, nil)

func (c *resourceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- resourcesDesc }

func (c *resourceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range cacheKeys {
		ch <- prometheus.MustNewConstMetric(resourcesDesc, prometheus.GaugeValue,
			float64(c.s.caches[t].NumResources()), typeName(t))
	}
}
