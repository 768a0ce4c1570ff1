package proxy

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/balancer/priority"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds/client"
)

// routing is how an upstream routes calls at one moment: immutable, so the
// per-call decision takes no lock. The route's decision is policy.Router,
// the one the kubernetes:/// library makes too.
type routing struct {
	// router routes each call to one of hosts; nil means every call goes
	// to def (a target without routes), or, with def nil too, that no
	// route has come yet.
	router *policy.Router
	hosts  map[string]*host
	// empty are the Clusters with no usable endpoint: their calls fail
	// at once with a status that names the Cluster (the control plane
	// sends the share of a backend that does not resolve to such a
	// Cluster, named after the backend).
	empty map[string]bool
	def   *host
	// calls are the router's rules' call policies, by rule; nil when no
	// rule has one.
	calls []*callRule
}

// dispatch routes a new call: with a route, the first rule that matches
// its :path and headers, that rule's request header modifier, and one of
// its backends by weight; then the backend's balancer places it. A call
// the route sends nowhere (no rule, no weight, a Cluster that does not
// exist) fails with UNAVAILABLE, as in grpc-go. The rule chosen here is
// where per-rule policy attaches.
func (up *upstream) dispatch(s *stream, b *batch) {
	rt := up.routing.Load()
	h := rt.def
	if rt.router != nil {
		i, _, backend, err := rt.router.Decide(s.path, s)
		if err != nil {
			up.unrouted(s, fmt.Sprintf("ballast proxy: route %s: %v for %s", rt.router.Route().Name, err, s.path), b)
			return
		}
		if h = rt.hosts[backend.Cluster]; h == nil {
			up.unrouted(s, fmt.Sprintf("ballast proxy: route %s sends this call to cluster %s, which does not exist", rt.router.Route().Name, backend.Cluster), b)
			return
		}
		if len(rt.empty) > 0 && rt.empty[backend.Cluster] {
			up.unrouted(s, fmt.Sprintf("ballast proxy: route %s sends this call to cluster %s, which has no endpoints", rt.router.Route().Name, backend.Cluster), b)
			return
		}
		if rt.calls != nil && rt.calls[i] != nil && rt.calls[i].Admits() && !up.admit(s, rt.calls[i], b) {
			return
		}
		var fields []hpack.HeaderField
		if m := rt.router.RequestHeaders(i); !m.Empty() {
			fields = modifyFields(s.req, m)
		}
		if hh := h.hashHeader.Load(); hh != nil {
			s.hashKey = headerValue(fields, s.req, *hh)
		}
		if rt.calls != nil && rt.calls[i] != nil {
			up.parkMu.Lock()
			waited := s.waited
			up.parkMu.Unlock()
			if fields == nil {
				fields = s.req
			}
			fields = s.startCall(rt.calls[i], fields, waited)
		}
		if fields != nil {
			up.parkMu.Lock()
			if len(s.upl.pending) > 0 { // else reset meanwhile
				s.upl.pending[0].fields = fields
			}
			up.parkMu.Unlock()
		}
		if m := rt.router.ResponseHeaders(i); !m.Empty() {
			s.respHeaders = m
		}
	} else if h == nil {
		up.wait(s, b)
		return
	}
	h.route(s, b) // sets s.host, under the lock unpark reads it with
}

// admit applies the rule's rate limit and fault to a call about to be
// placed (call policy.go's Admit): it reports false when the call is not
// placed now, failed (over the limit, or aborted) or delayed. A delayed
// call is routed again once its delay is over, keeping the abort decided
// now; it does not pass the rate limit twice. Its request frames meanwhile
// queue as a call waiting for its first route does, so, as such a call,
// it is not replayed on a retry.
func (up *upstream) admit(s *stream, cr *callRule, b *batch) bool {
	up.parkMu.Lock()
	admitted, abort := s.admitted, s.faultAbort
	up.parkMu.Unlock()
	if !admitted {
		var delay time.Duration
		delay, abort = cr.Admit()
		if delay > 0 {
			up.delay(s, delay, abort)
			return false
		}
	}
	if abort != nil {
		s.fail(abort.Code(), abort.Message(), b)
		return false
	}
	return true
}

// delay holds a call for d, then routes it again.
func (up *upstream) delay(s *stream, d time.Duration, abort *status.Status) {
	up.parkMu.Lock()
	if s.upl.closed {
		up.parkMu.Unlock()
		return
	}
	// The request headers still borrow the read loop's buffer.
	for i, it := range s.upl.pending {
		s.upl.pending[i] = it.own()
	}
	s.req = s.upl.pending[0].fields
	s.waited, s.admitted, s.faultAbort = true, true, abort
	up.parkMu.Unlock()
	time.AfterFunc(d, func() {
		var b batch
		up.parkMu.Lock()
		closed, stopped := s.upl.closed, up.stopped
		up.parkMu.Unlock()
		switch {
		case closed:
		case stopped:
			s.fail(codes.Unavailable, "ballast proxy: stopping", &b)
		default:
			up.dispatch(s, &b)
		}
		b.flush()
	})
}

