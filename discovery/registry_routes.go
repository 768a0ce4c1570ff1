package discovery

import (
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/api/equality"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// SetRoute stores a GRPCRoute, replacing any earlier version. A route
// that ValidateRoute refuses is kept for its status, but the routes served
// keep its last valid version (none if it never had one). The Services it
// attaches to get new snapshots when their routes change. Consumers must
// not modify rt.
func (r *Registry) SetRoute(rt *gatewayv1.GRPCRoute) {
	k := objectKey(rt)
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.routes[k]
	e, changed := nextVersion(old, rt, routeSpec, ValidateRoute)
	if !changed {
		return
	}
	r.routes[k] = e
	affected := map[Key]bool{}
	if old != nil && old.served != nil {
		parentsOf(old.served, affected)
		r.indexLocked(k, old.served, false)
	}
	if e.served != nil {
		parentsOf(e.served, affected)
		r.indexLocked(k, e.served, true)
	}
	r.reresolveLocked(affected)
	r.notifyRoutesLocked([]Key{k})
	r.targetsChangedLocked()
}

// DeleteRoute forgets a GRPCRoute.
func (r *Registry) DeleteRoute(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.routes[k]
	if !ok {
		return
	}
	delete(r.routes, k)
	affected := map[Key]bool{}
	if old.served != nil {
		parentsOf(old.served, affected)
		r.indexLocked(k, old.served, false)
	}
	r.reresolveLocked(affected)
	r.notifyRoutesLocked([]Key{k})
	r.targetsChangedLocked()
}

// SetGrant stores a ReferenceGrant, which lets routes of other
// namespaces send calls to Services of its own.
func (r *Registry) SetGrant(g *gatewayv1.ReferenceGrant) {
	k := Key{Namespace: g.Namespace, Name: g.Name}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.grants[k]; ok && equality.Semantic.DeepEqual(old.Spec, g.Spec) {
		return
	}
	r.grants[k] = g
	r.grantsChangedLocked()
}

// DeleteGrant forgets a ReferenceGrant.
func (r *Registry) DeleteGrant(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.grants[k]; !ok {
		return
	}
	delete(r.grants, k)
	r.grantsChangedLocked()
}

func (r *Registry) grantsChangedLocked() {
	affected := map[Key]bool{}
	for _, e := range r.routes {
		if e.served != nil {
			parentsOf(e.served, affected)
		}
	}
	r.reresolveLocked(affected)
	r.notifyRoutesLocked(slices.Collect(maps.Keys(r.routes)))
	r.notifyGatewaysLocked(Key{}) // a grant may admit a listener's Secret
}

// backendChangedLocked re-resolves the routes that attach to or name the
// Service k, which has appeared, gone or changed its ports.
func (r *Registry) backendChangedLocked(k Key) {
	affected := map[Key]bool{}
	var routes []Key
	for rk, e := range r.routes {
		if refersTo(e.current, k) || (e.served != nil && refersTo(e.served, k)) {
			routes = append(routes, rk)
			if e.served != nil {
				parentsOf(e.served, affected)
			}
		}
	}
	delete(affected, k) // Set has just resolved k itself
	r.reresolveLocked(affected)
	r.notifyRoutesLocked(routes)
}

// reresolveLocked computes the routes of the given Services again and
// stores a new snapshot of each whose routes changed.
func (r *Registry) reresolveLocked(parents map[Key]bool) {
	for k := range parents {
		svc, ok := r.services[k]
		if !ok {
			continue
		}
		next := *svc
		next.Call = r.serviceCallLocked(k)
		next.Balancing = r.serviceBalancingLocked(k)
		next.Cluster = r.serviceClusterLocked(k)
		next.Routes = resolveRoutes(&next, r.routesOfLocked(k), r.viewLocked())
		if equalRoutes(svc.Routes, next.Routes) && equality.Semantic.DeepEqual(svc.Call, next.Call) &&
			equality.Semantic.DeepEqual(svc.Balancing, next.Balancing) && equality.Semantic.DeepEqual(svc.Cluster, next.Cluster) {
			continue
		}
		r.services[k] = &next
		r.notifyLocked(k)
	}
}

// indexLocked adds (or removes) the served route rt, named k, to the
// index of routes by parent Service, which every Set reads: an endpoint
// change of a Service costs a lookup, not a pass over every route.
func (r *Registry) indexLocked(k Key, rt *gatewayv1.GRPCRoute, add bool) {
	parents := map[Key]bool{}
	parentsOf(rt, parents)
	for p := range parents {
		if add {
			if r.byParent[p] == nil {
				r.byParent[p] = map[Key]bool{}
			}
			r.byParent[p][k] = true
			continue
		}
		delete(r.byParent[p], k)
		if len(r.byParent[p]) == 0 {
			delete(r.byParent, p)
		}
	}
}

// routesOfLocked are the served routes that name the Service k as a
// parent, in a stable order.
func (r *Registry) routesOfLocked(k Key) []*gatewayv1.GRPCRoute {
	var out []*gatewayv1.GRPCRoute
	for rk := range r.byParent[k] {
		if e := r.routes[rk]; e != nil && e.served != nil {
			out = append(out, e.served)
		}
	}
	sortByKey(out)
	return out
}

func (r *Registry) notifyRoutesLocked(keys []Key) {
	if len(keys) == 0 {
		return
	}
	for sub := range r.routeSubs {
		for _, k := range keys {
			sub.add(k)
		}
	}
	for _, k := range keys {
		r.notifyGatewaysLocked(k)
	}
}

// registryView is a routeView over the registry's maps; only valid while
// the registry's lock is held.
type registryView struct {
	r *Registry
	// pending is a Service being stored, seen in place of the stored one.
	pending *Service
}

func (r *Registry) viewLocked() routeView { return registryView{r: r} }

func (v registryView) service(k Key) (*Service, bool) {
	if v.pending != nil && v.pending.Key == k {
		return v.pending, true
	}
	s, ok := v.r.services[k]
	return s, ok
}

func (v registryView) granted(from, to Key) bool {
	for _, g := range v.r.grants {
		if grantAllows(g, from, to) {
			return true
		}
	}
	return false
}

// parentsOf adds the Services rt attaches to.
func parentsOf(rt *gatewayv1.GRPCRoute, into map[Key]bool) {
	for _, p := range rt.Spec.ParentRefs {
		if k, _, ok := parentOf(rt, p); ok {
			into[k] = true
		}
	}
}

// refersTo reports whether rt attaches to or sends calls to the Service k.
func refersTo(rt *gatewayv1.GRPCRoute, k Key) bool {
	parents := map[Key]bool{}
	parentsOf(rt, parents)
	if parents[k] {
		return true
	}
	for _, rule := range rt.Spec.Rules {
		for _, b := range rule.BackendRefs {
			ns := rt.Namespace
			if b.Namespace != nil {
				ns = string(*b.Namespace)
			}
			if ns == k.Namespace && string(b.Name) == k.Name {
				return true
			}
		}
	}
	return false
}

func equalRoutes(a, b []PortRoute) bool {
	return equality.Semantic.DeepEqual(a, b)
}

// Routes lists the GRPCRoutes the registry holds, as their sources last
// wrote them, sorted by key.
func (r *Registry) Routes() []*gatewayv1.GRPCRoute {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*gatewayv1.GRPCRoute, 0, len(r.routes))
	for _, e := range r.routes {
		out = append(out, e.current)
	}
	sortByKey(out)
	return out
}

func routeSpec(rt *gatewayv1.GRPCRoute) any { return rt.Spec }
