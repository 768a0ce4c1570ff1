package xds

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	commonlbv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/common/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds/internal/retryon"
)

// The xDS form of the policy model: each policy field is encoded here and
// only here, and decoded back in package xds/client.

var adsSource = &corev3.ConfigSource{
	ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	ResourceApiVersion:    corev3.ApiVersion_V3,
}

// routerFilter is the terminal HTTP filter gRPC's xDS client requires.
var routerFilter = mustAny(&routerv3.Router{})

// apiListener is the listener gRPC's xDS client asks for when it dials
// name; hcm is the port's connection manager.
func apiListener(name string, hcm *anypb.Any) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:        name,
		ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
	}
}

// FaultFilter names the HTTP fault filter, in a listener's filter chain
// and in a route's typed_per_filter_config.
const FaultFilter = "envoy.filters.http.fault"

// faultFilter is the fault filter's listener config: no fault of its own,
// only the routes' (an HTTPFault without delay or abort injects nothing).
var faultFilter = mustAny(&faultv3.HTTPFault{})

// connectionManager is the HttpConnectionManager of every listener: RDS
// over ADS for route, then the router; with fault, the fault filter
// before it. gRPC's xDS clients apply a route's typed_per_filter_config
// only for the filters the listener lists, so a port whose route injects
// faults lists it; the others do not, and cost their clients nothing.
func connectionManager(statPrefix, route string, fault bool) (*anypb.Any, error) {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix: statPrefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource,
			RouteConfigName: route,
		}},
	}
	if fault {
		m.HttpFilters = append(m.HttpFilters, &hcmv3.HttpFilter{
			Name:       FaultFilter,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: faultFilter},
		})
	}
	m.HttpFilters = append(m.HttpFilters, &hcmv3.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: routerFilter},
	})
	return anypb.New(m)
}

// injectsFaults reports whether a rule of r has a fault.
func injectsFaults(r policy.Route) bool {
	for _, rule := range r.Rules {
		if rule.Call.Fault != nil {
			return true
		}
	}
	return false
}

// renderRoute is a Route as a RouteConfiguration with one virtual host,
// a Route per rule in the rule order (clients take the first that
// matches): the rule's name, its :path match (prefix, path or safe_regex)
// and header matches (string_match, exact or safe_regex), its backends and
// its header modifiers (request_headers_to_add/remove on the route,
// response_headers_to_add/remove likewise; Set overwrites, Add appends),
// its fault as the fault filter's typed_per_filter_config. hashHeaders are
// the ring_hash Clusters' hash headers by Cluster name: a rule to one of
// them hashes that header (hash_policy), which is where gRPC's xDS clients
// read a call's hash (they ignore the Cluster's own hash_policy).
func renderRoute(r policy.Route, hashHeaders map[string]string) *routev3.RouteConfiguration {
	vh := &routev3.VirtualHost{Name: r.Name, Domains: r.Domains}
	for _, rule := range r.Rules {
		action := callAction(routeAction(rule.Backends), rule.Call)
		for _, b := range rule.Backends {
			if h := hashHeaders[b.Cluster]; h != "" {
				action.HashPolicy = []*routev3.RouteAction_HashPolicy{headerHash(h)}
				break
			}
		}
		vh.Routes = append(vh.Routes, &routev3.Route{
			Name:                    rule.Name,
			Match:                   routeMatch(rule.Match),
			Action:                  &routev3.Route_Route{Route: action},
			Metadata:                callMetadata(rule.Call),
			RequestHeadersToAdd:     headersToAdd(rule.RequestHeaders),
			RequestHeadersToRemove:  rule.RequestHeaders.Remove,
			ResponseHeadersToAdd:    headersToAdd(rule.ResponseHeaders),
			ResponseHeadersToRemove: rule.ResponseHeaders.Remove,
			TypedPerFilterConfig:    faultConfig(rule.Call.Fault),
		})
	}
	return &routev3.RouteConfiguration{Name: r.Name, VirtualHosts: []*routev3.VirtualHost{vh}}
}

func headerHash(name string) *routev3.RouteAction_HashPolicy {
	return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
		Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: name},
	}}
}

// faultConfig is a rule's fault as the fault filter's per-route config
// (HTTPFault: a fixed delay and a gRPC status abort, each for a percentage
// of the calls), which overrides the listener's empty one; nil for none.
func faultConfig(f *policy.Fault) map[string]*anypb.Any {
	if f == nil {
		return nil
	}
	hf := &faultv3.HTTPFault{}
	if f.Delay > 0 {
		hf.Delay = &faultcommonv3.FaultDelay{
			FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(f.Delay)},
			Percentage:         percent(f.DelayPercent),
		}
	}
	if f.AbortCode != 0 {
		hf.Abort = &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_GrpcStatus{GrpcStatus: uint32(f.AbortCode)},
			Percentage: percent(f.AbortPercent),
		}
	}
	return map[string]*anypb.Any{FaultFilter: mustAny(hf)}
}

