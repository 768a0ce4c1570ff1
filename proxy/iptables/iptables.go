// Package iptables writes the netfilter rules that send a pod's TCP
// connections to the Ballast sidecar: `ballast proxy init`, run once per pod
// as an init container in the pod's network namespace.
//
// Outbound TCP in the nat table's OUTPUT chain jumps to BALLAST_OUTPUT,
// which returns early for the proxy's own traffic (by uid, so the proxy's
// upstream connections are not captured again), for loopback and for the
// excluded ports and CIDRs, and sends the rest to BALLAST_REDIRECT, which
// REDIRECTs it to the proxy's port. The proxy then reads the original
// destination with SO_ORIGINAL_DST.
//
// Inbound capture is optional, as istio-iptables does it: incoming TCP in
// PREROUTING jumps to BALLAST_INBOUND, which returns early for the proxy's
// own ports and the excluded ones and sends the app's ports (or all) to
// BALLAST_IN_REDIRECT, which REDIRECTs them to the proxy's inbound port.
// The proxy then connects to the app at the original destination, the
// pod's own address: that connection leaves through OUTPUT as the proxy's
// uid (so BALLAST_OUTPUT returns it) and, being already tracked, is not
// seen by PREROUTING's nat rules when it loops back in, so it is not
// captured again. Connections the app makes to itself over loopback are
// not captured either, for the same reason.
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
	OutputChain          = "BALLAST_OUTPUT"
	RedirectChain        = "BALLAST_REDIRECT"
	InboundChain         = "BALLAST_INBOUND"
	InboundRedirectChain = "BALLAST_IN_REDIRECT"
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

	// InboundPort is where the proxy's inbound listener accepts; needed
	// when anything inbound is captured.
	InboundPort int
	// InboundPorts are the app's ports whose incoming connections go to
	// InboundPort; InboundAll captures every port instead (Istio's "*").
	// Neither captures nothing inbound.
	InboundPorts []int
	InboundAll   bool
	// ExcludeInboundPorts are never captured inbound. The proxy's own
	// ports (ProxyPort, InboundPort, AdminPort) never are either.
	ExcludeInboundPorts []int
	// AdminPort is the proxy's readiness and metrics port (0: none).
	AdminPort int
}

// Inbound reports whether c captures any inbound traffic.
func (c Config) Inbound() bool { return c.InboundAll || len(c.InboundPorts) > 0 }

// proxyPorts are the proxy's own listening ports, never captured inbound.
func (c Config) proxyPorts() []int {
	var ports []int
	for _, p := range []int{c.ProxyPort, c.InboundPort, c.AdminPort} {
		if p != 0 && !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports
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
	}{
		{"include-ports", c.IncludePorts}, {"exclude-ports", c.ExcludePorts},
		{"inbound-ports", c.InboundPorts}, {"exclude-inbound-ports", c.ExcludeInboundPorts},
	} {
		for _, p := range list.ports {
			if p < 1 || p > 65535 {
				return fmt.Errorf("%s: port %d: want 1-65535", list.name, p)
			}
		}
	}
	if slices.Contains(c.IncludePorts, c.ProxyPort) {
		return fmt.Errorf("include-ports: %d is the proxy's own port; capturing it would loop", c.ProxyPort)
	}
	if c.AdminPort < 0 || c.AdminPort > 65535 {
		return fmt.Errorf("admin port %d: want 0 (none) or 1-65535", c.AdminPort)
	}
	if !c.Inbound() {
		return nil
	}
	if c.InboundPort < 1 || c.InboundPort > 65535 {
		return fmt.Errorf("inbound port %d: want 1-65535 when inbound ports are captured", c.InboundPort)
	}
	if c.InboundPort == c.ProxyPort {
		return fmt.Errorf("inbound port %d is also the outbound proxy port: the proxy could not tell the directions apart", c.InboundPort)
	}
	for _, p := range c.InboundPorts {
		if slices.Contains(c.proxyPorts(), p) {
			return fmt.Errorf("inbound-ports: %d is one of the proxy's own ports; capturing it would loop", p)
		}
	}
	return nil
}

// Family is an IP version: 4 for iptables, 6 for ip6tables.
type Family int

// Rules returns the iptables-restore input (nat table) for one family:
// the chains, declared so that restoring flushes them first (the inbound
// ones only when inbound is captured). The jumps from OUTPUT and
// PREROUTING are added separately by Apply, only when missing, so applying
// twice leaves one of each.
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
	if c.Inbound() {
		inboundRules(c, line)
	}
	line("COMMIT")
	return b.String()
}

