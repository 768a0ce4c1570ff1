package client

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ballast-dev/ballast/policy"
	corev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/core/v3"
	routev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/route/v3"
	faultv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/type/matcher/v3"
	typev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/type/v3"
	"github.com/ballast-dev/ballast/xds/internal/retryon"
)

// routeConfig is a decoded RouteConfiguration: one policy.Route per
// virtual host, each named by the configuration.
type routeConfig struct {
	name  string
	hosts []policy.Route
}

// decodeRouteConfig reads a RouteConfiguration. A route whose match or
// action the model cannot say is an error, so the response is NACKed
// rather than a call sent somewhere the control plane did not mean.
func decodeRouteConfig(rc *routev3.RouteConfiguration) (*routeConfig, error) {
	out := &routeConfig{name: rc.GetName()}
	for _, vh := range rc.GetVirtualHosts() {
		r := policy.Route{Name: rc.GetName(), Domains: vh.GetDomains()}
		for i, route := range vh.GetRoutes() {
			rule, err := decodeRule(route)
			if err != nil {
				return nil, fmt.Errorf("route configuration %s: virtual host %s: route %d: %w", rc.GetName(), vh.GetName(), i, err)
			}
			r.Rules = append(r.Rules, rule)
		}
		out.hosts = append(out.hosts, r)
	}
	return out, nil
}

func decodeRule(r *routev3.Route) (policy.Rule, error) {
	rule := policy.Rule{Name: r.GetName()}
	m := r.GetMatch()
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		rule.Match.Path = policy.StringMatch{Type: policy.Prefix, Value: p.Prefix}
	case *routev3.RouteMatch_Path:
		rule.Match.Path = policy.StringMatch{Type: policy.Exact, Value: p.Path}
	case *routev3.RouteMatch_SafeRegex:
		rule.Match.Path = policy.StringMatch{Type: policy.RegularExpression, Value: p.SafeRegex.GetRegex()}
	default:
		return policy.Rule{}, fmt.Errorf("match %T is not supported", p)
	}
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		return policy.Rule{}, fmt.Errorf("case-insensitive path matches are not supported")
	}
	if len(m.GetQueryParameters()) > 0 || m.GetRuntimeFraction() != nil || len(m.GetDynamicMetadata()) > 0 {
		return policy.Rule{}, fmt.Errorf("matches on query parameters, fractions or metadata are not supported")
	}
	for _, h := range m.GetHeaders() {
		hm, err := decodeHeaderMatch(h)
		if err != nil {
			return policy.Rule{}, fmt.Errorf("header %q: %w", h.GetName(), err)
		}
		rule.Match.Headers = append(rule.Match.Headers, hm)
	}
	action := r.GetRoute()
	if action == nil {
		return policy.Rule{}, fmt.Errorf("action %T is not supported: want a route", r.GetAction())
	}
	switch c := action.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		rule.Backends = []policy.Backend{{Cluster: c.Cluster, Weight: 1}}
	case *routev3.RouteAction_WeightedClusters:
		var total uint64
		for _, w := range c.WeightedClusters.GetClusters() {
			rule.Backends = append(rule.Backends, policy.Backend{Cluster: w.GetName(), Weight: w.GetWeight().GetValue()})
			total += uint64(w.GetWeight().GetValue())
		}
		if total == 0 {
			// As grpc-go: a share of nothing is a configuration error.
			return policy.Rule{}, fmt.Errorf("weighted clusters: total weight is 0")
		}
	default:
		return policy.Rule{}, fmt.Errorf("cluster specifier %T is not supported", c)
	}
	var err error
	if rule.Call, err = decodeCall(action, r.GetMetadata()); err != nil {
		return policy.Rule{}, err
	}
	if rule.Call.RateLimit, err = decodeRateLimit(r.GetMetadata()); err != nil {
		return policy.Rule{}, err
	}
	if rule.Call.Fault, err = decodeFault(r.GetTypedPerFilterConfig()); err != nil {
		return policy.Rule{}, err
	}
	if rule.RequestHeaders, err = decodeModifier(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove()); err != nil {
		return policy.Rule{}, fmt.Errorf("request headers: %w", err)
	}
	if rule.ResponseHeaders, err = decodeModifier(r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return policy.Rule{}, fmt.Errorf("response headers: %w", err)
	}
	return rule, nil
}

