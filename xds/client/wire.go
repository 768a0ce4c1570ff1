package client

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The type URLs of what the client reads. Its messages (package wire) are
// Envoy's under names of their own, so an Any is matched to one by these,
// not by the message's name.
const (
	listenerType  = "type.googleapis.com/envoy.config.listener.v3.Listener"
	routeType     = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	clusterType   = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointType  = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	hcmType       = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	httpFaultType = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
)

// unmarshalAny decodes a into m if a holds the message typeURL names: its
// type URL ends in the same message name, whatever comes before the last
// "/", as anypb.UnmarshalTo checks.
func unmarshalAny(a *anypb.Any, typeURL string, m proto.Message) error {
	if messageName(a.GetTypeUrl()) != messageName(typeURL) {
		return fmt.Errorf("mismatched message type: got %q, want %q", messageName(a.GetTypeUrl()), messageName(typeURL))
	}
	return proto.Unmarshal(a.GetValue(), m)
}

func messageName(typeURL string) string { return typeURL[strings.LastIndexByte(typeURL, '/')+1:] }
