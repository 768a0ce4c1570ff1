package xds

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ballast-dev/ballast/discovery"
)

// Zone preference makes the one per-client part of what the server sends:
// a Service whose trafficDistribution prefers the client's zone has a
// ClusterLoadAssignment per zone (that zone's endpoints at priority 0, the
// others at priority 1; see endpointsOf). So the endpoints are served from
// a LinearCache per zone, besides the default one of clients with no zone
// or a zone no endpoint is in: a zone's cache holds every
// ClusterLoadAssignment, its own for the Services that prefer zones and
// the default one (the same packed resource) for the others. Clients stay
// served from shared caches, one per zone, and zones are few.
//
// A zone's cache is made when the first client of that zone asks for
// endpoints, so a cluster whose clients report no zone keeps one cache,
// and only for zones that endpoints are in, which Kubernetes names: a
// client cannot make the server grow a cache per name it invents. Such a
// client is served the default cache, which is right for it (its zone has
// no endpoint to prefer). Should its zone gain an endpoint later, that
// endpoint's Service's default ClusterLoadAssignment changes too, so the
// client is sent it, and its next request (the ACK) is classified again:
// to its zone's cache from then on. Caches are never removed: a stream's
// watches may be on one.

// zoneCacheKey is the served-resource cache key of a zone's endpoints.
func zoneCacheKey(zone string) string { return resourcev3.EndpointType + "@" + zone }

// isEndpointCache reports whether a cache key holds endpoints: the default
// cache's or a zone's.
func isEndpointCache(key string) bool {
	return key == resourcev3.EndpointType || strings.HasPrefix(key, resourcev3.EndpointType+"@")
}

// zonedCache is the cache of ClusterLoadAssignments behind go-control-plane's
// MuxCache: it hands each watch to the cache of the client's zone (the
// node's locality, which go-control-plane sets on every request of a
// stream from its first).
type zonedCache struct {
	def *cachev3.LinearCache
	// zones are the caches made so far, by zone: written under the
	// Server's zoneMu, read without a lock on every request.
	zones atomic.Pointer[map[string]*cachev3.LinearCache]
	// known are the zones endpoints are in, as zones.
	known atomic.Pointer[map[string]bool]
	// make makes a zone's cache (see Server.zoneCache).
	make func(zone string) *cachev3.LinearCache
}

var _ cachev3.Cache = (*zonedCache)(nil)

func newZonedCache(def *cachev3.LinearCache, make func(string) *cachev3.LinearCache) *zonedCache {
	z := &zonedCache{def: def, make: make}
	z.zones.Store(&map[string]*cachev3.LinearCache{})
	z.known.Store(&map[string]bool{})
	return z
}

func (z *zonedCache) pick(zone string) *cachev3.LinearCache {
	if zone == "" {
		return z.def
	}
	if c := (*z.zones.Load())[zone]; c != nil {
		return c
	}
	if !(*z.known.Load())[zone] {
		return z.def
	}
	return z.make(zone)
}

func (z *zonedCache) CreateWatch(r *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	return z.pick(r.GetNode().GetLocality().GetZone()).CreateWatch(r, sub, ch)
}

func (z *zonedCache) CreateDeltaWatch(r *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return z.pick(r.GetNode().GetLocality().GetZone()).CreateDeltaWatch(r, sub, ch)
}

func (z *zonedCache) Fetch(ctx context.Context, r *cachev3.Request) (cachev3.Response, error) {
	return z.pick(r.GetNode().GetLocality().GetZone()).Fetch(ctx, r)
}

// zoneList is the zones that have a cache, sorted. Callers hold zoneMu.
func (z *zonedCache) zoneList() []string {
	return slices.Sorted(maps.Keys(*z.zones.Load()))
}

// learnZones adds the zones svc's endpoints are in to the known ones.
// Callers hold zoneMu.
func (z *zonedCache) learnZones(svc *discovery.Service) {
	known := *z.known.Load()
	var grown map[string]bool
	for _, zone := range svc.Zones() {
		if !known[zone] {
			if grown == nil {
				grown = maps.Clone(known)
			}
			grown[zone] = true
		}
	}
	if grown != nil {
		z.known.Store(&grown)
	}
}

// zoneCache makes the cache of a zone, filled with what every Service
// served so far gives a client of that zone, unless another request made
// it first. It waits for a translation pass that is running, so the cache
// misses none of its writes.
func (s *Server) zoneCache(zone string) *cachev3.LinearCache {
	s.zoneMu.Lock()
	defer s.zoneMu.Unlock()
	if c := (*s.endpoints.zones.Load())[zone]; c != nil {
		return c
	}
	initial := map[string]types.Resource{}
	for k, sv := range s.served {
		zr, err := s.zoneResources(sv.svc, sv.resources, zone)
		if err != nil {
			// Translated once already: it cannot fail now. Were it to,
			// the zone's clients would get this Service's default
			// endpoints, which are still a correct answer.
			s.log.Error("zone endpoints not made", "service", k.String(), "zone", zone, "err", err)
			zr = s.sharedZoneResources(sv.resources, zone)
		}
		for _, r := range zr {
			initial[r.name] = r.res
		}
		sv.resources = append(sv.resources, zr...)
		slices.SortFunc(sv.resources, compareServed)
		s.served[k] = sv
	}
	c := cachev3.NewLinearCache(resourcev3.EndpointType, cachev3.WithVersionPrefix(s.cfg.VersionPrefix+zone+"/"),
		cachev3.WithInitialResources(initial))
	zones := maps.Clone(*s.endpoints.zones.Load())
	zones[zone] = c
	s.endpoints.zones.Store(&zones)
	s.log.Info("serving a new zone its own endpoints", "zone", zone, "services", len(s.served))
	return c
}

// zoneResources are a Service's endpoints as a client in zone gets them,
// made from its default ones (res, its resources of the default cache):
// its own per zone when it prefers zones, else the default ones (the same
// packed resources).
func (s *Server) zoneResources(svc *discovery.Service, res serviceResources, zone string) (serviceResources, error) {
	if svc == nil || !discovery.PrefersZone(svc.TrafficDistribution) {
		return s.sharedZoneResources(res, zone), nil
	}
	var out serviceResources
	for _, e := range translateEndpoints(svc, zone, s.cfg.Translate) {
		p, err := pack(e)
		if err != nil {
			return nil, fmt.Errorf("service %s: endpoints %s of zone %s: %w", svc.Key, e.ClusterName, zone, err)
		}
		out = append(out, servedResource{zoneCacheKey(zone), e.ClusterName, p})
	}
	return out, nil
}

// sharedZoneResources are the default endpoints of res under zone's key.
func (s *Server) sharedZoneResources(res serviceResources, zone string) serviceResources {
	var out serviceResources
	for _, r := range res {
		if r.cache == resourcev3.EndpointType {
			out = append(out, servedResource{zoneCacheKey(zone), r.name, r.res})
		}
	}
	return out
}
