package xds

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ballast-dev/ballast/discovery"
)

// Identity is who an xDS client proved to be: a Kubernetes ServiceAccount.
type Identity struct {
	Namespace      string
	ServiceAccount string
}

// String is the identity as Kubernetes names the ServiceAccount's user.
func (id Identity) String() string {
	return "system:serviceaccount:" + id.Namespace + ":" + id.ServiceAccount
}

// IdentityFromCertificate reads a client certificate's identity: its
// SPIFFE ID, a URI SAN spiffe://<trustDomain>/ns/<namespace>/sa/<account>,
// the form Istio, SPIRE and cert-manager's csi-driver-spiffe issue. The
// certificate has been verified against the control plane's client CA;
// this only says whom it names. A certificate with no such URI, or one of
// another trust domain, names no one here.
func IdentityFromCertificate(cert *x509.Certificate, trustDomain string) (Identity, error) {
	var seen []string
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		seen = append(seen, u.String())
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if u.Host != trustDomain || len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" ||
			u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			continue
		}
		return Identity{Namespace: parts[1], ServiceAccount: parts[3]}, nil
	}
	if len(seen) == 0 {
		return Identity{}, fmt.Errorf("client certificate %q has no SPIFFE ID (a URI SAN spiffe://%s/ns/<namespace>/sa/<serviceaccount>)",
			cert.Subject.CommonName, trustDomain)
	}
	return Identity{}, fmt.Errorf("client certificate's SPIFFE ID %v is not spiffe://%s/ns/<namespace>/sa/<serviceaccount>", seen, trustDomain)
}

// clientCertificate is the certificate the client of ctx presented and
// the TLS handshake verified, if any.
func clientCertificate(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

// Authenticator checks the bearer token a client sent. Its errors carry a
// gRPC status (Unauthenticated for a refused token, Unavailable when it
// could not check); an error without one is taken as a refused token.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// ExportAnnotation on a Service lets clients of other namespaces read its
// resources: "*" for every namespace, or a comma-separated list of
// namespaces. Without it a Service is read only by its own namespace's
// clients. The name and values follow Istio's networking.istio.io/exportTo,
// but the default is the opposite: a Service is private until exported,
// since a client of namespace A is not to read namespace B's resources
// unless B says so.
const ExportAnnotation = "ballast.dev/export-to"

// owner is who may read a resource: the Service it was made from.
type owner struct {
	key      discovery.Key
	exportTo []string // namespaces besides key.Namespace; "*" for all
}

func ownerOf(svc *discovery.Service) *owner {
	o := &owner{key: svc.Key}
	for _, ns := range strings.Split(svc.Annotations[ExportAnnotation], ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			o.exportTo = append(o.exportTo, ns)
		}
	}
	return o
}

func (o *owner) readableBy(ns string) bool {
	return o.key.Namespace == ns || slices.Contains(o.exportTo, "*") || slices.Contains(o.exportTo, ns)
}

// accessIndex maps every served resource to the Service it was made from,
// which is what decides who may read it. Resource names cannot be parsed
// for it: a sidecar listener is named by a ClusterIP, a bare dial name has
// no namespace. Run writes it before the caches, so a resource is known
// here before any client can be sent it.
type accessIndex struct {
	mu     sync.RWMutex
	owners map[string]*owner // by changeKey(type URL, name)
	// exports is each Service's exportTo as last indexed.
	exports map[discovery.Key][]string
}

func newAccessIndex() *accessIndex {
	return &accessIndex{owners: map[string]*owner{}, exports: map[discovery.Key][]string{}}
}

// update records a Service's resources after a translation: next are its
// resources now (with o their owner), prev those it had. A name another
// Service has taken since is left to it. It reports whether the Service
// is now exported to other namespaces than before.
func (x *accessIndex) update(k discovery.Key, o *owner, prev, next serviceResources) (exportChanged bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if o != nil {
		exportChanged = !slices.Equal(x.exports[k], o.exportTo)
		x.exports[k] = o.exportTo
	} else {
		delete(x.exports, k)
	}
	for _, r := range next {
		x.owners[changeKey(cacheType(r.cache), r.name)] = o
	}
	for _, r := range prev {
		if _, ok := next.get(r.cache, r.name); ok {
			continue
		}
		ck := changeKey(cacheType(r.cache), r.name)
		if cur := x.owners[ck]; cur != nil && cur.key == k {
			delete(x.owners, ck)
		}
	}
	return exportChanged
}

// readable says whether a client of namespace ns may be sent a resource,
// and whether the resource is known at all. An unknown resource is never
// sent: it either does not exist or is not indexed yet, and will be sent
// when it is.
func (x *accessIndex) readable(ns, typeURL, name string) (ok, known bool) {
	x.mu.RLock()
	o := x.owners[changeKey(typeURL, name)]
	x.mu.RUnlock()
	if o == nil {
		return false, false
	}
	return o.readableBy(ns), true
}