// decodeCall reads a route's call policy: the timeout from
// max_stream_duration (else grpc_timeout_header_max), the per-try timeout
// and retries from retry_policy (num_retries absent means 1, as in xDS),
// and the retry budget from Ballast's route metadata.
func decodeCall(a *routev3.RouteAction, md *corev3.Metadata) (policy.CallPolicy, error) {
	var out policy.CallPolicy
	if msd := a.GetMaxStreamDuration(); msd != nil {
		d := msd.GetMaxStreamDuration()
		if d == nil {
			d = msd.GetGrpcTimeoutHeaderMax()
		}
		if d != nil {
			if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
				return out, fmt.Errorf("max_stream_duration %v is not a duration of 0 or more", d)
			}
			out.Timeout = d.AsDuration()
		}
	}
	rp := a.GetRetryPolicy()
	if rp == nil {
		return out, nil
	}
	if d := rp.GetPerTryTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return out, fmt.Errorf("retry_policy.per_try_timeout %v is not a duration of 0 or more", d)
		}
		out.TryTimeout = d.AsDuration()
	}
	cs := retryon.Parse(rp.GetRetryOn())
	if len(cs) == 0 {
		return out, nil
	}
	slices.Sort(cs)
	r := &policy.Retry{Codes: cs, Attempts: 1}
	if n := rp.GetNumRetries(); n != nil {
		if n.GetValue() < 1 {
			return out, fmt.Errorf("retry_policy.num_retries %d: must be 1 or more", n.GetValue())
		}
		r.Attempts = int(min(n.GetValue(), 100))
	}
	if b := rp.GetRetryBackOff(); b != nil {
		r.Backoff = b.GetBaseInterval().AsDuration()
		if r.Backoff <= 0 {
			return out, fmt.Errorf("retry_policy.retry_back_off.base_interval %v: must be above 0", b.GetBaseInterval())
		}
		if m := b.GetMaxInterval(); m != nil {
			if r.MaxBackoff = m.AsDuration(); r.MaxBackoff < r.Backoff {
				return out, fmt.Errorf("retry_policy.retry_back_off.max_interval %v is under base_interval", m)
			}
		}
	}
	if st := md.GetFilterMetadata()[metadataNamespace].GetFields()["retry_budget"].GetStructValue(); st != nil {
		f := st.GetFields()
		b := &policy.RetryBudget{Percent: int(f["percent"].GetNumberValue()), MinRetries: int(f["min_retries"].GetNumberValue())}
		var err error
		if b.Interval, err = time.ParseDuration(f["interval"].GetStringValue()); err != nil || b.Interval <= 0 ||
			b.Percent < 0 || b.Percent > 100 || b.MinRetries < 0 {
			return out, fmt.Errorf("metadata %s retry_budget %v: want percent 0..100, an interval above 0, min_retries 0 or more", metadataNamespace, st)
		}
		r.Budget = b
	}
	out.Retry = r
	return out, nil
}

// decodeRateLimit reads the rate limit in Ballast's route metadata; nil
// for none.
func decodeRateLimit(md *corev3.Metadata) (*policy.RateLimit, error) {
	st := md.GetFilterMetadata()[metadataNamespace].GetFields()["rate_limit"].GetStructValue()
	if st == nil {
		return nil, nil
	}
	f := st.GetFields()
	rps, burst := f["requests_per_second"].GetNumberValue(), f["burst"].GetNumberValue()
	if rps < 1 || rps > 1e6 || burst < 1 || burst > 1e6 || rps != float64(int(rps)) || burst != float64(int(burst)) {
		return nil, fmt.Errorf("metadata %s rate_limit %v: want whole requests_per_second and burst in 1..1000000", metadataNamespace, st)
	}
	return &policy.RateLimit{RequestsPerSecond: int(rps), Burst: int(burst), Bucket: f["bucket"].GetStringValue()}, nil
}

