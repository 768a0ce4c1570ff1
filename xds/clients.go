package xds

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// clientTable observes every xDS stream through go-control-plane's
// callbacks: it counts pushes and NACKs, measures push latency, and keeps
// what each client was last sent and whether it accepted it, for CSDS and
// /debug/clients. The callbacks run on the stream goroutines, so the table
// only does bookkeeping under a short lock.
type clientTable struct {
	s *Server

	mu sync.Mutex
	// streams are keyed by variant and id: go-control-plane numbers
	// state-of-the-world and delta streams separately.
	streams map[streamKey]*clientState
}

type streamKey struct {
	mode string
	id   int64
}

var _ serverv3.Callbacks = (*clientTable)(nil)

func newClientTable(s *Server) *clientTable {
	return &clientTable{s: s, streams: map[streamKey]*clientState{}}
}

// clientState is one xDS stream (one client connection to this replica).
type clientState struct {
	Stream    int64                 `json:"stream"`
	Mode      string                `json:"mode"`
	Peer      string                `json:"peer,omitempty"`
	NodeID    string                `json:"nodeId,omitempty"`
	Zone      string                `json:"zone,omitempty"`
	Connected time.Time             `json:"connected"`
	Types     map[string]*typeState `json:"types"`

	node *corev3.Node
	ctx  context.Context // the stream's
}

// typeState is what one client holds of one resource type.
type typeState struct {
	// Version and Nonce are those of the last response sent.
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	SentAt  time.Time `json:"sentAt"`
	// Status is the client's answer to the last response: REQUESTED (no
	// answer yet), ACKED or NACKED; Error is the client's error detail.
	Status     string   `json:"status"`
	Error      string   `json:"error,omitempty"`
	Subscribed []string `json:"subscribed,omitempty"`
	// Resources are the resources the client holds, by name.
	Resources map[string]*sentResource `json:"resources"`
}

type sentResource struct {
	Version string     `json:"version,omitempty"`
	SentAt  time.Time  `json:"sentAt"`
	Any     *anypb.Any `json:"-"`
}

func (t *clientTable) open(ctx context.Context, id int64, mode string) {
	c := &clientState{Stream: id, Mode: mode, Connected: time.Now(), Types: map[string]*typeState{}, ctx: ctx}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		c.Peer = p.Addr.String()
	}
	t.mu.Lock()
	t.streams[streamKey{mode, id}] = c
	t.mu.Unlock()
	t.s.metrics.clients.WithLabelValues(mode).Inc()
}

func (t *clientTable) close(id int64, mode string) {
	t.mu.Lock()
	delete(t.streams, streamKey{mode, id})
	t.mu.Unlock()
	t.s.metrics.clients.WithLabelValues(mode).Dec()
}

// requestLocked records a client request: its node, its subscription and
// its answer (ACK or NACK) to the response its nonce names. Callers hold t.mu.
func (t *clientTable) requestLocked(k streamKey, node *corev3.Node, typeURL, nonce string, errDetail string, subscribed []string, setSubscribed bool) (*clientState, *typeState) {
	c := t.streams[k]
	if c == nil {
		return nil, nil
	}
	if node != nil && c.node == nil {
		c.node = node
		c.NodeID = node.GetId()
		c.Zone = node.GetLocality().GetZone()
	}
	ts := c.Types[typeURL]
	if ts == nil {
		ts = &typeState{Status: "REQUESTED", Resources: map[string]*sentResource{}}
		c.Types[typeURL] = ts
	}
	if setSubscribed {
		ts.Subscribed = subscribed
	}
	if nonce != "" && nonce == ts.Nonce {
		if errDetail != "" {
			ts.Status, ts.Error = "NACKED", errDetail
		} else {
			ts.Status, ts.Error = "ACKED", ""
		}
	}
	return c, ts
}

func (t *clientTable) nack(c *clientState, typeURL, version, nonce, detail string) {
	t.s.metrics.nacks.WithLabelValues(typeName(typeURL)).Inc()
	t.s.log.Warn("client rejected xDS response; it keeps its last accepted config",
		"node", c.NodeID, "peer", c.Peer, "type", typeName(typeURL), "version", version, "nonce", nonce, "err", detail)
}

