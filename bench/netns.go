package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// A netns is a network namespace the benchmark made, for the rows that
// need one of their own: the transparent sidecar, whose iptables rules
// capture every TCP connection of the namespace. Its loopback is up and
// also holds netnsSubnet, so a ClusterIP there is local to the namespace
// and nothing it dials can leave it.
type netns struct {
	name string
}

const (
	// netnsPrefix starts the name of every namespace the benchmark makes;
	// the pid of the benchmark that made it follows, so a later run can
	// tell its own from those a killed run left.
	netnsPrefix = "ballast-bench-"
	// netnsSubnet is added to the namespace's loopback: the Service's
	// ClusterIP lives there, outside 127.0.0.0/8, which the capture rules
	// leave alone.
	netnsSubnet    = "10.255.0.1/24"
	netnsClusterIP = "10.255.0.10"
	netnsCIDR      = "10.255.0.0/24"
	// netnsProxyUID is the uid the transparent sidecar runs as: its own
	// connections are not captured, the benchmark's (root) are.
	netnsProxyUID = 1337
)

var netnsSeq atomic.Int64

// needNetns says why this process cannot make network namespaces with
// capture rules, as an *unavailable; nil when it can.
func needNetns() error {
	if os.Geteuid() != 0 {
		return &unavailable{Status: "unavailable", Reason: "the transparent sidecar needs root, to make a network namespace with iptables rules"}
	}
	for _, tool := range []string{"ip", "iptables-restore", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			return &unavailable{Status: "unavailable", Reason: fmt.Sprintf("the transparent sidecar needs %s (tools/deps.sh installs it)", tool)}
		}
	}
	return nil
}

// newNetns makes a namespace with its loopback up and netnsSubnet on it.
func newNetns(ctx context.Context) (_ *netns, err error) {
	if err := needNetns(); err != nil {
		return nil, err
	}
	n := &netns{name: fmt.Sprintf("%s%d-%d", netnsPrefix, os.Getpid(), netnsSeq.Add(1))}
	if err := run(ctx, "ip", "netns", "add", n.name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if err := run(ctx, "ip", "-n", n.name, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	if err := run(ctx, "ip", "-n", n.name, "addr", "add", netnsSubnet, "dev", "lo"); err != nil {
		return nil, err
	}
	return n, nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// command runs cmd inside the namespace (`ip netns exec` execs it, so the
// process's pid is the command's own).
func (n *netns) command(cmd *exec.Cmd) *exec.Cmd {
	in := exec.Command("ip", append([]string{"netns", "exec", n.name, cmd.Path}, cmd.Args[1:]...)...)
	in.Env, in.Dir = cmd.Env, cmd.Dir
	return in
}

// dial opens a TCP connection from inside the namespace: the socket is
// made on a thread moved into it, and keeps the namespace it was made in.
// The thread moves back before it is unlocked. It must not end instead:
// the children the benchmark started from it (Pdeathsig) would be killed,
// and the main thread cannot end at all.
func (n *netns) dial(ctx context.Context, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer home.Close()
	target, err := os.Open(filepath.Join("/run/netns", n.name))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter network namespace %s: %w", n.name, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if serr := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); serr != nil {
		// Left locked, the thread ends with its goroutine, not in the
		// wrong namespace.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("leave network namespace %s: %w", n.name, serr)
	}
	runtime.UnlockOSThread()
	return conn, err
}

// dialOptions make a gRPC client dial from inside the namespace; none for
// a nil namespace (this process's own).
func (n *netns) dialOptions() []grpc.DialOption {
	if n == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithContextDialer(n.dial)}
}

// httpClient is an HTTP client that dials from inside the namespace; the
// default client for a nil one.
func (n *netns) httpClient() *http.Client {
	if n == nil {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return n.dial(ctx, addr) },
	}}
}

// close kills what still runs in the namespace and deletes it, its
// iptables rules with it.
func (n *netns) close() error {
	killNetns(n.name)
	return run(context.Background(), "ip", "netns", "del", n.name)
}

func killNetns(name string) {
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// sweepNetns deletes the namespaces a benchmark that is no longer running
// left behind (killed before it could), with what still runs in them. It
// returns their names.
func sweepNetns() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var swept []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // not one of ours, or its benchmark still runs
		}
		killNetns(e.Name())
		if err := run(context.Background(), "ip", "netns", "del", e.Name()); err != nil {
			return swept, err
		}
		swept = append(swept, e.Name())
	}
	return swept, nil
}