// inboundRules are the PREROUTING side: exclusions first, then the app's
// ports (or everything) to the inbound redirect.
func inboundRules(c Config, line func(string, ...any)) {
	line(":%s - [0:0]", InboundChain)
	line(":%s - [0:0]", InboundRedirectChain)
	line("-A %s -p tcp -j REDIRECT --to-ports %d", InboundRedirectChain, c.InboundPort)
	exclude := c.ExcludeInboundPorts
	if c.InboundAll {
		// With a port list the proxy's ports are never in it (Validate);
		// with everything they must be skipped, or the proxy's own
		// listeners (say the admin port the kubelet probes) would loop.
		exclude = append(c.proxyPorts(), exclude...)
	}
	for _, ports := range chunks(exclude) {
		line("-A %s -p tcp %s -j RETURN", InboundChain, portMatch(ports))
	}
	if c.InboundAll {
		line("-A %s -p tcp -j %s", InboundChain, InboundRedirectChain)
		return
	}
	for _, ports := range chunks(c.InboundPorts) {
		line("-A %s -p tcp %s -j %s", InboundChain, portMatch(ports), InboundRedirectChain)
	}
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

// jump is the OUTPUT rule that enters Ballast's outbound chain;
// inboundJump the PREROUTING rule that enters its inbound one.
var (
	jump        = []string{"-t", "nat", "OUTPUT", "-p", "tcp", "-j", OutputChain}
	inboundJump = []string{"-t", "nat", "PREROUTING", "-p", "tcp", "-j", InboundChain}
)

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
// chains are rewritten whole and the jumps are added only when missing. A
// config without inbound capture removes any inbound rules an earlier one
// left.
func Apply(ctx context.Context, c Config, run Runner) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if run == nil {
		run = Exec
	}
	for _, f := range families(c.IPv6) {
		restore, _ := tools(f)
		if err := run(ctx, Rules(c, f), restore, "--noflush"); err != nil {
			return fmt.Errorf("install ipv%d chains: %w", f, err)
		}
		if err := ensureJump(ctx, run, f, jump); err != nil {
			return err
		}
		if c.Inbound() {
			if err := ensureJump(ctx, run, f, inboundJump); err != nil {
				return err
			}
			continue
		}
		if err := removeChain(ctx, run, f, inboundJump, InboundChain, InboundRedirectChain); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes every rule and chain Apply installs, in both families
// when ipv6 is set. Removing what is not there is not an error, so Remove
// is idempotent too.
func Remove(ctx context.Context, ipv6 bool, run Runner) error {
	if run == nil {
		run = Exec
	}
	for _, f := range families(ipv6) {
		if err := removeChain(ctx, run, f, inboundJump, InboundChain, InboundRedirectChain); err != nil {
			return err
		}
		if err := removeChain(ctx, run, f, jump, OutputChain, RedirectChain); err != nil {
			return err
		}
	}
	return nil
}

func families(ipv6 bool) []Family {
	if ipv6 {
		return []Family{4, 6}
	}
	return []Family{4}
}

func tools(f Family) (restore, tables string) {
	if f == 6 {
		return "ip6tables-restore", "ip6tables"
	}
	return "iptables-restore", "iptables"
}

// rule turns a jump (table, chain, match...) into an iptables command
// line with op (-C, -A, -D).
func rule(j []string, op string) []string {
	return append([]string{j[0], j[1], op}, j[2:]...)
}

// absent says whether err is iptables exiting with status 1 (the rule or
// chain is not there) rather than failing otherwise (say 4: the xtables
// lock, or a missing kernel module).
func absent(err error) bool {
	var exitErr *exec.ExitError
	return errors.As(err, &exitErr) && exitErr.ExitCode() == 1
}

func ensureJump(ctx context.Context, run Runner, f Family, j []string) error {
	_, tables := tools(f)
	if err := run(ctx, "", tables, rule(j, "-C")...); err != nil {
		if !absent(err) {
			return fmt.Errorf("check ipv%d %s jump: %w", f, j[2], err)
		}
		if err := run(ctx, "", tables, rule(j, "-A")...); err != nil {
			return fmt.Errorf("add ipv%d %s jump: %w", f, j[2], err)
		}
	}
	return nil
}

// removeChain deletes the jump j (every copy) and then flushes and deletes
// chains, skipping what does not exist.
func removeChain(ctx context.Context, run Runner, f Family, j []string, chains ...string) error {
	_, tables := tools(f)
	// A jump to a chain that does not exist cannot be there, and deleting
	// it would fail differently (status 2): look for the chain first.
	if err := run(ctx, "", tables, "-t", "nat", "-S", chains[0]); err != nil {
		if absent(err) {
			return nil
		}
		return fmt.Errorf("list ipv%d chain %s: %w", f, chains[0], err)
	}
	for range 100 { // more copies than that were not ours
		if err := run(ctx, "", tables, rule(j, "-D")...); err != nil {
			if !absent(err) {
				return fmt.Errorf("delete ipv%d %s jump: %w", f, j[2], err)
			}
			break
		}
	}
	for _, op := range []string{"-F", "-X"} {
		for _, chain := range chains {
			if err := run(ctx, "", tables, "-t", "nat", op, chain); err != nil && !absent(err) {
				return fmt.Errorf("remove ipv%d chain %s: %w", f, chain, err)
			}
		}
	}
	return nil
}