// caller is an authenticated stream's identity and what it may read.
type caller struct {
	s   *Server
	id  Identity
	all bool // reads every namespace's resources
}

func (c *caller) readable(typeURL, name string) bool {
	if c.all {
		return true
	}
	ok, _ := c.s.access.readable(c.id.Namespace, typeURL, name)
	return ok
}

// checkRequested logs and counts the names a client asked for that it
// may not read. They are not sent (the responses are filtered); a name
// not known yet is not counted, since a client may well subscribe to a
// Service before it exists.
func (c *caller) checkRequested(typeURL string, names []string) {
	if c.all {
		return
	}
	if typeURL == resourcev3.ListenerType {
		// An alias Listener asked for is known once built.
		if unlock := c.s.buildAliasNames(names); unlock != nil {
			unlock()
		}
	}
	var forbidden []string
	for _, n := range names {
		if ok, known := c.s.access.readable(c.id.Namespace, typeURL, n); known && !ok {
			forbidden = append(forbidden, n)
		}
	}
	if len(forbidden) == 0 {
		return
	}
	c.s.metrics.forbidden.WithLabelValues(typeName(typeURL)).Add(float64(len(forbidden)))
	if len(forbidden) > 10 {
		forbidden = append(forbidden[:10], "...")
	}
	c.s.log.Warn("client asked for resources of another namespace; not sent",
		"identity", c.id.String(), "type", typeName(typeURL), "names", forbidden,
		"hint", "the Service's owner can export it with the "+ExportAnnotation+" annotation")
}

// authenticate finds the stream's identity: from its client certificate
// when the transport verified one (mTLS: no API call), else from its
// bearer token.
func (s *Server) authenticate(ctx context.Context) (*caller, error) {
	if s.cfg.TrustDomain != "" {
		if cert := clientCertificate(ctx); cert != nil {
			id, err := IdentityFromCertificate(cert, s.cfg.TrustDomain)
			if err != nil {
				s.metrics.authFailures.WithLabelValues("certificate").Inc()
				s.log.Info("xDS client refused", "reason", "certificate", "err", err)
				return nil, status.Error(codes.Unauthenticated, err.Error())
			}
			return s.callerOf(id), nil
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return s.authenticateToken(ctx, md.Get("authorization"))
}

// authenticateToken finds a caller's identity from the values of its
// authorization header (gRPC metadata, or HTTP's).
func (s *Server) authenticateToken(ctx context.Context, vals []string) (*caller, error) {
	if len(vals) == 0 || s.cfg.Authenticator == nil {
		s.metrics.authFailures.WithLabelValues("no_token").Inc()
		return nil, status.Error(codes.Unauthenticated, s.noCredentials())
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" {
		s.metrics.authFailures.WithLabelValues("malformed").Inc()
		return nil, status.Error(codes.Unauthenticated, "authorization metadata is not \"Bearer <token>\"")
	}
	id, err := s.cfg.Authenticator.Authenticate(ctx, token)
	if err != nil {
		st, ok := status.FromError(err)
		if !ok {
			st = status.New(codes.Unauthenticated, err.Error())
		}
		reason := "refused"
		if st.Code() != codes.Unauthenticated {
			reason = "unavailable"
		}
		s.metrics.authFailures.WithLabelValues(reason).Inc()
		s.log.Info("xDS client refused", "reason", reason, "err", st.Message())
		return nil, st.Err()
	}
	return s.callerOf(id), nil
}

func (s *Server) callerOf(id Identity) *caller {
	return &caller{s: s, id: id, all: slices.Contains(s.cfg.ReadAllNamespaces, id.Namespace)}
}

// noCredentials says what a client without credentials should send, from
// what this control plane accepts.
func (s *Server) noCredentials() string {
	const token = "a Kubernetes ServiceAccount token (a projected token for the control plane's audience) " +
		"as gRPC call credentials, authorization: Bearer <token>"
	cert := "a client certificate (mTLS) of the control plane's client CA naming it spiffe://" + s.cfg.TrustDomain +
		"/ns/<namespace>/sa/<serviceaccount>"
	switch {
	case s.cfg.Authenticator != nil && s.cfg.TrustDomain != "":
		return "no credentials: this control plane serves only clients that present " + cert + ", or send " + token
	case s.cfg.TrustDomain != "":
		return "no credentials: this control plane serves only clients that present " + cert
	}
	return "no credentials: this control plane serves only clients that send " + token
}

// guardedADS is ADS for authenticated clients: a stream opens only with a
// valid token, and every response leaves out what the caller may not read.
// The caches are shared by every client (see Server), so filtering is done
// on the way out rather than by keeping a view per namespace.
type guardedADS struct {
	s    *Server
	next discoveryv3.AggregatedDiscoveryServiceServer
}

func (g *guardedADS) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	c, err := g.s.authenticate(stream.Context())
	if err != nil {
		return err
	}
	return g.next.StreamAggregatedResources(&guardedStream{AggregatedDiscoveryService_StreamAggregatedResourcesServer: stream, c: c})
}

func (g *guardedADS) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	c, err := g.s.authenticate(stream.Context())
	if err != nil {
		return err
	}
	return g.next.DeltaAggregatedResources(&guardedDeltaStream{AggregatedDiscoveryService_DeltaAggregatedResourcesServer: stream, c: c, sent: map[string]struct{}{}})
}

