package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
)

// XDSConfigFromBootstrap reads the control plane's address and the node id
// from a grpc-go xDS bootstrap (the JSON GRPC_XDS_BOOTSTRAP names), so a
// proxy configured like a proxyless client talks to the same control plane
// as the same node. Only the first server is used, without credentials.
func XDSConfigFromBootstrap(bootstrap []byte) (XDSConfig, error) {
	var b struct {
		XDSServers []struct {
			ServerURI string `json:"server_uri"`
		} `json:"xds_servers"`
		Node struct {
			ID string `json:"id"`
		} `json:"node"`
	}
	if err := json.Unmarshal(bootstrap, &b); err != nil {
		return XDSConfig{}, fmt.Errorf("xds bootstrap: %w", err)
	}
	if len(b.XDSServers) == 0 || b.XDSServers[0].ServerURI == "" {
		return XDSConfig{}, errors.New("xds bootstrap: no xds_servers[0].server_uri")
	}
	return XDSConfig{Server: b.XDSServers[0].ServerURI, NodeID: b.Node.ID}, nil
}
