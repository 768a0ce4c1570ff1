package devcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// network is the cluster's private L3 fabric. One router namespace
// (<prefix>net) holds the gateway address, a /32 route per pod and the
// ClusterIP DNAT rules; each pod namespace is joined to it by a veth pair.
// Nothing is attached to the host's interfaces: the host only gets
// blackhole routes for the pod and Service CIDRs, so a packet for a pod or
// Service address can never leave the machine, whatever state the rules
// are in.
type network struct {
	prefix  string // e.g. "blst-ab12cd-"; every netns and /etc/netns dir starts with it
	podCIDR netip.Prefix
	svcCIDR netip.Prefix
	gateway netip.Addr // first address of podCIDR, on the router's loopback

	mu   sync.Mutex
	used map[netip.Addr]bool
	seq  int
}

func (n *network) routerNetns() string { return n.prefix + "net" }

// ipCmd runs ip(8) with a bounded time and returns its error with output.
func ipCmd(ctx context.Context, args ...string) error {
	return run(ctx, "ip", args...)
}

func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// runInput runs a command with stdin.
func runInput(ctx context.Context, input string, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(input)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// setup creates the router namespace and the host's blackhole routes.
func (n *network) setup(ctx context.Context) error {
	n.used = map[netip.Addr]bool{}
	for _, cidr := range []netip.Prefix{n.podCIDR, n.svcCIDR} {
		// A killed run with the same slot may have left its route behind.
		_ = ipCmd(ctx, "route", "del", "blackhole", cidr.String())
		if err := ipCmd(ctx, "route", "add", "blackhole", cidr.String()); err != nil {
			return fmt.Errorf("guard %s on the host: %w", cidr, err)
		}
	}
	r := n.routerNetns()
	steps := [][]string{
		{"netns", "add", r},
		{"-n", r, "link", "set", "lo", "up"},
		{"-n", r, "addr", "add", n.gateway.String() + "/32", "dev", "lo"},
	}
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			return err
		}
	}
	if err := run(ctx, "ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	// Forward only between pod veths: the router has no other interface
	// today, and this keeps it so if one ever appears.
	rules := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
		"-A FORWARD -i v+ -o v+ -j ACCEPT\nCOMMIT\n"
	if err := runInput(ctx, rules, "ip", "netns", "exec", r, "iptables-restore"); err != nil {
		return fmt.Errorf("router forward policy: %w", err)
	}
	return nil
}

// teardown removes what setup made; pods must be gone first. Best effort:
// it removes everything it can and returns every error.
func (n *network) teardown(ctx context.Context) error {
	var errs []error
	if err := ipCmd(ctx, "netns", "del", n.routerNetns()); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, err)
	}
	for _, cidr := range []netip.Prefix{n.podCIDR, n.svcCIDR} {
		if err := ipCmd(ctx, "route", "del", "blackhole", cidr.String()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// podNet is one pod's namespace and address.
type podNet struct {
	netns string
	veth  string // router side
	ip    netip.Addr
}

// allocate picks a free pod address in the node's block (one /24 per node,
// so an address shows which node it lives on).
func (n *network) allocate(nodeIndex int) (netip.Addr, int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	base := n.podCIDR.Addr().As4()
	n.seq++
	for host := 2; host < 255; host++ {
		a := netip.AddrFrom4([4]byte{base[0], base[1], byte(nodeIndex + 1), byte(host)})
		if !n.used[a] {
			n.used[a] = true
			return a, n.seq, nil
		}
	}
	return netip.Addr{}, 0, fmt.Errorf("node %d: no free pod address in %s", nodeIndex, n.podCIDR)
}

func (n *network) release(a netip.Addr) {
	n.mu.Lock()
	delete(n.used, a)
	n.mu.Unlock()
}

// addPod creates a pod namespace with one veth to the router, a /32 address
// and routes for the pod and Service CIDRs only: no default route, so the
// pod can reach other pods, Services and nothing else. The pod's sysctls
// are set in its namespace, as the kubelet sets them: the network ones
// (net.*), which are per network namespace; any other is refused.
func (n *network) addPod(ctx context.Context, nodeIndex int, files map[string]string, sysctls []corev1.Sysctl) (*podNet, error) {
	for _, s := range sysctls {
		if !strings.HasPrefix(s.Name, "net.") {
			return nil, fmt.Errorf("sysctl %s: the dev cluster sets only net.* sysctls, which are per pod network namespace", s.Name)
		}
	}
	ip, seq, err := n.allocate(nodeIndex)
	if err != nil {
		return nil, err
	}
	p := &podNet{netns: fmt.Sprintf("%sp%d", n.prefix, seq), veth: fmt.Sprintf("v%d", seq), ip: ip}
	r := n.routerNetns()
	gw := n.gateway.String()
	steps := [][]string{
		{"netns", "add", p.netns},
		{"-n", r, "link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.netns},
		{"-n", r, "link", "set", p.veth, "up"},
		{"-n", r, "route", "add", ip.String() + "/32", "dev", p.veth},
		{"-n", p.netns, "link", "set", "lo", "up"},
		{"-n", p.netns, "addr", "add", ip.String() + "/32", "dev", "eth0"},
		{"-n", p.netns, "link", "set", "eth0", "up"},
		{"-n", p.netns, "route", "add", gw, "dev", "eth0", "scope", "link"},
		{"-n", p.netns, "route", "add", n.podCIDR.String(), "via", gw, "dev", "eth0"},
		{"-n", p.netns, "route", "add", n.svcCIDR.String(), "via", gw, "dev", "eth0"},
	}
	for _, s := range sysctls {
		steps = append(steps, []string{"netns", "exec", p.netns, "sysctl", "-q", "-w", s.Name + "=" + s.Value})
	}
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			n.removePod(context.WithoutCancel(ctx), p)
			return nil, fmt.Errorf("pod network %s: %w", p.netns, err)
		}
	}
	// `ip netns exec` bind-mounts /etc/netns/<name>/<file> over /etc/<file>.
	dir := filepath.Join("/etc/netns", p.netns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		n.removePod(context.WithoutCancel(ctx), p)
		return nil, err
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			n.removePod(context.WithoutCancel(ctx), p)
			return nil, err
		}
	}
	return p, nil
}

// silence cuts a pod off without a word either way: the route to it
// becomes a blackhole route (which outlives the pod's veth: removing the
// veth takes only the routes through it), then its veth goes down, so
// not even the FIN or RST of its processes' sockets, when they are
// killed, leaves it.
func (n *network) silence(ctx context.Context, p *podNet) error {
	r := n.routerNetns()
	if err := ipCmd(ctx, "-n", r, "route", "replace", "blackhole", p.ip.String()+"/32"); err != nil {
		return err
	}
	return ipCmd(ctx, "-n", r, "link", "set", p.veth, "down")
}

// removePod deletes a pod's namespace (which deletes its veth pair and the
// route through it) and frees its address.
func (n *network) removePod(ctx context.Context, p *podNet) error {
	var errs []error
	if err := ipCmd(ctx, "netns", "del", p.netns); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, err)
	}
	// Deleting the namespace destroys eth0 and so its peer; this only
	// matters if the namespace was never created.
	_ = ipCmd(ctx, "-n", n.routerNetns(), "link", "del", p.veth)
	if err := os.RemoveAll(filepath.Join("/etc/netns", p.netns)); err != nil {
		errs = append(errs, err)
	}
	n.release(p.ip)
	return errors.Join(errs...)
}
