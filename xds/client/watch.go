package client

import (
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/ballast-dev/ballast/policy"
)

// Update is the resolved state of a watched target: the route of its
// calls, and every Cluster the route names with that Cluster's endpoints.
// Its maps are the watcher's; the Client never touches them again.
type Update struct {
	Route     policy.Route
	Clusters  map[string]policy.Cluster
	Endpoints map[string]policy.Endpoints
}

// watch is one Watch: its target and what it was last given.
type watch struct {
	target string
	fn     func(Update)

	route     *routeConfig
	clusters  []*cluster
	endpoints []*policy.Endpoints
	warned    string // the last problem logged, not to repeat it
}

// Watch follows target, a name a client dials (host:port, as in
// xds:///host:port), and calls fn with its state each time any part of it
// changes, once the whole chain (listener, route, clusters, endpoints) is
// there. fn runs with the Client's lock held: it must not call the Client
// and should return quickly. The returned func ends the watch.
//
// In a Client that follows the sidecar listeners, a target is the route a
// sidecar listener names (what Target returns), or a Service's dial name
// whose fully qualified form names one, as Ballast's control plane names
// routes (name.ns:port → name.ns.svc.<domain>:port): a state-of-the-world
// stream has one Listener subscription, and the wildcard takes it.
func (c *Client) Watch(target string, fn func(Update)) (cancel func()) {
	w := &watch{target: target, fn: fn}
	c.mu.Lock()
	c.watches[w] = struct{}{}
	c.deliverToLocked(w)
	c.mu.Unlock()
	c.wake()
	return func() {
		c.mu.Lock()
		delete(c.watches, w)
		c.mu.Unlock()
		c.wake()
	}
}

// Target implements the sidecar's Destinations: the xds:/// target of the
// Service port whose ClusterIP:port is dst, from the sidecar listeners.
func (c *Client) Target(dst netip.AddrPort) (string, bool) {
	t, ok := (*c.targets.Load())[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]
	return t, ok
}

// SidecarListenersSynced reports whether a first set of sidecar listeners
// has arrived.
func (c *Client) SidecarListenersSynced() bool { return c.sidecarSynced.Load() }

func (c *Client) storeListenersLocked(decoded []any) {
	c.listeners = make(map[string]*listener, len(decoded))
	targets := map[netip.AddrPort]string{}
	sidecarRoutes := map[string]bool{}
	for _, v := range decoded {
		l := v.(*listener)
		if l.sidecar.IsValid() {
			targets[l.sidecar] = "xds:///" + l.route
			sidecarRoutes[l.route] = true
			continue
		}
		c.listeners[l.name] = l
	}
	if c.cfg.SidecarListeners {
		c.sidecarRoutes = sidecarRoutes
		c.targets.Store(&targets)
		c.sidecarSynced.Store(true)
	}
}

// chainLocked walks target's chain as far as it is known: the listener to
// ask for (empty when the target starts at a route), the route
// configuration's name, and the route of the target's virtual host.
func (c *Client) chainLocked(target string) (listenerName, routeName string, route *routeConfig) {
	if c.cfg.SidecarListeners {
		routeName = c.sidecarRouteLocked(target)
	} else {
		listenerName = target
		l := c.listeners[target]
		switch {
		case l == nil:
		case l.inline != nil:
			return listenerName, "", l.inline
		default:
			routeName = l.route
		}
	}
	if routeName == "" {
		return listenerName, "", nil
	}
	return listenerName, routeName, c.routes[routeName]
}

// sidecarRouteLocked is the route, among those the sidecar listeners
// name, that serves target: the route of that name, or the one named by
// target's fully qualified form.
func (c *Client) sidecarRouteLocked(target string) string {
	if c.sidecarRoutes[target] {
		return target
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return ""
	}
	for r := range c.sidecarRoutes {
		rhost, rport, err := net.SplitHostPort(r)
		if err != nil || rport != port || !strings.HasPrefix(rhost, host+".") {
			continue
		}
		// name.ns → name.ns.svc.<domain>; name.ns.svc → name.ns.svc.<domain>
		if rest := rhost[len(host)+1:]; strings.HasPrefix(rest, "svc.") || strings.HasSuffix(host, ".svc") {
			return r
		}
	}
	return ""
}

// subscriptionsLocked lists, per type, the names the watches need now.
func (c *Client) subscriptionsLocked() map[string][]string {
	want := map[string][]string{}
	add := func(typeURL, name string) {
		if name != "" && !slices.Contains(want[typeURL], name) {
			want[typeURL] = append(want[typeURL], name)
		}
	}
	if c.cfg.SidecarListeners {
		add(listenerType, "*")
	}
	for w := range c.watches {
		listenerName, routeName, rc := c.chainLocked(w.target)
		add(listenerType, listenerName)
		add(routeType, routeName)
		if rc == nil {
			continue
		}
		route, ok := rc.hostFor(w.target)
		if !ok {
			continue
		}
		for _, name := range route.Clusters() {
			add(clusterType, name)
			if cl := c.clusters[name]; cl != nil {
				add(endpointType, cl.eds)
			}
		}
	}
	for _, names := range want {
		slices.Sort(names)
	}
	// Routes and endpoints no longer asked for are forgotten.
	for name := range c.routes {
		if !slices.Contains(want[routeType], name) {
			delete(c.routes, name)
		}
	}
	for name := range c.endpoints {
		if !slices.Contains(want[endpointType], name) {
			delete(c.endpoints, name)
		}
	}
	return want
}

func (c *Client) deliverLocked() {
	for w := range c.watches {
		c.deliverToLocked(w)
	}
}

// deliverToLocked gives w its target's state if the chain is complete and
// any part of it changed since w was last given it.
func (c *Client) deliverToLocked(w *watch) {
	_, _, rc := c.chainLocked(w.target)
	if rc == nil {
		return
	}
	route, ok := rc.hostFor(w.target)
	if !ok {
		c.warnLocked(w, "route configuration "+rc.name+" has no virtual host for the target")
		return
	}
	names := route.Clusters()
	clusters := make([]*cluster, 0, len(names))
	endpoints := make([]*policy.Endpoints, 0, len(names))
	for _, name := range names {
		cl := c.clusters[name]
		if cl == nil {
			return
		}
		e := c.endpoints[cl.eds]
		if e == nil {
			return
		}
		clusters, endpoints = append(clusters, cl), append(endpoints, e)
	}
	if rc == w.route && slices.Equal(clusters, w.clusters) && slices.Equal(endpoints, w.endpoints) {
		return
	}
	w.route, w.clusters, w.endpoints, w.warned = rc, clusters, endpoints, ""
	u := Update{
		Route:     route,
		Clusters:  make(map[string]policy.Cluster, len(clusters)),
		Endpoints: make(map[string]policy.Endpoints, len(clusters)),
	}
	for i, cl := range clusters {
		u.Clusters[cl.policy.Name] = cl.policy
		u.Endpoints[cl.policy.Name] = *endpoints[i]
	}
	w.fn(u)
}

func (c *Client) warnLocked(w *watch, problem string) {
	if w.warned != problem {
		w.warned = problem
		c.log.Warn("xds target unresolved", "target", w.target, "problem", problem)
	}
}