// decodeFault reads the fault filter's per-route config (plain or in a
// FilterConfig): a fixed delay and a gRPC status abort, each for a
// percentage. What the model cannot say (header-controlled faults, HTTP
// statuses, rate limits of the response) is an error, as gRPC's xDS
// clients would apply it and Ballast's could not.
func decodeFault(configs map[string]*anypb.Any) (*policy.Fault, error) {
	a, ok := configs[faultFilter]
	if !ok {
		return nil, nil
	}
	if a.GetTypeUrl() == filterConfigType {
		var fc routev3.FilterConfig
		if err := unmarshalAny(a, filterConfigType, &fc); err != nil {
			return nil, fmt.Errorf("%s: %w", faultFilter, err)
		}
		a = fc.GetConfig()
	}
	var hf faultv3.HTTPFault
	if err := unmarshalAny(a, httpFaultType, &hf); err != nil {
		return nil, fmt.Errorf("%s: %w", faultFilter, err)
	}
	if hf.GetResponseRateLimit() != nil || len(hf.GetHeaders()) > 0 || len(hf.GetDownstreamNodes()) > 0 || hf.GetUpstreamCluster() != "" {
		return nil, fmt.Errorf("%s: only delay and abort are supported", faultFilter)
	}
	out := &policy.Fault{}
	if d := hf.GetDelay(); d != nil {
		fixed := d.GetFixedDelay()
		if fixed == nil || fixed.CheckValid() != nil || fixed.AsDuration() < 0 {
			return nil, fmt.Errorf("%s: delay: want a fixed_delay of 0 or more", faultFilter)
		}
		p, err := decodePercent(d.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("%s: delay: %w", faultFilter, err)
		}
		out.Delay, out.DelayPercent = fixed.AsDuration(), p
	}
	if ab := hf.GetAbort(); ab != nil {
		s, ok := ab.GetErrorType().(*faultv3.FaultAbort_GrpcStatus)
		if !ok || s.GrpcStatus == 0 || s.GrpcStatus > 16 {
			return nil, fmt.Errorf("%s: abort: want a grpc_status of 1..16", faultFilter)
		}
		p, err := decodePercent(ab.GetPercentage())
		if err != nil {
			return nil, fmt.Errorf("%s: abort: %w", faultFilter, err)
		}
		out.AbortCode, out.AbortPercent = codes.Code(s.GrpcStatus), p
	}
	if out.Delay == 0 && out.AbortCode == 0 {
		return nil, nil
	}
	return out, nil
}

// decodePercent reads a percentage out of a hundred, as the model says it.
func decodePercent(p *typev3.FractionalPercent) (int, error) {
	if p.GetDenominator() != typev3.FractionalPercent_HUNDRED || p.GetNumerator() > 100 {
		return 0, fmt.Errorf("percentage %v: want a numerator of 0..100 over HUNDRED", p)
	}
	return int(p.GetNumerator()), nil
}

// The fault filter's name, and the wrapper a per-route config may come in.
const (
	faultFilter      = "envoy.filters.http.fault"
	filterConfigType = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
)

// metadataNamespace is the filter_metadata key of what Ballast's control
// plane says of a route that xDS has no field for.
const metadataNamespace = "ballast.dev"