func percent(p int) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(p), Denominator: typev3.FractionalPercent_HUNDRED}
}

func routeMatch(m policy.Match) *routev3.RouteMatch {
	out := &routev3.RouteMatch{}
	switch m.Path.Type {
	case policy.Exact:
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: m.Path.Value}
	case policy.RegularExpression:
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Path.Value}}
	default:
		out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: m.Path.Value}
	}
	for _, h := range m.Headers {
		sm := &matcherv3.StringMatcher{}
		switch h.Value.Type {
		case policy.Exact:
			sm.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: h.Value.Value}
		case policy.RegularExpression:
			sm.MatchPattern = &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: h.Value.Value}}
		default:
			sm.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: h.Value.Value}
		}
		out.Headers = append(out.Headers, &routev3.HeaderMatcher{
			Name:                 h.Name,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm},
		})
	}
	return out
}

// headersToAdd is a modifier's Set and Add, in that order.
func headersToAdd(m policy.HeaderModifier) []*corev3.HeaderValueOption {
	var out []*corev3.HeaderValueOption
	for _, h := range m.Set {
		out = append(out, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.Name, Value: h.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	for _, h := range m.Add {
		out = append(out, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.Name, Value: h.Value},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD,
		})
	}
	return out
}

// routeAction names one Cluster of weight 1 directly, as every client
// reads it, and anything else as weighted clusters. A backend of weight 0
// is left out (the model's translation has none; a client would skip it).
func routeAction(backends []policy.Backend) *routev3.RouteAction {
	if len(backends) == 1 && backends[0].Weight == 1 {
		return &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: backends[0].Cluster}}
	}
	wc := &routev3.WeightedCluster{}
	for _, b := range backends {
		if b.Weight == 0 {
			continue
		}
		wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{
			Name: b.Cluster, Weight: wrapperspb.UInt32(b.Weight),
		})
	}
	return &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}}
}

// callAction adds a rule's call policy to its action: the timeout as
// max_stream_duration and grpc_timeout_header_max (gRPC's xDS clients
// read the latter first, gRFC A44; both bound the whole call), the
// per-try timeout and retries as retry_policy (retry_on the codes,
// num_retries the attempts, retry_back_off the backoff). A retry_policy
// without retry_on carries a per-try timeout alone: gRPC's xDS clients
// NACK num_retries 0, so an absent retry is left out rather than 0.
func callAction(a *routev3.RouteAction, c policy.CallPolicy) *routev3.RouteAction {
	if c.Timeout > 0 {
		a.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{
			MaxStreamDuration:    durationpb.New(c.Timeout),
			GrpcTimeoutHeaderMax: durationpb.New(c.Timeout),
		}
	}
	r := c.Retry
	if r != nil && (r.Attempts < 1 || len(r.Codes) == 0) {
		r = nil
	}
	if r == nil && c.TryTimeout <= 0 {
		return a
	}
	rp := &routev3.RetryPolicy{}
	if c.TryTimeout > 0 {
		rp.PerTryTimeout = durationpb.New(c.TryTimeout)
	}
	if r != nil {
		rp.RetryOn = retryon.Format(r.Codes)
		rp.NumRetries = wrapperspb.UInt32(uint32(r.Attempts))
		if r.Backoff > 0 {
			rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(r.Backoff)}
			if r.MaxBackoff > 0 {
				rp.RetryBackOff.MaxInterval = durationpb.New(r.MaxBackoff)
			}
		}
	}
	a.RetryPolicy = rp
	return a
}

// metadataNamespace is the filter_metadata key of what Ballast's own
// clients read of a route and xDS has no field for.
const metadataNamespace = "ballast.dev"

// callMetadata is what of a rule's call policy xDS routes cannot say, as
// route metadata, which gRPC's xDS clients ignore:
//
//   - the retry budget, {"retry_budget": {"percent", "interval",
//     "min_retries"}} (Envoy's retry_budget bounds concurrent retries, per
//     cluster, not a share of calls);
//   - the rate limit, {"rate_limit": {"requests_per_second", "burst",
//     "bucket"}}. Envoy's local_ratelimit per-route config is not used:
//     its bucket refills in whole intervals of 50 ms or more (so it cannot
//     say 100 a second with a burst of 1) and is one per route, where a
//     Service's limit is one bucket shared by all its rules (bucket).
func callMetadata(c policy.CallPolicy) *corev3.Metadata {
	fields := map[string]any{}
	if r := c.Retry; r != nil && r.Budget != nil && r.Attempts >= 1 && len(r.Codes) > 0 {
		b := r.Budget
		fields["retry_budget"] = map[string]any{"percent": b.Percent, "interval": b.Interval.String(), "min_retries": b.MinRetries}
	}
	if r := c.RateLimit; r != nil {
		fields["rate_limit"] = map[string]any{"requests_per_second": r.RequestsPerSecond, "burst": r.Burst, "bucket": r.Bucket}
	}
	if len(fields) == 0 {
		return nil
	}
	st, err := structpb.NewStruct(fields)
	if err != nil {
		panic(fmt.Sprintf("xds: route metadata: %v", err)) // numbers and strings: a bug, not an input
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{metadataNamespace: st}}
}

