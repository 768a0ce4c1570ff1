//go:build linux

package iptables

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestApplyRemoveNetns installs, reinstalls, narrows and removes the rules
// in a network namespace the test creates, reading them back with
// iptables-save each time.
func TestApplyRemoveNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (tools/deps.sh installs iptables)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := fmt.Sprintf("ballast-ipt-%d-%d", os.Getpid(), rand.Uint32())
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run := func(ctx context.Context, stdin, name string, args ...string) error {
		return Exec(ctx, stdin, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	}
	save := func() string {
		t.Helper()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "iptables-save", "-t", "nat").Output()
		if err != nil {
			t.Fatalf("iptables-save: %v", err)
		}
		return string(out)
	}
	inbound := Config{ProxyPort: 15001, ProxyUID: 1337, InboundPort: 15006, AdminPort: 15021, InboundPorts: []int{50051, 8080}}
	outbound := Config{ProxyPort: 15001, ProxyUID: 1337}
	steps := []struct {
		name  string
		apply *Config // nil: Remove
		count map[string]int
	}{
		{"inbound", &inbound, map[string]int{
			"-A OUTPUT -p tcp -j BALLAST_OUTPUT":         1,
			"-A PREROUTING -p tcp -j BALLAST_INBOUND":    1,
			"-j REDIRECT --to-ports 15006":               1,
			"--dports 50051,8080 -j BALLAST_IN_REDIRECT": 1,
		}},
		{"inbound again", &inbound, map[string]int{
			"-A OUTPUT -p tcp -j BALLAST_OUTPUT":         1,
			"-A PREROUTING -p tcp -j BALLAST_INBOUND":    1,
			"-j REDIRECT --to-ports 15006":               1,
			"--dports 50051,8080 -j BALLAST_IN_REDIRECT": 1,
		}},
		{"outbound only drops inbound", &outbound, map[string]int{
			"-A OUTPUT -p tcp -j BALLAST_OUTPUT": 1,
			"BALLAST_IN":                         0,
			"-j REDIRECT --to-ports 15001":       1,
		}},
		{"inbound once more", &inbound, map[string]int{
			"-A PREROUTING -p tcp -j BALLAST_INBOUND": 1,
		}},
		{"remove", nil, map[string]int{"BALLAST": 0}},
		{"remove again", nil, map[string]int{"BALLAST": 0}},
	}
	for _, step := range steps {
		var err error
		if step.apply != nil {
			err = Apply(ctx, *step.apply, run)
		} else {
			err = Remove(ctx, false, run)
		}
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		saved := save()
		for s, want := range step.count {
			if got := strings.Count(saved, s); got != want {
				t.Fatalf("%s: %q appears %d times, want %d:\n%s", step.name, s, got, want, saved)
			}
		}
	}
}