// sent records a response and observes the push latency of every resource
// in it whose change the client had not been sent yet. Callers hold t.mu.
func (t *clientTable) sentLocked(c *clientState, typeURL, version, nonce string, resources map[string]*sentResource, removed []string, replace bool) {
	ts := c.Types[typeURL]
	if ts == nil {
		ts = &typeState{Resources: map[string]*sentResource{}}
		c.Types[typeURL] = ts
	}
	now := time.Now()
	ts.Version, ts.Nonce, ts.SentAt, ts.Status, ts.Error = version, nonce, now, "REQUESTED", ""
	for name, r := range resources {
		if prev := ts.Resources[name]; prev != nil {
			if changed, ok := t.s.changedAt(typeURL, name); ok && changed.After(prev.SentAt) {
				t.s.metrics.pushLatency.WithLabelValues(typeName(typeURL)).Observe(now.Sub(changed).Seconds())
			}
		}
		r.SentAt = now
	}
	if replace {
		ts.Resources = resources
	} else {
		maps.Copy(ts.Resources, resources)
	}
	for _, name := range removed {
		delete(ts.Resources, name)
	}
	t.s.metrics.pushes.WithLabelValues(typeName(typeURL), c.Mode).Inc()
}

// OnStreamOpen is called when a state-of-the-world stream opens.
func (t *clientTable) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, id, "sotw")
	return nil
}

// OnStreamClosed is called when a state-of-the-world stream ends.
func (t *clientTable) OnStreamClosed(id int64, _ *corev3.Node) { t.close(id, "sotw") }

// OnDeltaStreamOpen is called when a delta stream opens.
func (t *clientTable) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	t.open(ctx, id, "delta")
	return nil
}

// OnDeltaStreamClosed is called when a delta stream ends.
func (t *clientTable) OnDeltaStreamClosed(id int64, _ *corev3.Node) { t.close(id, "delta") }

// awaitReady holds a stream's request until the server is ready, for at
// most ReadyWait, then refuses it (Unavailable; the client retries). An
// answer before then would come from an incomplete world: a sidecar would
// take the Services missing from it for unknown destinations, and a
// proxyless client back from a restarted control plane, whose version is
// another instance's, is answered at once with whatever the caches hold,
// so a Listener not yet in them reads as deleted and its calls fail.
func (t *clientTable) awaitReady(k streamKey) error {
	if t.s.Ready() {
		return nil
	}
	t.mu.Lock()
	c := t.streams[k]
	t.mu.Unlock()
	if c == nil {
		return status.Error(codes.Unavailable, "control plane not ready: discovery has not synced")
	}
	t.s.metrics.waiting.Inc()
	defer t.s.metrics.waiting.Dec()
	timer := time.NewTimer(t.s.cfg.ReadyWait)
	defer timer.Stop()
	select {
	case <-t.s.readyCh:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	case <-timer.C:
		return status.Errorf(codes.Unavailable, "control plane not ready: discovery has not synced in %v", t.s.cfg.ReadyWait)
	}
}

// OnStreamRequest records a state-of-the-world request, once the server is
// ready (awaitReady); one carrying error_detail is a NACK of the response
// its nonce names.
func (t *clientTable) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	if err := checkRequest(req.GetTypeUrl(), len(req.GetResourceNames())); err != nil {
		return err
	}
	if err := t.awaitReady(streamKey{"sotw", id}); err != nil {
		return err
	}
	t.mu.Lock()
	if err := t.checkNodeLocked(streamKey{"sotw", id}, req.GetNode()); err != nil {
		t.mu.Unlock()
		return err
	}
	c, _ := t.requestLocked(streamKey{"sotw", id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(),
		req.GetErrorDetail().GetMessage(), req.GetResourceNames(), true)
	t.mu.Unlock()
	if c != nil && req.GetErrorDetail() != nil {
		t.nack(c, req.GetTypeUrl(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage())
	}
	return nil
}

// maxResourceNames bounds the resource names one stream may subscribe to
// per type, so that the client table stays bounded: far more Services
// than a cluster has.
const maxResourceNames = 100_000

// checkRequest refuses, before anything of it is recorded, a request for
// a type this control plane does not serve or one naming too many
// resources.
func checkRequest(typeURL string, names int) error {
	if !slices.Contains(typeURLs, typeURL) {
		return status.Errorf(codes.InvalidArgument, "unknown resource type %q: this control plane serves %s", typeURL, strings.Join(typeURLs, ", "))
	}
	if names > maxResourceNames {
		return status.Errorf(codes.ResourceExhausted, "request names %d %s resources, over the limit of %d a stream may hold", names, typeName(typeURL), maxResourceNames)
	}
	return nil
}

// checkNodeLocked refuses a stream whose first request does not say which
// node it is: xDS clients identify themselves there, and the control
// plane's answer and debugging depend on it. Callers hold t.mu.
func (t *clientTable) checkNodeLocked(k streamKey, node *corev3.Node) error {
	if c := t.streams[k]; c != nil && c.node == nil && node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "the stream's first request has no node id: an xDS client must identify itself (node.id)")
	}
	return nil
}

// typeState returns c's state of a type, if any.
func (c *clientState) typeState(typeURL string) *typeState {
	if c == nil {
		return nil
	}
	return c.Types[typeURL]
}