// renderCluster is a Cluster as an EDS Cluster over ADS, with its
// circuit breaker and outlier detection.
func renderCluster(c policy.Cluster) *clusterv3.Cluster {
	lb := lbPolicies[c.LB]
	if c.LB == policy.RingHash && c.HashHeader != "" {
		lb = ringHashPolicy(c.HashHeader)
	}
	out := edsCluster(c.Name, lb)
	out.CircuitBreakers = circuitBreakers(c.CircuitBreaker)
	out.OutlierDetection = outlierDetection(c.Outlier)
	return out
}

// circuitBreakers are a Cluster's bounds as the default priority's
// thresholds. max_requests is always sent: gRPC's xDS clients bound a
// Cluster without it to policy.DefaultMaxRequests calls in flight, which
// neither the sidecar nor the library does, so a Cluster without a bound
// says policy.NoLimit. The other two are sent only when set (gRPC's
// clients ignore them; Envoy reads an absent one as 1024).
func circuitBreakers(b policy.CircuitBreaker) *clusterv3.CircuitBreakers {
	t := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT, MaxRequests: wrapperspb.UInt32(policy.NoLimit)}
	if b.MaxRequests > 0 {
		t.MaxRequests = wrapperspb.UInt32(b.MaxRequests)
	}
	if b.MaxPendingRequests > 0 {
		t.MaxPendingRequests = wrapperspb.UInt32(b.MaxPendingRequests)
	}
	if b.MaxConnections > 0 {
		t.MaxConnections = wrapperspb.UInt32(b.MaxConnections)
	}
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
}

// outlierDetection is a Cluster's outlier detection with every field
// explicit, as gRPC's xDS clients read it (gRFC A50): an algorithm is off
// when its enforcing_* is 0 (an absent enforcing_success_rate means 100,
// and consecutive_5xx's 100 in Envoy), so the ones the model leaves out
// say 0. Consecutive errors are consecutive_5xx, which gRPC's clients
// ignore and Ballast's sidecar reads.
func outlierDetection(o *policy.OutlierDetection) *clusterv3.OutlierDetection {
	if o == nil {
		return nil
	}
	u := wrapperspb.UInt32
	out := &clusterv3.OutlierDetection{
		Interval:                   durationpb.New(o.Interval),
		BaseEjectionTime:           durationpb.New(o.BaseEjectionTime),
		MaxEjectionTime:            durationpb.New(o.MaxEjectionTime),
		MaxEjectionPercent:         u(o.MaxEjectionPercent),
		EnforcingConsecutive_5Xx:   u(0),
		EnforcingSuccessRate:       u(0),
		EnforcingFailurePercentage: u(0),
	}
	if o.ConsecutiveErrors > 0 {
		out.Consecutive_5Xx, out.EnforcingConsecutive_5Xx = u(o.ConsecutiveErrors), u(100)
	}
	if s := o.SuccessRate; s != nil {
		out.EnforcingSuccessRate = u(s.EnforcementPercentage)
		out.SuccessRateStdevFactor = u(s.StdevFactor)
		out.SuccessRateMinimumHosts = u(s.MinimumHosts)
		out.SuccessRateRequestVolume = u(s.RequestVolume)
	}
	if f := o.FailurePercentage; f != nil {
		out.EnforcingFailurePercentage = u(f.EnforcementPercentage)
		out.FailurePercentageThreshold = u(f.Threshold)
		out.FailurePercentageMinimumHosts = u(f.MinimumHosts)
		out.FailurePercentageRequestVolume = u(f.RequestVolume)
	}
	return out
}

func edsCluster(name string, lb *clusterv3.LoadBalancingPolicy) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource, ServiceName: name},
		LoadBalancingPolicy:  lb,
	}
}

// lbPolicies are the Clusters' load_balancing_policy lists (gRFC A52), one
// per policy, shared by every Cluster (resources are immutable once built).
// The endpoint-picking policy is listed directly, not under wrr_locality:
// the policy sees every endpoint of the priority, whatever its zone, which
// is what per-call balancing across a Service's pods means.
var lbPolicies = map[policy.LB]*clusterv3.LoadBalancingPolicy{
	policy.RoundRobin:   lbPolicy(policy.RoundRobin),
	policy.LeastRequest: lbPolicy(policy.LeastRequest),
	policy.PeakEWMA:     lbPolicy(policy.PeakEWMA),
	policy.RingHash:     lbPolicy(policy.RingHash),
}

