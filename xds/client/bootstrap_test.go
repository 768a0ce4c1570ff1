package client

import (
	"reflect"
	"strings"
	"testing"

	"github.com/ballast-dev/ballast/xds"
)

func TestConfigFromBootstrap(t *testing.T) {
	good, err := xds.Bootstrap{Server: "127.0.0.1:18000", ID: "ballast-proxy~ns~pod"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	withToken, err := xds.Bootstrap{Server: "127.0.0.1:18000", ID: "n", TokenFile: "/run/token"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	zoned, err := xds.Bootstrap{Server: "127.0.0.1:18000", ID: "n", Zone: "zone-a"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	mtls, err := xds.Bootstrap{Server: "ballast-control.ballast-system.svc:15010", ID: "n", CAFile: "/ca/ca.crt", CertFile: "/tls/tls.crt", KeyFile: "/tls/tls.key"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		json    string
		want    Config
		wantErr string
	}{
		{name: "ours", json: string(good), want: Config{Server: "127.0.0.1:18000", Node: Node{ID: "ballast-proxy~ns~pod"}}},
		{name: "zone", json: string(zoned), want: Config{Server: "127.0.0.1:18000", Node: Node{ID: "n", Zone: "zone-a"}}},
		{name: "token file", json: string(withToken), want: Config{Server: "127.0.0.1:18000", Node: Node{ID: "n"}, TokenFile: "/run/token"}},
		{name: "mTLS", json: string(mtls), want: Config{Server: "ballast-control.ballast-system.svc:15010", Node: Node{ID: "n"},
			CAFile: "/ca/ca.crt", CertFile: "/tls/tls.crt", KeyFile: "/tls/tls.key"}},
		{name: "first known creds: insecure", json: `{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"google_default"},{"type":"insecure"},{"type":"tls","config":{"ca_certificate_file":"/ca"}}]}],"node":{"id":"n"}}`,
			want: Config{Server: "a:1", Node: Node{ID: "n"}}},
		{name: "tls without a CA file", json: `{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"tls"}]}],"node":{"id":"n"}}`, wantErr: "ca_certificate_file"},
		{name: "no server", json: `{"node":{"id":"x"}}`, wantErr: "xds_servers"},
		{name: "not json", json: `{`, wantErr: "xds bootstrap"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigFromBootstrap([]byte(tc.json))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Server != tc.want.Server || got.TokenFile != tc.want.TokenFile || !reflect.DeepEqual(got.Node, tc.want.Node) ||
				got.CAFile != tc.want.CAFile || got.CertFile != tc.want.CertFile || got.KeyFile != tc.want.KeyFile {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