// decodeHeaderMatch reads a header matcher: exact or safe_regex, as a
// string_match or in the deprecated fields of the same meaning; prefix
// too, which the model can say. Inverted and other matchers are errors.
func decodeHeaderMatch(h *routev3.HeaderMatcher) (policy.HeaderMatch, error) {
	if h.GetInvertMatch() || h.GetTreatMissingHeaderAsEmpty() {
		return policy.HeaderMatch{}, fmt.Errorf("inverted matches are not supported")
	}
	out := policy.HeaderMatch{Name: strings.ToLower(h.GetName())}
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		out.Value = policy.StringMatch{Type: policy.Exact, Value: s.ExactMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		out.Value = policy.StringMatch{Type: policy.RegularExpression, Value: s.SafeRegexMatch.GetRegex()}
	case *routev3.HeaderMatcher_PrefixMatch:
		out.Value = policy.StringMatch{Type: policy.Prefix, Value: s.PrefixMatch}
	case *routev3.HeaderMatcher_StringMatch:
		sm := s.StringMatch
		if sm.GetIgnoreCase() {
			return policy.HeaderMatch{}, fmt.Errorf("case-insensitive matches are not supported")
		}
		switch p := sm.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			out.Value = policy.StringMatch{Type: policy.Exact, Value: p.Exact}
		case *matcherv3.StringMatcher_SafeRegex:
			out.Value = policy.StringMatch{Type: policy.RegularExpression, Value: p.SafeRegex.GetRegex()}
		case *matcherv3.StringMatcher_Prefix:
			out.Value = policy.StringMatch{Type: policy.Prefix, Value: p.Prefix}
		default:
			return policy.HeaderMatch{}, fmt.Errorf("string matcher %T is not supported", p)
		}
	default:
		return policy.HeaderMatch{}, fmt.Errorf("matcher %T is not supported", s)
	}
	return out, nil
}

// decodeModifier reads headers to add (overwrite: Set, append: Add) and
// to remove.
func decodeModifier(add []*corev3.HeaderValueOption, remove []string) (policy.HeaderModifier, error) {
	var out policy.HeaderModifier
	for _, o := range add {
		h := policy.Header{Name: strings.ToLower(o.GetHeader().GetKey()), Value: o.GetHeader().GetValue()}
		if o.GetHeader().GetRawValue() != nil {
			return policy.HeaderModifier{}, fmt.Errorf("header %q: raw values are not supported", h.Name)
		}
		switch o.GetAppendAction() {
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			out.Set = append(out.Set, h)
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			out.Add = append(out.Add, h)
		default:
			return policy.HeaderModifier{}, fmt.Errorf("header %q: append action %v is not supported", h.Name, o.GetAppendAction())
		}
	}
	for _, n := range remove {
		out.Remove = append(out.Remove, strings.ToLower(n))
	}
	return out, nil
}

// hostFor is the virtual host that serves target (host:port, as dialled),
// as gRPC picks it (gRFC A27): an exact domain, then the longest suffix
// wildcard ("*.example.org"), then the longest prefix wildcard
// ("example.*"), then "*". Domains match with or without the port.
func (rc *routeConfig) hostFor(target string) (policy.Route, bool) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	best, bestRank, bestLen := -1, 0, 0
	for i, r := range rc.hosts {
		for _, d := range r.Domains {
			rank, n := domainMatch(strings.ToLower(d), strings.ToLower(target), strings.ToLower(host))
			if rank > bestRank || (rank == bestRank && rank > 0 && n > bestLen) {
				best, bestRank, bestLen = i, rank, n
			}
		}
	}
	if best < 0 {
		return policy.Route{}, false
	}
	return rc.hosts[best], true
}

// domainMatch ranks how d matches: 4 exact, 3 suffix wildcard, 2 prefix
// wildcard, 1 "*", 0 none; n is the length of the match, longer wins.
func domainMatch(d, target, host string) (rank, n int) {
	switch {
	case d == target || d == host:
		return 4, len(d)
	case d == "*":
		return 1, 0
	case strings.HasPrefix(d, "*") && (strings.HasSuffix(target, d[1:]) || strings.HasSuffix(host, d[1:])):
		return 3, len(d)
	case strings.HasSuffix(d, "*") && (strings.HasPrefix(target, d[:len(d)-1]) || strings.HasPrefix(host, d[:len(d)-1])):
		return 2, len(d)
	}
	return 0, 0
}
