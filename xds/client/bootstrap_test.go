package client

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"

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
	tests := []struct {
		name    string
		json    string
		want    Config
		wantErr string
	}{
		{name: "ours", json: string(good), want: Config{Server: "127.0.0.1:18000", Node: &corev3.Node{Id: "ballast-proxy~ns~pod"}}},
		{name: "token file", json: string(withToken), want: Config{Server: "127.0.0.1:18000", Node: &corev3.Node{Id: "n"}, TokenFile: "/run/token"}},
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
			if err != nil || got.Server != tc.want.Server || got.TokenFile != tc.want.TokenFile || !proto.Equal(got.Node, tc.want.Node) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