// ringHashPolicy is RingHash's list with its hash header in the ring_hash
// extension's consistent_hashing_lb_config.hash_policy, where Ballast's
// clients read it (gRPC's xDS clients read a route's hash_policy instead,
// which renderRoute writes).
func ringHashPolicy(header string) *clusterv3.LoadBalancingPolicy {
	out := lbPolicy(policy.RingHash)
	out.Policies[0] = &clusterv3.LoadBalancingPolicy_Policy{TypedExtensionConfig: &corev3.TypedExtensionConfig{
		Name: "envoy.load_balancing_policies.ring_hash",
		TypedConfig: mustAny(&ringhashv3.RingHash{
			HashFunction:              ringhashv3.RingHash_XX_HASH,
			ConsistentHashingLbConfig: &commonlbv3.ConsistentHashingLbConfig{HashPolicy: []*routev3.RouteAction_HashPolicy{headerHash(header)}},
		}),
	}}
	return out
}

func lbPolicy(p policy.LB) *clusterv3.LoadBalancingPolicy {
	out := &clusterv3.LoadBalancingPolicy{}
	for _, b := range p.Balancers() {
		out.Policies = append(out.Policies, &clusterv3.LoadBalancingPolicy_Policy{
			TypedExtensionConfig: lbExtension(b),
		})
	}
	return out
}

// lbExtension is one balancer of a list: grpc-go's round_robin and
// least_request as Envoy's extensions, which every xDS client knows;
// Ballast's own as a TypedStruct whose type_url ends in the balancer's
// registered name, which grpc-go runs if it has that balancer and skips
// otherwise (gRFC A52).
func lbExtension(b policy.Balancer) *corev3.TypedExtensionConfig {
	var name string
	var config proto.Message
	switch b.Name {
	case "round_robin":
		name, config = "envoy.load_balancing_policies.round_robin", &roundrobinv3.RoundRobin{}
	case "least_request_experimental":
		name, config = "envoy.load_balancing_policies.least_request", &leastrequestv3.LeastRequest{
			ChoiceCount: wrapperspb.UInt32(2),
		}
	case policy.RingHashBalancer:
		name, config = "envoy.load_balancing_policies.ring_hash", &ringhashv3.RingHash{HashFunction: ringhashv3.RingHash_XX_HASH}
	default:
		value := &structpb.Struct{}
		if err := protojson.Unmarshal(b.Config, value); err != nil {
			panic(fmt.Sprintf("xds: balancer %s config: %v", b.Name, err))
		}
		name, config = "ballast.load_balancing_policies."+strings.TrimPrefix(b.Name, "ballast_"), &xdstypev3.TypedStruct{
			TypeUrl: "type.googleapis.com/" + b.Name,
			Value:   value,
		}
	}
	return &corev3.TypedExtensionConfig{Name: name, TypedConfig: mustAny(config)}
}

// renderEndpoints is a Cluster's endpoints as a ClusterLoadAssignment,
// grouped by priority then zone, one locality each, in that order. A
// locality's weight is its endpoint count, never zero (gRPC ignores
// zero-weight localities; the weight only matters to a client that weighs
// localities).
func renderEndpoints(e policy.Endpoints) *endpointv3.ClusterLoadAssignment {
	type group struct {
		priority int
		zone     string
	}
	byGroup := map[group][]*endpointv3.LbEndpoint{}
	for _, ep := range e.Endpoints {
		health := corev3.HealthStatus_HEALTHY
		if ep.Health == policy.Draining {
			health = corev3.HealthStatus_DRAINING
		}
		g := group{ep.Priority, ep.Zone}
		byGroup[g] = append(byGroup[g], &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       ep.Address.Addr().String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ep.Address.Port())},
				}}},
				Hostname: ep.Pod,
			}},
			HealthStatus: health,
		})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: e.Cluster}
	groups := slices.SortedFunc(maps.Keys(byGroup), func(a, b group) int {
		return cmp.Or(cmp.Compare(a.priority, b.priority), cmp.Compare(a.zone, b.zone))
	})
	for _, g := range groups {
		eps := byGroup[g]
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality:            &corev3.Locality{Zone: g.zone},
			LbEndpoints:         eps,
			LoadBalancingWeight: wrapperspb.UInt32(uint32(len(eps))),
			Priority:            uint32(g.priority),
		})
	}
	return cla
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: marshal %T: %v", m, err))
	}
	return a
}
