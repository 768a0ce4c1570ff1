package client

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ballast-dev/ballast/policy"
	clusterv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/cluster/v3"
	corev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/core/v3"
	ringhashv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/extensions/load_balancing_policies/ring_hash/v3"
	xdstypev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/xds/type/v3"
)

// cluster is a decoded Cluster: the policy, and the name of its
// ClusterLoadAssignment.
type cluster struct {
	policy policy.Cluster
	eds    string
}

// Type URLs of the load-balancing policies a Cluster may list.
const (
	roundRobinType      = "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"
	leastRequestType    = "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
	ringHashType        = "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"
	typedStructType     = "type.googleapis.com/xds.type.v3.TypedStruct"
	udpaTypedStructType = "type.googleapis.com/udpa.type.v1.TypedStruct"
)

// decodeCluster reads a Cluster. Its policy is read as gRPC reads it
// (gRFC A52): the first entry of load_balancing_policy that names a
// balancer some policy starts with, a TypedStruct naming a balancer by
// its type_url's last segment; without a list, the lb_policy enum.
func decodeCluster(c *clusterv3.Cluster) (*cluster, error) {
	if c.GetType() != clusterv3.Cluster_EDS {
		return nil, fmt.Errorf("cluster %s: type %s is not supported: want EDS", c.GetName(), c.GetType())
	}
	lb, hashHeader, err := clusterLB(c)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
	}
	eds := c.GetEdsClusterConfig().GetServiceName()
	if eds == "" {
		eds = c.GetName()
	}
	od, err := outlierDetection(c.GetOutlierDetection())
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.GetName(), err)
	}
	return &cluster{policy: policy.Cluster{Name: c.GetName(), LB: lb, HashHeader: hashHeader, CircuitBreaker: circuitBreaker(c), Outlier: od}, eds: eds}, nil
}

// circuitBreaker reads the default priority's thresholds as gRPC reads
// max_requests (gRFC A32): absent, policy.DefaultMaxRequests;
// policy.NoLimit, no bound. An absent max_pending_requests or
// max_connections is no bound.
func circuitBreaker(c *clusterv3.Cluster) policy.CircuitBreaker {
	out := policy.CircuitBreaker{MaxRequests: policy.DefaultMaxRequests}
	for _, t := range c.GetCircuitBreakers().GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		if m := t.GetMaxRequests(); m != nil {
			out.MaxRequests = m.GetValue()
		}
		out.MaxPendingRequests = t.GetMaxPendingRequests().GetValue()
		out.MaxConnections = t.GetMaxConnections().GetValue()
		break
	}
	if out.MaxRequests == policy.NoLimit {
		out.MaxRequests = 0
	}
	if out.MaxPendingRequests == policy.NoLimit {
		out.MaxPendingRequests = 0
	}
	if out.MaxConnections == policy.NoLimit {
		out.MaxConnections = 0
	}
	return out
}