// OnStreamResponse records a state-of-the-world response about to be sent.
func (t *clientTable) OnStreamResponse(_ context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	sent := make(map[string]*sentResource, len(resp.GetResources()))
	for _, a := range resp.GetResources() {
		sent[resourceName(a)] = &sentResource{Any: a}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.streams[streamKey{"sotw", id}]
	if c == nil {
		return
	}
	// Listeners and Clusters are sent whole; a response of another type
	// holds only what changed, and the client keeps the rest of what it
	// subscribed to.
	full := cachev3.ResourceRequiresFullStateInSotw(resp.GetTypeUrl())
	var removed []string
	if ts := c.Types[resp.GetTypeUrl()]; ts != nil && !full && len(req.GetResourceNames()) > 0 {
		for name := range ts.Resources {
			if !slices.Contains(req.GetResourceNames(), name) {
				removed = append(removed, name)
			}
		}
	}
	t.sentLocked(c, resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce(), sent, removed, full)
}

// OnStreamDeltaRequest records a delta request, once the server is ready
// (awaitReady); one carrying error_detail is a NACK of the response its
// nonce names.
func (t *clientTable) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	if err := checkRequest(req.GetTypeUrl(), len(req.GetResourceNamesSubscribe())); err != nil {
		return err
	}
	if err := t.awaitReady(streamKey{"delta", id}); err != nil {
		return err
	}
	t.mu.Lock()
	if err := t.checkNodeLocked(streamKey{"delta", id}, req.GetNode()); err != nil {
		t.mu.Unlock()
		return err
	}
	if ts := t.streams[streamKey{"delta", id}].typeState(req.GetTypeUrl()); ts != nil && len(ts.Subscribed)+len(req.GetResourceNamesSubscribe()) > maxResourceNames {
		t.mu.Unlock()
		return status.Errorf(codes.ResourceExhausted, "subscriptions to %d %s resources would be over the limit of %d a stream may hold", len(ts.Subscribed)+len(req.GetResourceNamesSubscribe()), typeName(req.GetTypeUrl()), maxResourceNames)
	}
	c, ts := t.requestLocked(streamKey{"delta", id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(),
		req.GetErrorDetail().GetMessage(), nil, false)
	if ts != nil {
		subs := map[string]bool{}
		for _, n := range ts.Subscribed {
			subs[n] = true
		}
		for _, n := range req.GetResourceNamesSubscribe() {
			subs[n] = true
		}
		for _, n := range req.GetResourceNamesUnsubscribe() {
			delete(subs, n)
		}
		ts.Subscribed = slices.Sorted(maps.Keys(subs))
	}
	var version string
	if ts != nil {
		version = ts.Version
	}
	t.mu.Unlock()
	if c != nil && req.GetErrorDetail() != nil {
		t.nack(c, req.GetTypeUrl(), version, req.GetResponseNonce(), req.GetErrorDetail().GetMessage())
	}
	return nil
}

// OnStreamDeltaResponse records a delta response about to be sent.
func (t *clientTable) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	sent := make(map[string]*sentResource, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		sent[r.GetName()] = &sentResource{Version: r.GetVersion(), Any: r.GetResource()}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.streams[streamKey{"delta", id}]; c != nil {
		t.sentLocked(c, resp.GetTypeUrl(), resp.GetSystemVersionInfo(), resp.GetNonce(), sent, resp.GetRemovedResources(), false)
	}
}

// OnFetchRequest is part of serverv3.Callbacks; REST fetches are not served.
func (t *clientTable) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return nil
}

// OnFetchResponse is part of serverv3.Callbacks.
func (t *clientTable) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
}

// resourceName reads field 1 of a serialized resource, which is the name
// of every type served here (Listener.name, RouteConfiguration.name,
// Cluster.name, ClusterLoadAssignment.cluster_name), without decoding it.
func resourceName(a *anypb.Any) string {
	b := a.GetValue()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ""
			}
			return string(v)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return ""
		}
		b = b[n:]
	}
	return ""
}

// snapshot copies the table for reading outside the lock.
func (t *clientTable) snapshot() []clientState {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]clientState, 0, len(t.streams))
	for _, c := range t.streams {
		cp := *c
		cp.Types = make(map[string]*typeState, len(c.Types))
		for typ, ts := range c.Types {
			tcp := *ts
			tcp.Resources = maps.Clone(ts.Resources)
			for name, r := range tcp.Resources {
				rcp := *r
				tcp.Resources[name] = &rcp
			}
			cp.Types[typ] = &tcp
		}
		out = append(out, cp)
	}
	slices.SortFunc(out, func(a, b clientState) int {
		return cmp.Or(cmp.Compare(a.Mode, b.Mode), cmp.Compare(a.Stream, b.Stream))
	})
	return out
}

