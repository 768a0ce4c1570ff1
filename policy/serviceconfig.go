package policy

import (
	"encoding/json"
	"fmt"
	"strings"
)

// ServiceConfig renders the policy as a gRPC service config, the form the
// kubernetes:/// resolver hands its channel: loadBalancingConfig lists
// Balancers, and the channel runs the first it has registered.
func (p LB) ServiceConfig() string { return Cluster{LB: p}.ServiceConfig() }

// ServiceConfig renders the Cluster's policy as a gRPC service config, as
// LB.ServiceConfig does, with ring_hash's hash header (Cluster.Balancers).
func (c Cluster) ServiceConfig() string {
	var b strings.Builder
	b.WriteString(`{"loadBalancingConfig":[`)
	for i, bal := range c.Balancers() {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{%q:%s}`, bal.Name, bal.Config)
	}
	b.WriteString(`]}`)
	return b.String()
}

// ParseServiceConfig reads the policy back from a service config that
// ServiceConfig rendered: the first loadBalancingConfig entry that starts
// one of the policies' lists. A config without loadBalancingConfig asks
// for nothing: RoundRobin.
func ParseServiceConfig(js string) (LB, error) {
	var sc struct {
		LoadBalancingConfig []map[string]json.RawMessage `json:"loadBalancingConfig"`
	}
	if err := json.Unmarshal([]byte(js), &sc); err != nil {
		return "", fmt.Errorf("service config: %w", err)
	}
	if len(sc.LoadBalancingConfig) == 0 {
		return RoundRobin, nil
	}
	var names []string
	for _, entry := range sc.LoadBalancingConfig {
		for name := range entry { // one key per entry
			if p, ok := LBOf(name); ok {
				return p, nil
			}
			names = append(names, name)
		}
	}
	return "", fmt.Errorf("service config: loadBalancingConfig names no known policy (%s)", strings.Join(names, ", "))
}
