// Package iptables writes the netfilter rules that send a pod's outbound TCP
// connections to the Ballast sidecar: `ballast proxy init`, run once per pod
// as an init container in the pod's network namespace.
//
// Outbound TCP in the nat table's OUTPUT chain jumps to BALLAST_OUTPUT,
// which returns early for the proxy's own traffic (by uid, so the proxy's
// upstream connections are not captured again), for loopback and for the
// excluded ports and CIDRs, and sends the rest to BALLAST_REDIRECT, which
// REDIRECTs it to the proxy's port. The proxy then reads the original
// destination with SO_ORIGINAL_DST.
package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// Chain names, owned by Ballast: Apply flushes and rewrites them.
const (
	OutputChain   = "BALLAST_OUTPUT"
	RedirectChain = "BALLAST_REDIRECT"
)

// Config says what to capture.
type Config struct {
	// ProxyPort is where the proxy's transparent listener accepts.
	ProxyPort int
	// ProxyUID is the uid the proxy runs as; its connections are never
	// captured.
	ProxyUID int
	// IncludePorts limits capture to these destination ports; empty means
	// every port. ExcludePorts are never captured.
	IncludePorts []int
	ExcludePorts []int
	// IncludeCIDRs limits capture to these destinations (say the Service
	// CIDR); empty means every address. ExcludeCIDRs are never captured.
	IncludeCIDRs []netip.Prefix
	ExcludeCIDRs []netip.Prefix
	// IPv6 also writes the rules for ip6tables.
	IPv6 bool
}

// Validate reports the first bad field, by its flag name.
func (c Config) Validate() error {
	if c.ProxyPort < 1 || c.ProxyPort > 65535 {
		return fmt.Errorf("proxy port %d: want 1-65535", c.ProxyPort)
	}
	if c.ProxyUID < 0 {
		return fmt.Errorf("proxy uid %d: want a uid", c.ProxyUID)
	}
	for _, list := range []struct {
		name  string
		ports []int
	}{{"include-ports", c.IncludePorts}, {"exclude-ports", c.ExcludePorts}} {
		for _, p := range list.ports {
			if p < 1 || p > 65535 {
				return fmt.Errorf("%s: port %d: want 1-65535", list.name, p)
			}
		}
	}
	if slices.Contains(c.IncludePorts, c.ProxyPort) {
		return fmt.Errorf("include-ports: %d is the proxy's own port; capturing it would loop", c.ProxyPort)
	}
	return nil
}

// Family is an IP version: 4 for iptables, 6 for ip6tables.
type Family int

// Rules returns the iptables-restore input (nat table) for one family:
// the two chains, declared so that restoring flushes them first. The jump
// from OUTPUT is added separately by Apply, only when missing, so applying
// twice leaves one jump.
func Rules(c Config, f Family) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("*nat")
	line(":%s - [0:0]", OutputChain)
	line(":%s - [0:0]", RedirectChain)
	line("-A %s -p tcp -j REDIRECT --to-ports %d", RedirectChain, c.ProxyPort)
	line("-A %s -m owner --uid-owner %d -j RETURN", OutputChain, c.ProxyUID)
	loopback := "127.0.0.0/8"
	if f == 6 {
		loopback = "::1/128"
	}
	line("-A %s -d %s -j RETURN", OutputChain, loopback)
	for _, p := range c.ExcludeCIDRs {
		if family(p) == f {
			line("-A %s -d %s -j RETURN", OutputChain, p.Masked())
		}
	}
	for _, ports := range chunks(c.ExcludePorts) {
		line("-A %s -p tcp %s -j RETURN", OutputChain, portMatch(ports))
	}
	dests := []string{""}
	if len(c.IncludeCIDRs) > 0 {
		dests = nil
		for _, p := range c.IncludeCIDRs {
			if family(p) == f {
				dests = append(dests, "-d "+p.Masked().String()+" ")
			}
		}
	}
	portSets := [][]int{nil}
	if len(c.IncludePorts) > 0 {
		portSets = chunks(c.IncludePorts)
	}
	for _, d := range dests {
		for _, ports := range portSets {
			match := ""
			if ports != nil {
				match = portMatch(ports) + " "
			}
			line("-A %s -p tcp %s%s-j %s", OutputChain, d, match, RedirectChain)
		}
	}
	line("COMMIT")
	return b.String()
}

func family(p netip.Prefix) Family {
	if p.Addr().Unmap().Is4() {
		return 4
	}
	return 6
}

// chunks splits ports into groups multiport accepts (at most 15).
func chunks(ports []int) [][]int {
	var out [][]int
	for p := range slices.Chunk(ports, 15) {
		out = append(out, p)
	}
	return out
}

func portMatch(ports []int) string {
	if len(ports) == 1 {
		return "--dport " + strconv.Itoa(ports[0])
	}
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return "-m multiport --dports " + strings.Join(s, ",")
}

// jump is the OUTPUT rule that enters Ballast's chain.
var jump = []string{"-t", "nat", "OUTPUT", "-p", "tcp", "-j", OutputChain}

// Runner runs a command with stdin. Exec runs it for real; tests wrap it
// (say with `ip netns exec`).
type Runner func(ctx context.Context, stdin string, name string, args ...string) error

// Exec runs name with args, feeding stdin, and returns an error carrying
// its output when it fails.
func Exec(ctx context.Context, stdin string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// Apply installs the rules with run (nil means Exec). It is idempotent: the
// chains are rewritten whole and the jump is added only when missing.
func Apply(ctx context.Context, c Config, run Runner) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if run == nil {
		run = Exec
	}
	families := []Family{4}
	if c.IPv6 {
		families = append(families, 6)
	}
	for _, f := range families {
		restore, tables := "iptables-restore", "iptables"
		if f == 6 {
			restore, tables = "ip6tables-restore", "ip6tables"
		}
		if err := run(ctx, Rules(c, f), restore, "--noflush"); err != nil {
			return fmt.Errorf("install ipv%d chains: %w", f, err)
		}
		check := append([]string{jump[0], jump[1], "-C"}, jump[2:]...)
		if err := run(ctx, "", tables, check...); err != nil {
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) {
				return fmt.Errorf("check ipv%d OUTPUT jump: %w", f, err)
			}
			add := append([]string{jump[0], jump[1], "-A"}, jump[2:]...)
			if err := run(ctx, "", tables, add...); err != nil {
				return fmt.Errorf("add ipv%d OUTPUT jump: %w", f, err)
			}
		}
	}
	return nil
}