// serveDebug writes every connected client and what it was last sent, as
// JSON. With ?resources=1 each resource's content is included.
func (t *clientTable) serveDebug(w http.ResponseWriter, r *http.Request) {
	withContent := r.URL.Query().Get("resources") == "1"
	type resourceJSON struct {
		Version string          `json:"version,omitempty"`
		SentAt  time.Time       `json:"sentAt"`
		Content json.RawMessage `json:"content,omitempty"`
	}
	type typeJSON struct {
		*typeState
		Resources map[string]resourceJSON `json:"resources"`
	}
	type clientJSON struct {
		clientState
		Types map[string]typeJSON `json:"types"`
	}
	out := []clientJSON{}
	for _, c := range t.snapshot() {
		cj := clientJSON{clientState: c, Types: map[string]typeJSON{}}
		for typ, ts := range c.Types {
			tj := typeJSON{typeState: ts, Resources: map[string]resourceJSON{}}
			for name, res := range ts.Resources {
				rj := resourceJSON{Version: res.Version, SentAt: res.SentAt}
				if withContent && res.Any != nil {
					if b, err := protojson.Marshal(res.Any); err == nil {
						rj.Content = b
					}
				}
				tj.Resources[name] = rj
			}
			cj.Types[typeName(typ)] = tj
		}
		out = append(out, cj)
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

// csds serves envoy.service.status.v3.ClientStatusDiscoveryService: per
// connected client, every resource it was last sent, with its ACK status.
type csds struct {
	statusv3.UnimplementedClientStatusDiscoveryServiceServer
	clients *clientTable
}

func (s *csds) FetchClientStatus(_ context.Context, req *statusv3.ClientStatusRequest) (*statusv3.ClientStatusResponse, error) {
	return s.status(req), nil
}

func (s *csds) StreamClientStatus(stream statusv3.ClientStatusDiscoveryService_StreamClientStatusServer) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return nil
		}
		if err := stream.Send(s.status(req)); err != nil {
			return err
		}
	}
}

func (s *csds) status(req *statusv3.ClientStatusRequest) *statusv3.ClientStatusResponse {
	out := &statusv3.ClientStatusResponse{}
	for _, c := range s.clients.snapshot() {
		if !matchesNode(req.GetNodeMatchers(), c.NodeID) {
			continue
		}
		cc := &statusv3.ClientConfig{Node: c.node}
		if cc.Node == nil {
			cc.Node = &corev3.Node{}
		}
		for _, typ := range typeURLs {
			ts := c.Types[typ]
			if ts == nil {
				continue
			}
			for _, name := range slices.Sorted(maps.Keys(ts.Resources)) {
				res := ts.Resources[name]
				g := &statusv3.ClientConfig_GenericXdsConfig{
					TypeUrl:      typ,
					Name:         name,
					VersionInfo:  ts.Version,
					LastUpdated:  timestamppb.New(res.SentAt),
					ConfigStatus: statusv3.ConfigStatus_SYNCED,
					ClientStatus: adminv3.ClientResourceStatus_ACKED,
				}
				// Resources of the last response carry its answer; older
				// ones were answered (and kept) before.
				if inLast := !res.SentAt.Before(ts.SentAt); inLast {
					switch ts.Status {
					case "REQUESTED":
						g.ConfigStatus, g.ClientStatus = statusv3.ConfigStatus_STALE, adminv3.ClientResourceStatus_REQUESTED
					case "NACKED":
						g.ConfigStatus, g.ClientStatus = statusv3.ConfigStatus_ERROR, adminv3.ClientResourceStatus_NACKED
						g.ErrorState = &adminv3.UpdateFailureState{Details: ts.Error, VersionInfo: ts.Version}
					}
				}
				if !req.GetExcludeResourceContents() {
					g.XdsConfig = res.Any
				}
				cc.GenericXdsConfigs = append(cc.GenericXdsConfigs, g)
			}
		}
		out.Config = append(out.Config, cc)
	}
	return out
}

// matchesNode applies CSDS node matchers on the node id (exact, prefix,
// suffix or contains); no matchers match every node.
func matchesNode(matchers []*matcherv3.NodeMatcher, id string) bool {
	if len(matchers) == 0 {
		return true
	}
	for _, m := range matchers {
		sm := m.GetNodeId()
		if sm == nil {
			return true
		}
		switch p := sm.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			if id == p.Exact {
				return true
			}
		case *matcherv3.StringMatcher_Prefix:
			if strings.HasPrefix(id, p.Prefix) {
				return true
			}
		case *matcherv3.StringMatcher_Suffix:
			if strings.HasSuffix(id, p.Suffix) {
				return true
			}
		case *matcherv3.StringMatcher_Contains:
			if strings.Contains(id, p.Contains) {
				return true
			}
		}
	}
	return false
}
