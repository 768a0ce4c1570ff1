package xds

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"

	"github.com/ballast-dev/ballast/xds/node"
)

// BootstrapEnv is the variable gRPC's xDS client reads the bootstrap file
// path from.
const BootstrapEnv = "GRPC_XDS_BOOTSTRAP"

// Bootstrap describes one client pod, from which the GRPC_XDS_BOOTSTRAP
// file is written.
type Bootstrap struct {
	// Server is the control plane's host:port, e.g.
	// ballast-control.ballast-system.svc:15010.
	Server string
	// Pod and Namespace name the client; the node id is node.ID's,
	// ballast~<pod>.<namespace>, which CSDS and logs show.
	Pod       string
	Namespace string
	// Zone is the client's zone (the node's topology.kubernetes.io/zone).
	Zone string
	// Metadata is copied into the node metadata.
	Metadata map[string]string
	// ID, when set, is the node id as is (a sidecar's, or another control
	// plane's format), and Pod and Namespace are not needed.
	ID string
	// TokenFile, when set, is a projected ServiceAccount token (audience
	// ballast-control) written as the server's call credentials, gRFC
	// A97's jwt_token_file, which an authenticated control plane needs.
	// grpc-go reads it only with GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS
	// =true and sends it only over TLS (CAFile); ballast-proxy reads and
	// sends it (docs/security.md).
	TokenFile string
	// CAFile, when set, makes the channel to the control plane TLS (gRFC
	// A65's "tls" channel_creds): the control plane's certificate is
	// verified against the CAs in the file (the ballast-control-ca
	// ConfigMap, mounted) and the host of Server.
	CAFile string
	// CertFile and KeyFile, with CAFile, are a client certificate (mTLS)
	// the control plane may know the client by, instead of a token.
	CertFile, KeyFile string
}

// NodeID is the xDS node id of the pod.
func (b Bootstrap) NodeID() string {
	if b.ID != "" {
		return b.ID
	}
	return node.ID(b.Pod, b.Namespace)
}

// bootstrapJSON is the subset of gRPC's bootstrap format (gRFC A27) that
// Ballast writes: what the strictest parser needs, which every other one
// accepts (bootstrap_test.go runs each that runs here). grpc-js refuses a
// node without a locality, so one is always written, empty without a zone.
// The listener name template is written as every parser defaults it ("%s",
// the target's authority and path as the Listener name), so a parser that
// reads it under federation finds it.
type bootstrapJSON struct {
	XDSServers               []xdsServerJSON `json:"xds_servers"`
	Node                     nodeJSON        `json:"node"`
	ClientListenerNameFormat string          `json:"client_default_listener_resource_name_template"`
}

type xdsServerJSON struct {
	ServerURI      string            `json:"server_uri"`
	ChannelCreds   []channelCredJSON `json:"channel_creds"`
	CallCreds      []callCredJSON    `json:"call_creds,omitempty"`
	ServerFeatures []string          `json:"server_features"`
}

type channelCredJSON struct {
	Type   string            `json:"type"`
	Config map[string]string `json:"config,omitempty"`
}

type callCredJSON struct {
	Type   string            `json:"type"`
	Config map[string]string `json:"config"`
}

type nodeJSON struct {
	ID       string            `json:"id"`
	Locality localityJSON      `json:"locality"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

type localityJSON struct {
	Zone string `json:"zone,omitempty"`
}

// JSON renders the bootstrap file. It fails, naming the field, when the
// server address or the pod identity is missing or malformed.
func (b Bootstrap) JSON() ([]byte, error) {
	if b.Server == "" {
		return nil, fmt.Errorf("bootstrap: no control plane address")
	}
	if _, _, err := net.SplitHostPort(b.Server); err != nil {
		return nil, fmt.Errorf("bootstrap: control plane address %q: %w", b.Server, err)
	}
	if b.ID == "" && (b.Pod == "" || b.Namespace == "") {
		return nil, fmt.Errorf("bootstrap: pod name (%q) and namespace (%q) are both needed for the node id", b.Pod, b.Namespace)
	}
	if strings.ContainsAny(b.Pod+b.Namespace, "~ ") {
		return nil, fmt.Errorf("bootstrap: pod %q or namespace %q has a character not allowed in a node id", b.Pod, b.Namespace)
	}
	if (b.CertFile == "") != (b.KeyFile == "") {
		return nil, fmt.Errorf("bootstrap: client certificate %q and key %q: give both or neither", b.CertFile, b.KeyFile)
	}
	if b.CertFile != "" && b.CAFile == "" {
		return nil, fmt.Errorf("bootstrap: a client certificate is for TLS: give the control plane's CA file too")
	}
	// One channel credential, never a list with "insecure" after "tls": a
	// parser that skips "tls" (grpc-js, older C-core) would fall back to
	// plaintext against a TLS port and fail with a confusing error.
	creds := channelCredJSON{Type: "insecure"}
	if b.CAFile != "" {
		creds = channelCredJSON{Type: "tls", Config: map[string]string{"ca_certificate_file": b.CAFile}}
		if b.CertFile != "" {
			creds.Config["certificate_file"] = b.CertFile
			creds.Config["private_key_file"] = b.KeyFile
		}
	}
	out := bootstrapJSON{
		XDSServers: []xdsServerJSON{{
			ServerURI:      b.Server,
			ChannelCreds:   []channelCredJSON{creds},
			ServerFeatures: []string{"xds_v3"},
		}},
		Node:                     nodeJSON{ID: b.NodeID(), Locality: localityJSON{Zone: b.Zone}, Metadata: b.Metadata},
		ClientListenerNameFormat: "%s",
	}
	if b.TokenFile != "" {
		out.XDSServers[0].CallCreds = []callCredJSON{{Type: "jwt_token_file", Config: map[string]string{"jwt_token_file": b.TokenFile}}}
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return append(data, '\n'), nil
}
