package client

import (
	"encoding/json"
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// ConfigFromBootstrap reads the control plane's address and the node from
// a gRPC xDS bootstrap (the JSON GRPC_XDS_BOOTSTRAP names), so a sidecar
// configured like a proxyless client talks to the same control plane as
// the same node. Only the first server is used, without credentials.
func ConfigFromBootstrap(bootstrap []byte) (Config, error) {
	var b struct {
		XDSServers []struct {
			ServerURI string `json:"server_uri"`
		} `json:"xds_servers"`
		Node struct {
			ID string `json:"id"`
		} `json:"node"`
	}
	if err := json.Unmarshal(bootstrap, &b); err != nil {
		return Config{}, fmt.Errorf("xds bootstrap: %w", err)
	}
	if len(b.XDSServers) == 0 || b.XDSServers[0].ServerURI == "" {
		return Config{}, errors.New("xds bootstrap: no xds_servers[0].server_uri")
	}
	return Config{Server: b.XDSServers[0].ServerURI, Node: &corev3.Node{Id: b.Node.ID}}, nil
}
