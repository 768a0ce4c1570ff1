//go:build linux

package proxy

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/proxy/iptables"
)

// The netns test runs this test binary three times over: the parent makes a
// network namespace, a child inside it installs the rules and runs the
// proxy (as root, the excluded uid) and the backends, and a grandchild runs
// the unmodified client as another uid, so only its connections are
// redirected. All traffic stays inside the namespace.
const (
	envInside = "BALLAST_NETNS_INSIDE"
	envClient = "BALLAST_NETNS_CLIENT"
	envBinary = "BALLAST_NETNS_BINARY"

	netnsClusterIP = "10.255.0.10:50051" // a Service's ClusterIP: nothing listens there
	netnsEcho      = "10.255.0.1:7777"   // a non-Service TCP server in the namespace
	netnsClientUID = 65534
)

// needNetns skips t unless this process may make network namespaces and
// has the tools to fill them with links and iptables rules.
func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (tools/deps.sh installs iptables)", tool)
		}
	}
}

// commandRunner returns a function that runs a command and fails t, with
// the command's output, if it fails.
func commandRunner(ctx context.Context, t *testing.T) func(args ...string) {
	return func(args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// addNetns makes the network namespace name, with its loopback up, and
// deletes it when the test ends.
func addNetns(t *testing.T, run func(args ...string), name string) {
	t.Helper()
	run("ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "-n", name, "link", "set", "lo", "up")
}

func TestTransparentNetns(t *testing.T) {
	if os.Getenv(envInside) != "" || os.Getenv(envClient) != "" {
		t.Skip("runs in the parent only")
	}
	needNetns(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	run := commandRunner(ctx, t)
	ns := fmt.Sprintf("ballast-test-%d-%d", os.Getpid(), rand.Uint32())
	addNetns(t, run, ns)
	// A test subnet on the namespace's own loopback: 10.255.0.1 is local,
	// the rest of the /24 routes to lo, so nothing can leave.
	run("ip", "-n", ns, "addr", "add", "10.255.0.1/24", "dev", "lo")

	runInside(ctx, t, ns, "TestNetnsInside", envInside+"=1")
}

// runInside runs test, from a copy of this test binary, in the network
// namespace ns with env added (and envBinary naming the copy, for the
// processes it starts), and fails unless it passes. The copy is readable
// and executable by every uid: a client may run as an unprivileged one.
func runInside(ctx context.Context, t *testing.T, ns, test string, env ...string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ballast-netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "proxy.test")
	copyFile(t, must(os.Executable()), bin)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, bin, "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), env...), envBinary+"="+bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s in namespace %s: %v\n%s", test, ns, err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+test) {
		t.Fatalf("%s did not run:\n%s", test, out)
	}
	t.Logf("%s in namespace %s:\n%s", test, ns, out)
}

// TestNetnsInside runs inside the namespace as root.
func TestNetnsInside(t *testing.T) {
	if os.Getenv(envInside) == "" {
		t.Skip("run by TestTransparentNetns")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cfg := iptables.Config{
		ProxyPort:    15001,
		ProxyUID:     0, // this process: root
		IncludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.255.0.0/24")},
		ExcludePorts: []int{9999},
	}
	for range 2 { // idempotent
		if err := iptables.Apply(ctx, cfg, nil); err != nil {
			t.Fatal(err)
		}
	}
	saved, err := exec.CommandContext(ctx, "iptables-save", "-t", "nat").Output()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(saved), "-A OUTPUT -p tcp -j BALLAST_OUTPUT"); n != 1 {
		t.Fatalf("after applying twice the OUTPUT jump appears %d times:\n%s", n, saved)
	}
	if n := strings.Count(string(saved), "-j REDIRECT --to-ports 15001"); n != 1 {
		t.Fatalf("after applying twice the REDIRECT rule appears %d times:\n%s", n, saved)
	}

	target, resolve := staticTarget(startGreeters(t, 3))
	echoLis, err := net.Listen("tcp", netnsEcho)
	if err != nil {
		t.Fatal(err)
	}
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		for {
			c, err := echoLis.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() { echoLis.Close(); <-echoDone })

	lis, err := net.Listen("tcp", "127.0.0.1:15001")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{
		Transparent:  lis,
		Destinations: StaticDestinations{netip.MustParseAddrPort(netnsClusterIP): target},
		Resolvers:    []resolver.Builder{resolve},
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, p)

	client := exec.CommandContext(ctx, os.Getenv(envBinary), "-test.run=^TestNetnsClient$", "-test.v", "-test.count=1")
	client.Env = append(os.Environ(), envClient+"=1")
	client.Env = slicesDelete(client.Env, envInside+"=1")
	client.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: netnsClientUID, Gid: netnsClientUID}}
	out, err := client.CombinedOutput()
	t.Logf("client (uid %d):\n%s", netnsClientUID, out)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestNetnsClient") {
		t.Fatal("client test did not pass")
	}
	if got := metricValue(p.metrics.passthrough.WithLabelValues(reasonUnknownDestination)); got != 1 {
		t.Errorf("passthrough{unknown_destination} = %v, want 1 (the echo connection)", got)
	}
}

// TestNetnsClient is the unmodified client: it dials the ClusterIP with a
// plain target and knows nothing of the proxy.
func TestNetnsClient(t *testing.T) {
	if os.Getenv(envClient) == "" {
		t.Skip("run by TestNetnsInside")
	}
	conn := dial(t, "passthrough:///"+netnsClusterIP)
	if pods := spread(t, conn, 3, 12); !even(pods, 3, 12) {
		t.Fatalf("12 calls over one connection to the ClusterIP reached %v, want 4 on each of 3 pods", pods)
	}
	c, err := net.DialTimeout("tcp", netnsEcho, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "ping")
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("echo through passthrough: %q, %v", got, err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func slicesDelete(env []string, kv string) []string {
	out := env[:0:0]
	for _, e := range env {
		if e != kv {
			out = append(out, e)
		}
	}
	return out
}
