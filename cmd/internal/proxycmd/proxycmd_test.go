package proxycmd

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestProxyTarget(t *testing.T) {
	for in, want := range map[string]string{
		"greeter.default:50051":                 "xds:///greeter.default:50051",
		"dns:///greeter:50051":                  "dns:///greeter:50051",
		"kubernetes:///greeter.default:grpc":    "kubernetes:///greeter.default:grpc",
		"passthrough:///127.0.0.1:50051":        "passthrough:///127.0.0.1:50051",
		"xds://authority/greeter.default:50051": "xds://authority/greeter.default:50051",
	} {
		if got := proxyTarget(in); got != want {
			t.Errorf("proxyTarget(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseInitFlags(t *testing.T) {
	ports, err := parsePorts("--include-ports", []string{"80", " 50051"})
	if err != nil || !slices.Equal(ports, []int{80, 50051}) {
		t.Fatalf("ports %v, %v", ports, err)
	}
	cidrs, err := parseCIDRs("--exclude-cidrs", []string{"10.96.0.0/12", "169.254.169.254", "fd00::/8"})
	want := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("fd00::/8")}
	if err != nil || !slices.Equal(cidrs, want) {
		t.Fatalf("cidrs %v, %v; want %v", cidrs, err, want)
	}
	for _, bad := range []struct {
		flag string
		err  error
	}{
		{"--include-ports", second(parsePorts("--include-ports", []string{"http"}))},
		{"--include-ports", second(parsePorts("--include-ports", []string{"0"}))},
		{"--exclude-cidrs", second(parseCIDRs("--exclude-cidrs", []string{"10.0.0.0/33"}))},
	} {
		if bad.err == nil || !strings.HasPrefix(bad.err.Error(), bad.flag) {
			t.Errorf("got %v, want an error naming %s", bad.err, bad.flag)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestParseInboundPorts(t *testing.T) {
	tests := []struct {
		in      string
		all     bool
		ports   []int
		wantErr bool
	}{
		{"", false, nil, false},
		{"*", true, nil, false},
		{" * ", true, nil, false},
		{"50051,8080", false, []int{50051, 8080}, false},
		{"50051, 8080", false, []int{50051, 8080}, false},
		{"50051,*", false, nil, true},
		{"grpc", false, nil, true},
	}
	for _, tc := range tests {
		all, ports, err := parseInboundPorts(tc.in)
		if tc.wantErr {
			if err == nil || !strings.HasPrefix(err.Error(), "--inbound-ports") {
				t.Errorf("parseInboundPorts(%q) = %v, want an error naming --inbound-ports", tc.in, err)
			}
			continue
		}
		if err != nil || all != tc.all || !slices.Equal(ports, tc.ports) {
			t.Errorf("parseInboundPorts(%q) = %v, %v, %v; want %v, %v", tc.in, all, ports, err, tc.all, tc.ports)
		}
	}
}