// outlierDetection reads a Cluster's outlier_detection as gRPC's xDS
// clients do (gRFC A50: absent fields take its defaults; success-rate
// ejection is on unless enforcing_success_rate is 0, failure-percentage
// ejection only when enforcing_failure_percentage is above 0; values
// over 100 in percentages are an error), plus consecutive_5xx as
// consecutive errors, on unless enforcing_consecutive_5xx is 0 (Envoy's
// defaults: 5, enforced 100%).
func outlierDetection(o *clusterv3.OutlierDetection) (*policy.OutlierDetection, error) {
	if o == nil {
		return nil, nil
	}
	dur := func(name string, d *durationpb.Duration, def time.Duration) (time.Duration, error) {
		if d == nil {
			return def, nil
		}
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return 0, fmt.Errorf("outlier_detection.%s %v is not a duration of 0 or more", name, d)
		}
		return d.AsDuration(), nil
	}
	var bad error
	u := func(name string, v *wrapperspb.UInt32Value, def uint32, percent bool) uint32 {
		if v == nil {
			return def
		}
		if percent && v.GetValue() > 100 && bad == nil {
			bad = fmt.Errorf("outlier_detection.%s %d is over 100", name, v.GetValue())
		}
		return v.GetValue()
	}
	def, sr0, fp0 := policy.DefaultOutlierDetection, policy.DefaultSuccessRate, policy.DefaultFailurePercentage
	out := &policy.OutlierDetection{}
	var err error
	if out.Interval, err = dur("interval", o.GetInterval(), def.Interval); err != nil {
		return nil, err
	}
	if out.BaseEjectionTime, err = dur("base_ejection_time", o.GetBaseEjectionTime(), def.BaseEjectionTime); err != nil {
		return nil, err
	}
	if out.MaxEjectionTime, err = dur("max_ejection_time", o.GetMaxEjectionTime(), def.MaxEjectionTime); err != nil {
		return nil, err
	}
	out.MaxEjectionPercent = u("max_ejection_percent", o.GetMaxEjectionPercent(), def.MaxEjectionPercent, true)
	if u("enforcing_consecutive_5xx", o.GetEnforcingConsecutive_5Xx(), 100, true) > 0 {
		out.ConsecutiveErrors = u("consecutive_5xx", o.GetConsecutive_5Xx(), 5, false)
	}
	if e := u("enforcing_success_rate", o.GetEnforcingSuccessRate(), sr0.EnforcementPercentage, true); e > 0 {
		out.SuccessRate = &policy.SuccessRateEjection{
			EnforcementPercentage: e,
			StdevFactor:           u("success_rate_stdev_factor", o.GetSuccessRateStdevFactor(), sr0.StdevFactor, false),
			MinimumHosts:          u("success_rate_minimum_hosts", o.GetSuccessRateMinimumHosts(), sr0.MinimumHosts, false),
			RequestVolume:         u("success_rate_request_volume", o.GetSuccessRateRequestVolume(), sr0.RequestVolume, false),
		}
	}
	if e := u("enforcing_failure_percentage", o.GetEnforcingFailurePercentage(), 0, true); e > 0 {
		out.FailurePercentage = &policy.FailurePercentageEjection{
			EnforcementPercentage: e,
			Threshold:             u("failure_percentage_threshold", o.GetFailurePercentageThreshold(), fp0.Threshold, true),
			MinimumHosts:          u("failure_percentage_minimum_hosts", o.GetFailurePercentageMinimumHosts(), fp0.MinimumHosts, false),
			RequestVolume:         u("failure_percentage_request_volume", o.GetFailurePercentageRequestVolume(), fp0.RequestVolume, false),
		}
	}
	if bad != nil {
		return nil, bad
	}
	return out, nil
}

// clusterLB is the Cluster's policy and, for ring_hash, the header its
// consistent_hashing_lb_config hashes (its first header hash_policy; a
// ring_hash without one hashes each call at random).
func clusterLB(c *clusterv3.Cluster) (policy.LB, string, error) {
	list := c.GetLoadBalancingPolicy()
	if list == nil {
		switch c.GetLbPolicy() {
		case clusterv3.Cluster_ROUND_ROBIN:
			return policy.RoundRobin, "", nil
		case clusterv3.Cluster_LEAST_REQUEST:
			return policy.LeastRequest, "", nil
		case clusterv3.Cluster_RING_HASH:
			return policy.RingHash, "", nil
		}
		return "", "", fmt.Errorf("lb_policy %s is not supported", c.GetLbPolicy())
	}
	var names []string
	for _, p := range list.GetPolicies() {
		tc := p.GetTypedExtensionConfig().GetTypedConfig()
		name, err := balancerName(tc)
		if err != nil {
			return "", "", err
		}
		lb, ok := policy.LBOf(name)
		if !ok {
			names = append(names, name)
			continue
		}
		if lb != policy.RingHash || tc.GetTypeUrl() != ringHashType {
			return lb, "", nil
		}
		var rh ringhashv3.RingHash
		if err := unmarshalAny(tc, ringHashType, &rh); err != nil {
			return "", "", fmt.Errorf("ring_hash: %w", err)
		}
		for _, hp := range rh.GetConsistentHashingLbConfig().GetHashPolicy() {
			if h := hp.GetHeader().GetHeaderName(); h != "" {
				return lb, strings.ToLower(h), nil
			}
		}
		return lb, "", nil
	}
	return "", "", fmt.Errorf("no supported policy in load_balancing_policy (%s)", strings.Join(names, ", "))
}

// balancerName is the grpc-go balancer a policy entry names.
func balancerName(tc *anypb.Any) (string, error) {
	switch tc.GetTypeUrl() {
	case roundRobinType:
		return "round_robin", nil
	case leastRequestType:
		return "least_request_experimental", nil
	case ringHashType:
		return policy.RingHashBalancer, nil
	case typedStructType, udpaTypedStructType:
		// A udpa TypedStruct has the same wire shape as xds's.
		var ts xdstypev3.TypedStruct
		if err := proto.Unmarshal(tc.GetValue(), &ts); err != nil {
			return "", fmt.Errorf("TypedStruct policy: %w", err)
		}
		u := ts.GetTypeUrl()
		return u[strings.LastIndex(u, "/")+1:], nil
	}
	return tc.GetTypeUrl(), nil
}
