package xds

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ballast-dev/ballast/discovery"
)

// A Service port has a Listener for every name a client may dial (see
// DialNames), but clients dial one or two of them, and most Services none
// but by their fully qualified name. So the server holds, of each port, the
// Listener of that canonical name, which also names the port's route,
// Cluster and endpoints, and builds an alias's Listener (name:port,
// name.ns:port, name.ns.svc:port) when a client asks for it by name: the
// server keeps every resource it holds for as long as it runs, in its own
// bookkeeping and in go-control-plane's (a versioned, lazily marshalled
// entry per resource), and alias Listeners would be most of them.
//
// An alias asked for is then kept, and rebuilt with its Service, until the
// Service goes; one asked for before its Service exists is built when the
// Service comes, since its watch is still open in the Listener cache then.
// A client that watches every Listener over delta (a wildcard; grpc-go and
// the sidecar never do: the sidecar's wildcard is served the sidecar
// listeners) is sent the canonical Listeners and whichever aliases are
// built, not every alias there could be.

// aliasKey parses a Listener name in one of the alias forms of DialNames
// into the Service it would be an alias of. The fully qualified name,
// sidecar listeners (an IP:port) and anything else are not aliases: a
// Service name is a DNS label, so the dots say which form a name is in.
func aliasKey(name string, opts Options) (discovery.Key, bool) {
	host, port, ok := strings.Cut(name, ":")
	if _, err := strconv.ParseUint(port, 10, 16); !ok || host == "" || err != nil {
		return discovery.Key{}, false
	}
	parts := strings.Split(host, ".")
	switch {
	case len(parts) == 1:
		if ns := opts.bareNameNamespace(); ns != "-" {
			return discovery.Key{Namespace: ns, Name: parts[0]}, true
		}
	case len(parts) == 2 || (len(parts) == 3 && parts[2] == "svc"):
		if parts[0] != "" && parts[1] != "" {
			return discovery.Key{Namespace: parts[1], Name: parts[0]}, true
		}
	}
	return discovery.Key{}, false
}

// listenerCache is the Listener cache behind go-control-plane's MuxCache:
// before a watch is made, it builds the alias Listeners it names that are
// not built yet.
type listenerCache struct {
	s    *Server
	next *cachev3.LinearCache
}

var _ cachev3.Cache = (*listenerCache)(nil)

func (c *listenerCache) CreateWatch(r *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if unlock := c.s.buildAliases(sub); unlock != nil {
		defer unlock()
	}
	return c.next.CreateWatch(r, sub, ch)
}

func (c *listenerCache) CreateDeltaWatch(r *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	if unlock := c.s.buildAliases(sub); unlock != nil {
		defer unlock()
	}
	return c.next.CreateDeltaWatch(r, sub, ch)
}

func (c *listenerCache) Fetch(ctx context.Context, r *cachev3.Request) (cachev3.Response, error) {
	return c.next.Fetch(ctx, r)
}

// buildAliases builds the alias Listeners sub names that are missing, of
// the Services served. When one is still missing after that (its Service
// is not served, or has no such port), it returns with zoneMu held and the
// function that releases it, for the watch to be made first: a translation
// pass that adds the Service then sees the watch (see servedListeners).
func (s *Server) buildAliases(sub cachev3.Subscription) (unlock func()) {
	if sub.IsWildcard() {
		return nil
	}
	var names []string
	for name := range sub.SubscribedResources() {
		if _, ok := aliasKey(name, s.cfg.Translate); ok {
			names = append(names, name)
		}
	}
	return s.buildAliasNames(names)
}

// buildAliasNames is buildAliases of a list of Listener names.
func (s *Server) buildAliasNames(names []string) (unlock func()) {
	if len(names) == 0 {
		return nil
	}
	s.zoneMu.Lock()
	var keys []discovery.Key
	for _, name := range names {
		k, ok := aliasKey(name, s.cfg.Translate)
		if !ok {
			continue
		}
		sv, ok := s.served[k]
		if !ok || slices.Contains(sv.aliases, name) {
			continue
		}
		if _, built := sv.resources.get(resourcev3.ListenerType, name); built {
			continue
		}
		// A new slice: zoneCache and the last pass may share the old one.
		sv.aliases = append(slices.Clip(sv.aliases), name)
		s.served[k] = sv
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	if len(keys) > 0 {
		s.applyLocked(keys, time.Now())
	}
	for _, name := range names {
		k, ok := aliasKey(name, s.cfg.Translate)
		if !ok {
			continue
		}
		if _, built := s.served[k].resources.get(resourcev3.ListenerType, name); !built {
			return s.zoneMu.Unlock
		}
	}
	s.zoneMu.Unlock()
	return nil
}

// servedListeners are the Listeners of a translation the server holds:
// each port's canonical one (named as its RouteConfiguration) and the
// aliases asked for (asked, from earlier requests) or watched now. It
// returns the aliases among them. Callers hold zoneMu.
func (s *Server) servedListeners(res Resources, asked []string) ([]*listenerv3.Listener, []string) {
	var (
		out     []*listenerv3.Listener
		aliases []string
	)
	for _, l := range res.Listeners {
		canonical := slices.ContainsFunc(res.Routes, func(rc *routev3.RouteConfiguration) bool { return rc.Name == l.Name })
		switch {
		case canonical:
		case slices.Contains(asked, l.Name) || s.caches[resourcev3.ListenerType].NumWatches(l.Name) > 0:
			aliases = append(aliases, l.Name)
		default:
			continue
		}
		out = append(out, l)
	}
	return out, aliases
}