// headerValue is the value of header name in the call's request headers
// as routed (fields, when the rule changed them, else req).
func headerValue(fields, req []hpack.HeaderField, name string) string {
	if fields == nil {
		fields = req
	}
	for _, hf := range fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// unrouted fails a call the route sends nowhere.
func (up *upstream) unrouted(s *stream, msg string, b *batch) {
	up.metrics.newStreamErrors.Inc()
	s.fail(codes.Unavailable, msg, b)
}

// wait queues a call that came before the upstream's first route.
func (up *upstream) wait(s *stream, b *batch) {
	up.parkMu.Lock()
	switch {
	case up.stopped:
		up.parkMu.Unlock()
		s.fail(codes.Unavailable, "ballast proxy: stopping", b)
		return
	case up.routing.Load().router != nil: // the route came meanwhile
		up.parkMu.Unlock()
		up.dispatch(s, b)
		return
	case s.upl.closed:
		up.parkMu.Unlock()
		return
	}
	// The request headers still borrow the read loop's buffer.
	for i, it := range s.upl.pending {
		s.upl.pending[i] = it.own()
	}
	s.req = s.upl.pending[0].fields
	s.waited = true
	up.waiting = append(up.waiting, s)
	up.parkMu.Unlock()
}

// Header implements policy.Headers over the call's request headers.
func (s *stream) Header(name string) (string, bool) {
	var joined string
	found := false
	for _, hf := range s.req {
		if hf.Name != name {
			continue
		}
		if found {
			joined += "," + hf.Value
		} else {
			joined, found = hf.Value, true
		}
	}
	return joined, found
}

// modifyFields is fields changed by m, into a new slice: headers m sets
// or removes leave, then m's Set and Add headers are appended (pseudo-
// headers stay first), except those it removes.
func modifyFields(fields []hpack.HeaderField, m *policy.HeaderModifier) []hpack.HeaderField {
	out := make([]hpack.HeaderField, 0, len(fields)+len(m.Set)+len(m.Add))
	for _, hf := range fields {
		if !m.Changes(hf.Name) {
			out = append(out, hf)
		}
	}
	removed := func(name string) bool {
		for _, r := range m.Remove {
			if r == name {
				return true
			}
		}
		return false
	}
	for _, h := range m.Set {
		if !removed(h.Name) {
			out = append(out, hpack.HeaderField{Name: h.Name, Value: h.Value})
		}
	}
	for _, h := range m.Add {
		if !removed(h.Name) {
			out = append(out, hpack.HeaderField{Name: h.Name, Value: h.Value})
		}
	}
	return out
}

// updateXDS takes what the control plane says of the upstream's target:
// its route, and the policy and endpoints of each Cluster the route names.
// Each Cluster gets a host (made the first time); hosts of Clusters the
// route no longer names retire once their calls end. It runs with the xDS
// client's lock held, so what may block runs on goroutines of up.work.
func (up *upstream) updateXDS(u client.Update) {
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.closed {
		return
	}
	// Endpoint changes come with the same route: it is compiled again
	// only when it changed.
	last := up.routing.Load()
	router, calls := last.router, last.calls
	if router == nil || !reflect.DeepEqual(*router.Route(), u.Route) {
		router = policy.NewRouter(u.Route)
		up.logRouteErrors(router)
		calls = newCallRules(router, up.metrics.calls, up.buckets)
	}
	hosts := make(map[string]*host, len(u.Clusters))
	var empty map[string]bool
	for _, name := range u.Route.Clusters() {
		cl, ok := u.Clusters[name]
		if !ok {
			continue // its share of calls fails
		}
		h := up.hosts[name]
		if h == nil {
			h = newHost(name, &up.parkMu, up.log)
		}
		hosts[name] = h
		var state resolver.State
		// Every healthy endpoint, with its priority: the host's balancer
		// uses the first priority that has any (as Usable would) and fails
		// over to the next when their connections all fail.
		for _, ep := range u.Endpoints[name].Endpoints {
			if ep.Health != policy.Healthy {
				continue
			}
			state.Endpoints = append(state.Endpoints, priority.Set(resolver.Endpoint{Addresses: []resolver.Address{{Addr: ep.Address.String()}}}, ep.Priority))
		}
		if len(state.Endpoints) == 0 {
			if empty == nil {
				empty = map[string]bool{}
			}
			empty[name] = true
		}
		h.updatePolicy(cl, state)
	}
	up.routing.Store(&routing{router: router, hosts: hosts, empty: empty, calls: calls})
	for name, h := range up.hosts {
		if hosts[name] == nil {
			up.retiring[h] = struct{}{}
			up.work.Go(func() {
				h.retire(fmt.Sprintf("ballast proxy: route %s no longer sends calls to cluster %s", u.Route.Name, name))
				up.mu.Lock()
				delete(up.retiring, h)
				up.mu.Unlock()
			})
		}
	}
	up.hosts = hosts
	up.parkMu.Lock()
	waiting := up.waiting
	up.waiting = nil
	up.parkMu.Unlock()
	if len(waiting) > 0 {
		up.work.Go(func() {
			var b batch
			for _, s := range waiting {
				up.dispatch(s, &b)
			}
			b.flush()
		})
	}
}

// logRouteErrors logs what of the route could not be compiled, once per
// change.
func (up *upstream) logRouteErrors(r *policy.Router) {
	msg := errors.Join(r.Errors()...)
	text := ""
	if msg != nil {
		text = msg.Error()
	}
	if text != up.routeErrors && text != "" {
		up.log.Warn("route rules that match no call", "target", up.target, "errors", strings.ReplaceAll(text, "\n", "; "))
	}
	up.routeErrors = text
}

// close stops the upstream: every host closes, and the calls still
// waiting for a route fail.
func (up *upstream) close() {
	up.mu.Lock()
	up.closed = true
	hosts := up.hosts
	up.hosts = nil
	for h := range up.retiring {
		h.closeLive()
	}
	up.mu.Unlock()
	for _, h := range hosts {
		h.close()
	}
	up.work.Wait()
	up.parkMu.Lock()
	up.stopped = true
	waiting := up.waiting
	up.waiting = nil
	up.parkMu.Unlock()
	var b batch
	for _, s := range waiting {
		s.fail(codes.Unavailable, "ballast proxy: stopping", &b)
	}
	b.flush()
}
