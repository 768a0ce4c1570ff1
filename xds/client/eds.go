package client

import (
	"fmt"
	"net/netip"

	"github.com/ballast-dev/ballast/policy"
	corev3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/core/v3"
	endpointv3 "github.com/ballast-dev/ballast/xds/client/internal/wire/envoy/config/endpoint/v3"
)

// decodeEndpoints reads a ClusterLoadAssignment: its endpoints with their
// locality's priority (policy.Endpoints.Usable takes the first that has
// usable ones, as gRPC's priority policy does), HEALTHY and UNKNOWN ones
// Healthy (as gRPC uses them), DRAINING ones Draining, the rest left out.
func decodeEndpoints(cla *endpointv3.ClusterLoadAssignment) (policy.Endpoints, error) {
	out := policy.Endpoints{Cluster: cla.GetClusterName()}
	for _, loc := range cla.GetEndpoints() {
		for _, e := range loc.GetLbEndpoints() {
			var h policy.Health
			switch e.GetHealthStatus() {
			case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
				h = policy.Healthy
			case corev3.HealthStatus_DRAINING:
				h = policy.Draining
			default:
				continue
			}
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				return policy.Endpoints{}, fmt.Errorf("cluster load assignment %s: endpoint address: %w", cla.GetClusterName(), err)
			}
			port := sa.GetPortValue()
			if port == 0 || port > 65535 {
				return policy.Endpoints{}, fmt.Errorf("cluster load assignment %s: endpoint %s: port %d out of range", cla.GetClusterName(), ip, port)
			}
			out.Endpoints = append(out.Endpoints, policy.Endpoint{
				Address:  netip.AddrPortFrom(ip.Unmap(), uint16(port)),
				Zone:     loc.GetLocality().GetZone(),
				Pod:      e.GetEndpoint().GetHostname(),
				Health:   h,
				Priority: int(loc.GetPriority()),
			})
		}
	}
	return out, nil
}
