package route

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/policy"
)

// picker routes each call, then hands it to the picker of the chosen
// backend's Cluster. It is immutable: the balancer builds a new one when
// a child's changes.
type picker struct {
	router *policy.Router
	// children are the Clusters' pickers; nil while a child has not
	// reported one (its calls wait), absent for a Cluster that does not
	// exist.
	children map[string]balancer.Picker
	// empty are the Clusters with no endpoint (read only).
	empty map[string]bool
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	// A call whose rule Filters chose (with its request filter applied)
	// keeps that rule, as long as the route is the same.
	d, filtered := info.Ctx.Value(decisionKey{}).(decision)
	filtered = filtered && d.router == p.router
	i := d.rule
	if !filtered {
		headers := policy.NoHeaders
		if p.router.MatchesHeaders() {
			headers = outgoing{info.Ctx}
		}
		if i = p.router.Match(info.FullMethodName, headers); i < 0 {
			return balancer.PickResult{}, unavailable(fmt.Sprintf("route %s: %v for %s", p.router.Route().Name, policy.ErrNoRule, info.FullMethodName))
		}
	}
	backend, err := p.router.Backend(i)
	if err != nil {
		return balancer.PickResult{}, unavailable(fmt.Sprintf("route %s: %v for %s", p.router.Route().Name, err, info.FullMethodName))
	}
	child, ok := p.children[backend.Cluster]
	if !ok {
		return balancer.PickResult{}, unavailable(fmt.Sprintf("route %s sends this call to cluster %s, which does not exist", p.router.Route().Name, backend.Cluster))
	}
	if len(p.empty) > 0 && p.empty[backend.Cluster] {
		// Not a status: grpc-go fails a call with it as UNAVAILABLE, but
		// lets a wait-for-ready call wait for endpoints, as it waits
		// without a route.
		return balancer.PickResult{}, fmt.Errorf("route %s sends this call to cluster %s, which has no ready endpoints", p.router.Route().Name, backend.Cluster)
	}
	if child == nil {
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	res, err := child.Pick(info)
	if err != nil {
		return res, err
	}
	// Without Filters, the rule's Set and Add headers are all a picker
	// can apply.
	if m := p.router.RequestHeaders(i); !filtered && (len(m.Set) > 0 || len(m.Add) > 0) {
		res.Metadata = addHeaders(res.Metadata, m)
	}
	return res, nil
}

// addHeaders adds a rule's Set and Add headers (those it does not also
// remove) to md, the child's pick metadata.
func addHeaders(md metadata.MD, m *policy.HeaderModifier) metadata.MD {
	md = md.Copy()
	if md == nil {
		md = metadata.MD{}
	}
	for _, hs := range [][]policy.Header{m.Set, m.Add} {
		for _, h := range hs {
			if !removes(m, h.Name) {
				md[h.Name] = append(md[h.Name], h.Value)
			}
		}
	}
	return md
}

func removes(m *policy.HeaderModifier, name string) bool {
	for _, r := range m.Remove {
		if r == name {
			return true
		}
	}
	return false
}

// outgoing is a call's outgoing metadata as a route matches it. As with
// grpc-go's xDS routing, content-type is application/grpc unless the
// application set one.
type outgoing struct{ ctx context.Context }

func (o outgoing) Header(name string) (string, bool) {
	vs := metadata.ValueFromOutgoingContext(o.ctx, name)
	switch {
	case len(vs) == 1:
		return vs[0], true
	case len(vs) > 1:
		return strings.Join(vs, ","), true
	case name == "content-type":
		return "application/grpc", true
	}
	return "", false
}

// errPicker fails every call with err.
type errPicker struct{ err error }

func (p errPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{}, p.err
}

func unavailable(msg string) error { return status.Error(codes.Unavailable, msg) }
