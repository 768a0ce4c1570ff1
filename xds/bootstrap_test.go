package xds

import (
	"encoding/json"
	"strings"
	"testing"

	grpcxds "google.golang.org/grpc/xds"
)

func TestBootstrap(t *testing.T) {
	tests := []struct {
		name    string
		b       Bootstrap
		wantErr string
	}{
		{"full", Bootstrap{Server: "ballast-control.ballast-system.svc:15010", Pod: "web-1", Namespace: "shop", Zone: "z1", Metadata: map[string]string{"app": "web"}}, ""},
		{"token file", Bootstrap{Server: "127.0.0.1:15010", Pod: "web-1", Namespace: "shop", TokenFile: "/var/run/secrets/ballast/token"}, ""},
		{"no zone", Bootstrap{Server: "127.0.0.1:15010", Pod: "web-1", Namespace: "shop"}, ""},
		{"TLS and token", Bootstrap{Server: "ballast-control.ballast-system.svc:15010", Pod: "web-1", Namespace: "shop",
			TokenFile: "/var/run/secrets/ballast/token", CAFile: "/var/run/ballast/ca/ca.crt"}, ""},
		{"mTLS", Bootstrap{Server: "ballast-control.ballast-system.svc:15010", Pod: "web-1", Namespace: "shop",
			CAFile: "/var/run/ballast/ca/ca.crt", CertFile: "/var/run/ballast/tls/tls.crt", KeyFile: "/var/run/ballast/tls/tls.key"}, ""},
		{"certificate without key", Bootstrap{Server: "a:1", Pod: "p", Namespace: "n", CAFile: "/ca", CertFile: "/crt"}, "give both or neither"},
		{"certificate without CA", Bootstrap{Server: "a:1", Pod: "p", Namespace: "n", CertFile: "/crt", KeyFile: "/key"}, "CA file too"},
		{"no server", Bootstrap{Pod: "p", Namespace: "n"}, "no control plane address"},
		{"server without port", Bootstrap{Server: "ballast-control", Pod: "p", Namespace: "n"}, `control plane address "ballast-control"`},
		{"no pod", Bootstrap{Server: "a:1", Namespace: "n"}, "pod name"},
		{"no namespace", Bootstrap{Server: "a:1", Pod: "p"}, "namespace"},
		{"tilde in pod", Bootstrap{Server: "a:1", Pod: "p~x", Namespace: "n"}, "not allowed in a node id"},
		{"node id as given", Bootstrap{Server: "127.0.0.1:15010", ID: "sidecar~198.51.100.1~p.n~n.svc.cluster.local", Metadata: map[string]string{"GENERATOR": "grpc"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := tt.b.JSON()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				XDSServers []struct {
					ServerURI      string   `json:"server_uri"`
					ServerFeatures []string `json:"server_features"`
					ChannelCreds   []struct {
						Type   string            `json:"type"`
						Config map[string]string `json:"config"`
					} `json:"channel_creds"`
					CallCreds []struct {
						Type   string            `json:"type"`
						Config map[string]string `json:"config"`
					} `json:"call_creds"`
				} `json:"xds_servers"`
				Node struct {
					ID       string `json:"id"`
					Locality struct {
						Zone string `json:"zone"`
					} `json:"locality"`
					Metadata map[string]string `json:"metadata"`
				} `json:"node"`
			}
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
			// grpc-js refuses a node without a locality, zone or not.
			var raw struct {
				Node map[string]json.RawMessage `json:"node"`
			}
			if err := json.Unmarshal(data, &raw); err != nil || raw.Node["locality"] == nil {
				t.Fatalf("node has no locality: %s", data)
			}
			wantID := "ballast~" + tt.b.Pod + "." + tt.b.Namespace
			if tt.b.ID != "" {
				wantID = tt.b.ID
			}
			if got.XDSServers[0].ServerURI != tt.b.Server || got.Node.ID != wantID ||
				got.Node.Locality.Zone != tt.b.Zone || len(got.Node.Metadata) != len(tt.b.Metadata) {
				t.Fatalf("bootstrap = %s", data)
			}
			if cc := got.XDSServers[0].CallCreds; tt.b.TokenFile != "" &&
				(len(cc) != 1 || cc[0].Type != "jwt_token_file" || cc[0].Config["jwt_token_file"] != tt.b.TokenFile) ||
				tt.b.TokenFile == "" && len(cc) != 0 {
				t.Fatalf("call_creds for token file %q: %s", tt.b.TokenFile, data)
			}
			wantCreds := "insecure"
			if tt.b.CAFile != "" {
				wantCreds = "tls"
			}
			if ch := got.XDSServers[0].ChannelCreds; len(ch) != 1 || ch[0].Type != wantCreds ||
				ch[0].Config["ca_certificate_file"] != tt.b.CAFile || ch[0].Config["certificate_file"] != tt.b.CertFile ||
				ch[0].Config["private_key_file"] != tt.b.KeyFile {
				t.Fatalf("channel_creds, want one %s: %s", wantCreds, data)
			}
			// grpc-go itself must accept the file.
			if _, err := grpcxds.NewXDSResolverWithConfigForTesting(data); err != nil {
				t.Fatalf("grpc-go rejects the bootstrap: %v\n%s", err, data)
			}
		})
	}
}
