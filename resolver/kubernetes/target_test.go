package kubernetes

import (
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/discovery"
)

func parse(t *testing.T, raw string) resolver.Target {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("url.Parse(%q): %v", raw, err)
	}
	return resolver.Target{URL: *u}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		target  string
		want    target
		wantErr string
	}{
		{target: "kubernetes:///greeter.default:50051", want: target{discovery.Key{Namespace: "default", Name: "greeter"}, "50051"}},
		{target: "kubernetes:///greeter.shop:grpc", want: target{discovery.Key{Namespace: "shop", Name: "greeter"}, "grpc"}},
		{target: "kubernetes:///greeter.shop.svc:grpc", want: target{discovery.Key{Namespace: "shop", Name: "greeter"}, "grpc"}},
		{target: "kubernetes:///greeter.shop.svc.cluster.local:80", want: target{discovery.Key{Namespace: "shop", Name: "greeter"}, "80"}},
		{target: "kubernetes:///greeter:50051", want: target{discovery.Key{Namespace: "default", Name: "greeter"}, "50051"}},
		{target: "kubernetes:///greeter.shop", want: target{discovery.Key{Namespace: "shop", Name: "greeter"}, ""}},
		{target: "kubernetes://shop/greeter:50051", want: target{discovery.Key{Namespace: "shop", Name: "greeter"}, "50051"}},
		{target: "kubernetes://shop/greeter.shop:50051", want: target{discovery.Key{Namespace: "shop", Name: "greeter"}, "50051"}},

		{target: "kubernetes:///", wantErr: "no service named"},
		{target: "kubernetes://shop/greeter.web:80", wantErr: `namespace "shop" in the authority and "web" in the name disagree`},
		{target: "kubernetes:///greeter.default:", wantErr: "empty port after ':'"},
		{target: "kubernetes:///greeter.default:0", wantErr: "port 0 out of range 1-65535"},
		{target: "kubernetes:///greeter.default:70000", wantErr: "port 70000 out of range"},
		{target: "kubernetes:///greeter.default:no_such", wantErr: `port "no_such" is neither a number nor a valid port name`},
		{target: "kubernetes:///greeter.default.cluster:80", wantErr: `"greeter.default.cluster" is not <name>.<namespace>`},
		{target: "kubernetes:///Greeter.default:80", wantErr: `service name "Greeter"`},
		{target: "kubernetes:///greeter.Default:80", wantErr: `namespace "Default"`},
		{target: "kubernetes:///greeter.default:80/extra", wantErr: "unexpected path"},
	} {
		t.Run(tc.target, func(t *testing.T) {
			got, err := parseTarget(parse(t, tc.target))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseTarget(%s) = %+v, %v; want error containing %q", tc.target, got, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.target) || !strings.Contains(err.Error(), usage) {
					t.Fatalf("error %q should name the target and the expected form", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseTarget(%s): %v", tc.target, err)
			}
			if got != tc.want {
				t.Fatalf("parseTarget(%s) = %+v, want %+v", tc.target, got, tc.want)
			}
		})
	}
}
