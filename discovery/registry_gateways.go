package discovery

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The objects a Gateway API gateway serves besides routes and Services:
// GatewayClasses, Gateways and the TLS Secrets their listeners name. The
// registry keeps them as their sources wrote them; what they mean is the
// gateway's business (package gateway).

// SubscribeGateways returns a subscription that is told whenever anything
// a gateway serves may have changed: a GatewayClass, a Gateway, a Secret,
// a GRPCRoute, a ReferenceGrant or a Service. The keys it collects are of
// mixed kinds: a consumer recomputes what it serves from the registry.
func (r *Registry) SubscribeGateways() *Subscription {
	sub := &Subscription{r: r, ready: make(chan struct{}, 1), pending: map[Key]struct{}{}}
	r.mu.Lock()
	r.gatewaySubs[sub] = struct{}{}
	r.mu.Unlock()
	return sub
}

func (r *Registry) notifyGatewaysLocked(k Key) {
	for sub := range r.gatewaySubs {
		sub.add(k)
	}
}

// SetGatewayClass stores a GatewayClass (cluster-scoped: its Key has no
// namespace).
func (r *Registry) SetGatewayClass(c *gatewayv1.GatewayClass) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.classes[c.Name]; ok && old.Generation == c.Generation && equality.Semantic.DeepEqual(old.Spec, c.Spec) {
		return
	}
	r.classes[c.Name] = c
	r.notifyGatewaysLocked(Key{Name: c.Name})
}

// DeleteGatewayClass forgets a GatewayClass.
func (r *Registry) DeleteGatewayClass(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.classes[name]; ok {
		delete(r.classes, name)
		r.notifyGatewaysLocked(Key{Name: name})
	}
}

// GatewayClasses lists the GatewayClasses, sorted by name.
func (r *Registry) GatewayClasses() []*gatewayv1.GatewayClass {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*gatewayv1.GatewayClass, 0, len(r.classes))
	for _, c := range r.classes {
		out = append(out, c)
	}
	sortByKey(out)
	return out
}

// SetGateway stores a Gateway.
func (r *Registry) SetGateway(g *gatewayv1.Gateway) {
	k := Key{Namespace: g.Namespace, Name: g.Name}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.gateways[k]; ok && old.Generation == g.Generation && equality.Semantic.DeepEqual(old.Spec, g.Spec) {
		return
	}
	r.gateways[k] = g
	r.notifyGatewaysLocked(k)
}

// DeleteGateway forgets a Gateway.
func (r *Registry) DeleteGateway(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.gateways[k]; ok {
		delete(r.gateways, k)
		r.notifyGatewaysLocked(k)
	}
}

// Gateways lists the Gateways, sorted by key.
func (r *Registry) Gateways() []*gatewayv1.Gateway {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*gatewayv1.Gateway, 0, len(r.gateways))
	for _, g := range r.gateways {
		out = append(out, g)
	}
	sortByKey(out)
	return out
}

// SetSecret stores a Secret a listener may name for its certificate.
func (r *Registry) SetSecret(s *corev1.Secret) {
	k := Key{Namespace: s.Namespace, Name: s.Name}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.secrets[k]; ok && old.Type == s.Type && equality.Semantic.DeepEqual(old.Data, s.Data) {
		return
	}
	r.secrets[k] = s
	r.notifyGatewaysLocked(k)
}

// DeleteSecret forgets a Secret.
func (r *Registry) DeleteSecret(k Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.secrets[k]; ok {
		delete(r.secrets, k)
		r.notifyGatewaysLocked(k)
	}
}

// Secret returns a stored Secret.
func (r *Registry) Secret(k Key) (*corev1.Secret, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s, ok := r.secrets[k]
	return s, ok
}

// Granted reports whether a ReferenceGrant in to's namespace lets objects
// of kind fromKind (group gateway.networking.k8s.io) in from's namespace
// refer to the object to of group toGroup and kind toKind: what a
// listener's certificateRef to a Secret of another namespace needs.
func (r *Registry) Granted(fromKind string, from Key, toGroup, toKind string, to Key) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, g := range r.grants {
		if grantAllowsKind(g, fromKind, from, toGroup, toKind, to) {
			return true
		}
	}
	return false
}