// guardedStream filters a state-of-the-world stream. A filtered response is a
// copy: go-control-plane may hold on to the one it made.
type guardedStream struct {
	discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	c *caller
}

func (s *guardedStream) Recv() (*discoveryv3.DiscoveryRequest, error) {
	req, err := s.AggregatedDiscoveryService_StreamAggregatedResourcesServer.Recv()
	if err == nil {
		s.c.checkRequested(req.GetTypeUrl(), req.GetResourceNames())
	}
	return req, err
}

func (s *guardedStream) Send(resp *discoveryv3.DiscoveryResponse) error {
	if !s.c.all {
		var keep []*anypb.Any
		filtered := false
		for i, a := range resp.Resources {
			if s.c.readable(resp.TypeUrl, resourceName(a)) {
				if filtered {
					keep = append(keep, a)
				}
				continue
			}
			if !filtered {
				filtered = true
				keep = append(make([]*anypb.Any, 0, len(resp.Resources)), resp.Resources[:i]...)
			}
		}
		if filtered {
			resp = &discoveryv3.DiscoveryResponse{
				VersionInfo: resp.VersionInfo, Resources: keep, Canary: resp.Canary, TypeUrl: resp.TypeUrl,
				Nonce: resp.Nonce, ControlPlane: resp.ControlPlane, ResourceErrors: resp.ResourceErrors,
			}
		}
	}
	return s.AggregatedDiscoveryService_StreamAggregatedResourcesServer.Send(resp)
}

// guardedDeltaStream filters a delta stream. sent remembers what this client was
// sent, so that a removal is passed on only for a resource it had.
type guardedDeltaStream struct {
	discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	c    *caller
	sent map[string]struct{}
}

func (s *guardedDeltaStream) Recv() (*discoveryv3.DeltaDiscoveryRequest, error) {
	req, err := s.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Recv()
	if err == nil {
		s.c.checkRequested(req.GetTypeUrl(), req.GetResourceNamesSubscribe())
	}
	return req, err
}

func (s *guardedDeltaStream) Send(resp *discoveryv3.DeltaDiscoveryResponse) error {
	if s.c.all {
		return s.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Send(resp)
	}
	out := &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: resp.SystemVersionInfo, TypeUrl: resp.TypeUrl, Nonce: resp.Nonce,
		ControlPlane: resp.ControlPlane, ResourceErrors: resp.ResourceErrors,
	}
	for _, r := range resp.Resources {
		if s.c.readable(resp.TypeUrl, r.GetName()) {
			out.Resources = append(out.Resources, r)
			s.sent[changeKey(resp.TypeUrl, r.GetName())] = struct{}{}
		}
	}
	for _, name := range resp.RemovedResources {
		ck := changeKey(resp.TypeUrl, name)
		if _, ok := s.sent[ck]; ok {
			out.RemovedResources = append(out.RemovedResources, name)
			delete(s.sent, ck)
		}
	}
	for _, rn := range resp.RemovedResourceNames {
		if _, ok := s.sent[changeKey(resp.TypeUrl, rn.GetName())]; ok {
			out.RemovedResourceNames = append(out.RemovedResourceNames, rn)
		}
	}
	return s.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Send(out)
}

// guardedCSDS is CSDS for authenticated clients: it shows every client's
// config, so only clients that read every namespace may ask.
type guardedCSDS struct {
	statusv3.UnimplementedClientStatusDiscoveryServiceServer
	s    *Server
	next *csds
}

func (g *guardedCSDS) allowed(ctx context.Context) error {
	c, err := g.s.authenticate(ctx)
	if err != nil {
		return err
	}
	if !c.all {
		return status.Errorf(codes.PermissionDenied, "CSDS shows every client's config; %s may not read it (only clients of namespaces %v)",
			c.id, g.s.cfg.ReadAllNamespaces)
	}
	return nil
}

func (g *guardedCSDS) FetchClientStatus(ctx context.Context, req *statusv3.ClientStatusRequest) (*statusv3.ClientStatusResponse, error) {
	if err := g.allowed(ctx); err != nil {
		return nil, err
	}
	return g.next.FetchClientStatus(ctx, req)
}

func (g *guardedCSDS) StreamClientStatus(stream statusv3.ClientStatusDiscoveryService_StreamClientStatusServer) error {
	if err := g.allowed(stream.Context()); err != nil {
		return err
	}
	return g.next.StreamClientStatus(stream)
}
