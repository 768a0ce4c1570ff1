package client

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ConfigFromBootstrap reads the control plane's address and the node (its
// id and locality zone) from a gRPC xDS bootstrap (the JSON
// GRPC_XDS_BOOTSTRAP names), so a sidecar configured like a proxyless
// client talks to the same control plane as the same node. Only the first server is used. Its transport is the first
// channel_creds it knows, as grpc-go picks: "tls" (gRFC A65: the CA file,
// and a client key pair for mTLS) or "insecure"; its call credentials
// are used if they are a token file (gRFC A97's jwt_token_file). `ballast
// bootstrap` writes both.
func ConfigFromBootstrap(bootstrap []byte) (Config, error) {
	var b struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type   string `json:"type"`
				Config struct {
					CAFile   string `json:"ca_certificate_file"`
					CertFile string `json:"certificate_file"`
					KeyFile  string `json:"private_key_file"`
				} `json:"config"`
			} `json:"channel_creds"`
			CallCreds []struct {
				Type   string `json:"type"`
				Config struct {
					File string `json:"jwt_token_file"`
				} `json:"config"`
			} `json:"call_creds"`
		} `json:"xds_servers"`
		Node struct {
			ID       string `json:"id"`
			Locality struct {
				Zone string `json:"zone"`
			} `json:"locality"`
		} `json:"node"`
	}
	if err := json.Unmarshal(bootstrap, &b); err != nil {
		return Config{}, fmt.Errorf("xds bootstrap: %w", err)
	}
	if len(b.XDSServers) == 0 || b.XDSServers[0].ServerURI == "" {
		return Config{}, errors.New("xds bootstrap: no xds_servers[0].server_uri")
	}
	cfg := Config{Server: b.XDSServers[0].ServerURI, Node: Node{ID: b.Node.ID, Zone: b.Node.Locality.Zone}}
	for _, cc := range b.XDSServers[0].ChannelCreds {
		if cc.Type == "insecure" {
			break
		}
		if cc.Type == "tls" {
			if cc.Config.CAFile == "" {
				return Config{}, errors.New("xds bootstrap: tls channel_creds without a ca_certificate_file: the sidecar verifies the control plane only against a CA file")
			}
			cfg.CAFile, cfg.CertFile, cfg.KeyFile = cc.Config.CAFile, cc.Config.CertFile, cc.Config.KeyFile
			break
		}
	}
	for _, cc := range b.XDSServers[0].CallCreds {
		if cc.Type == "jwt_token_file" && cc.Config.File != "" {
			cfg.TokenFile = cc.Config.File
			break
		}
	}
	return cfg, nil
}
