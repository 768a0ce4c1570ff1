package iptables

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
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
		{
			name:   "inbound: the app's ports",
			config: Config{ProxyPort: 15001, ProxyUID: 1337, InboundPort: 15006, InboundPorts: []int{50051, 8080}, ExcludeInboundPorts: []int{9090}},
			family: 4,
			want: `*nat
:BALLAST_OUTPUT - [0:0]
:BALLAST_REDIRECT - [0:0]
-A BALLAST_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A BALLAST_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A BALLAST_OUTPUT -d 127.0.0.0/8 -j RETURN
-A BALLAST_OUTPUT -p tcp -j BALLAST_REDIRECT
:BALLAST_INBOUND - [0:0]
:BALLAST_IN_REDIRECT - [0:0]
-A BALLAST_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A BALLAST_INBOUND -p tcp --dport 9090 -j RETURN
-A BALLAST_INBOUND -p tcp -m multiport --dports 50051,8080 -j BALLAST_IN_REDIRECT
COMMIT
`,
		},
		{
			name:   "inbound: everything but the proxy's ports and the excluded",
			config: Config{ProxyPort: 15001, ProxyUID: 1337, InboundPort: 15006, AdminPort: 15021, InboundAll: true, ExcludeInboundPorts: []int{22}},
			family: 4,
			want: `*nat
:BALLAST_OUTPUT - [0:0]
:BALLAST_REDIRECT - [0:0]
-A BALLAST_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A BALLAST_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A BALLAST_OUTPUT -d 127.0.0.0/8 -j RETURN
-A BALLAST_OUTPUT -p tcp -j BALLAST_REDIRECT
:BALLAST_INBOUND - [0:0]
:BALLAST_IN_REDIRECT - [0:0]
-A BALLAST_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A BALLAST_INBOUND -p tcp -m multiport --dports 15001,15006,15021,22 -j RETURN
-A BALLAST_INBOUND -p tcp -j BALLAST_IN_REDIRECT
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
		{"inbound ok", Config{ProxyPort: 15001, InboundPort: 15006, InboundPorts: []int{8080}}, ""},
		{"inbound all ok", Config{ProxyPort: 15001, InboundPort: 15006, InboundAll: true}, ""},
		{"inbound without port", Config{ProxyPort: 15001, InboundPorts: []int{8080}}, "inbound port 0"},
		{"inbound port is outbound port", Config{ProxyPort: 15001, InboundPort: 15001, InboundAll: true}, "also the outbound proxy port"},
		{"inbound loop", Config{ProxyPort: 15001, InboundPort: 15006, AdminPort: 15021, InboundPorts: []int{15021}}, "inbound-ports: 15021 is one of the proxy's own ports"},
		{"bad inbound port", Config{ProxyPort: 15001, InboundPort: 15006, InboundPorts: []int{0}}, "inbound-ports: port 0"},
		{"bad exclude inbound port", Config{ProxyPort: 15001, ExcludeInboundPorts: []int{65536}}, "exclude-inbound-ports: port 65536"},
		{"bad admin port", Config{ProxyPort: 15001, AdminPort: -1}, "admin port -1"},
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

// recorder is a Runner that records command lines and fails the ones
// absent says are missing, as iptables exits 1 for a rule or chain that is
// not there.
type recorder struct {
	calls   []string
	missing func(line string) bool
}

func (r *recorder) run(_ context.Context, _ string, name string, args ...string) error {
	line := name + " " + strings.Join(args, " ")
	r.calls = append(r.calls, line)
	if r.missing != nil && r.missing(line) {
		return exec.Command("false").Run() // an *exec.ExitError with status 1
	}
	return nil
}

func TestApplyAndRemoveCommands(t *testing.T) {
	tests := []struct {
		name    string
		apply   *Config // nil: Remove
		missing func(string) bool
		want    []string
	}{
		{
			name:  "outbound only, first time: adds the OUTPUT jump, finds no inbound chain to clear",
			apply: &Config{ProxyPort: 15001, ProxyUID: 1337},
			missing: func(l string) bool {
				return strings.Contains(l, " -C ") || strings.Contains(l, " -D ") || strings.Contains(l, "BALLAST_IN")
			},
			want: []string{
				"iptables-restore --noflush",
				"iptables -t nat -C OUTPUT -p tcp -j BALLAST_OUTPUT",
				"iptables -t nat -A OUTPUT -p tcp -j BALLAST_OUTPUT",
				"iptables -t nat -S BALLAST_INBOUND",
			},
		},
		{
			name:  "inbound, jumps already there: nothing added",
			apply: &Config{ProxyPort: 15001, ProxyUID: 1337, InboundPort: 15006, InboundAll: true},
			want: []string{
				"iptables-restore --noflush",
				"iptables -t nat -C OUTPUT -p tcp -j BALLAST_OUTPUT",
				"iptables -t nat -C PREROUTING -p tcp -j BALLAST_INBOUND",
			},
		},
		{
			name: "remove: each jump deleted until gone, then the chains",
			missing: func() func(string) bool {
				n := 0
				return func(l string) bool {
					if strings.Contains(l, "-D OUTPUT") {
						n++
						return n > 2
					}
					return strings.Contains(l, "-D PREROUTING")
				}
			}(),
			want: []string{
				"iptables -t nat -S BALLAST_INBOUND",
				"iptables -t nat -D PREROUTING -p tcp -j BALLAST_INBOUND",
				"iptables -t nat -F BALLAST_INBOUND",
				"iptables -t nat -F BALLAST_IN_REDIRECT",
				"iptables -t nat -X BALLAST_INBOUND",
				"iptables -t nat -X BALLAST_IN_REDIRECT",
				"iptables -t nat -S BALLAST_OUTPUT",
				"iptables -t nat -D OUTPUT -p tcp -j BALLAST_OUTPUT",
				"iptables -t nat -D OUTPUT -p tcp -j BALLAST_OUTPUT",
				"iptables -t nat -D OUTPUT -p tcp -j BALLAST_OUTPUT",
				"iptables -t nat -F BALLAST_OUTPUT",
				"iptables -t nat -F BALLAST_REDIRECT",
				"iptables -t nat -X BALLAST_OUTPUT",
				"iptables -t nat -X BALLAST_REDIRECT",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{missing: tc.missing}
			var err error
			if tc.apply != nil {
				err = Apply(t.Context(), *tc.apply, r.run)
			} else {
				err = Remove(t.Context(), false, r.run)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(r.calls, tc.want) {
				t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(r.calls, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestRemoveFailsOnRealErrors(t *testing.T) {
	run := func(context.Context, string, string, ...string) error { return errors.New("iptables: not installed") }
	if err := Remove(t.Context(), false, run); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("Remove with a broken iptables = %v, want its error", err)
	}
}
