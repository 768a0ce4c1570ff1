package iptables

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	tests := []struct {
		name   string
		config Config
		family Family
		want   string
	}{
		{
			name:   "everything",
			config: Config{ProxyPort: 15001, ProxyUID: 1337},
			family: 4,
			want: `*nat
:BALLAST_OUTPUT - [0:0]
:BALLAST_REDIRECT - [0:0]
-A BALLAST_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A BALLAST_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A BALLAST_OUTPUT -d 127.0.0.0/8 -j RETURN
-A BALLAST_OUTPUT -p tcp -j BALLAST_REDIRECT
COMMIT
`,
		},
		{
			name: "includes and excludes, v4 only",
			config: Config{
				ProxyPort: 15001, ProxyUID: 1337,
				IncludePorts: []int{50051, 8080}, ExcludePorts: []int{22},
				IncludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/108")},
				ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.1/12"), netip.MustParsePrefix("fd00::1/128")},
			},
			family: 4,
			want: `*nat
:BALLAST_OUTPUT - [0:0]
:BALLAST_REDIRECT - [0:0]
-A BALLAST_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A BALLAST_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A BALLAST_OUTPUT -d 127.0.0.0/8 -j RETURN
-A BALLAST_OUTPUT -d 10.96.0.0/12 -j RETURN
-A BALLAST_OUTPUT -p tcp --dport 22 -j RETURN
-A BALLAST_OUTPUT -p tcp -d 10.96.0.0/12 -m multiport --dports 50051,8080 -j BALLAST_REDIRECT
COMMIT
`,
		},
		{
			name: "v6 side",
			config: Config{
				ProxyPort: 15001, ProxyUID: 1337,
				IncludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/108")},
			},
			family: 6,
			want: `*nat
:BALLAST_OUTPUT - [0:0]
:BALLAST_REDIRECT - [0:0]
-A BALLAST_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A BALLAST_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A BALLAST_OUTPUT -d ::1/128 -j RETURN
-A BALLAST_OUTPUT -p tcp -d fd00::/108 -j BALLAST_REDIRECT
COMMIT
`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Rules(tc.config, tc.family); got != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestRulesChunkPorts(t *testing.T) {
	var ports []int
	for p := 1000; p < 1020; p++ {
		ports = append(ports, p)
	}
	got := Rules(Config{ProxyPort: 15001, IncludePorts: ports}, 4)
	if n := strings.Count(got, "-j BALLAST_REDIRECT"); n != 2 {
		t.Fatalf("20 ports made %d redirect rules, want 2 (multiport takes 15):\n%s", n, got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		config  Config
		wantErr string
	}{
		{"ok", Config{ProxyPort: 15001, ProxyUID: 1337}, ""},
		{"no port", Config{ProxyUID: 1337}, "proxy port 0"},
		{"bad include port", Config{ProxyPort: 15001, IncludePorts: []int{70000}}, "include-ports: port 70000"},
		{"bad exclude port", Config{ProxyPort: 15001, ExcludePorts: []int{0}}, "exclude-ports: port 0"},
		{"loop", Config{ProxyPort: 15001, IncludePorts: []int{15001}}, "would loop"},
		{"negative uid", Config{ProxyPort: 15001, ProxyUID: -1}, "proxy uid -1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.config.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}
