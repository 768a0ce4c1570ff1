package client

import (
	"fmt"
	"strings"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ballast-dev/ballast/policy"
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
	return &cluster{policy: policy.Cluster{Name: c.GetName(), LB: lb, HashHeader: hashHeader}, eds: eds}, nil
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
		if err := tc.UnmarshalTo(&rh); err != nil {
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
