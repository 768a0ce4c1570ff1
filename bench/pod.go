package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
)

// GreeterCommand makes the command that runs one greeter pod named pod on
// addr, holding each call for delay. Pods are processes of their own so
// that their CPU is never counted with a proxy's or the load generator's.
type GreeterCommand func(addr, pod string, delay time.Duration) *exec.Cmd

// BinaryGreeter runs pods as `<binary> greeter serve`, the ballast binary.
func BinaryGreeter(binary string) GreeterCommand {
	return func(addr, pod string, delay time.Duration) *exec.Cmd {
		cmd := exec.Command(binary, "greeter", "serve", "--address", addr, "--delay", delay.String())
		cmd.Env = append(os.Environ(), "POD_NAME="+pod)
		return cmd
	}
}

// Pod is a running greeter process.
type Pod struct {
	Name  string
	Addr  netip.AddrPort
	Delay time.Duration
	proc  *process
}

// PodSpec says what pod to start.
type PodSpec struct {
	Name  string
	Delay time.Duration
}

// startPods starts one greeter per spec, pod i on 127.0.0.(20+i), and
// waits until each answers a call. On error the ones started are stopped.
func startPods(ctx context.Context, greet GreeterCommand, specs []PodSpec) (_ []*Pod, err error) {
	var pods []*Pod
	defer func() {
		if err != nil {
			stopPods(pods)
		}
	}()
	for i, s := range specs {
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(20 + i)})
		p, err := startPod(ctx, greet, ip, s)
		if err != nil {
			return nil, err
		}
		pods = append(pods, p)
	}
	return pods, nil
}

func startPod(ctx context.Context, greet GreeterCommand, ip netip.Addr, s PodSpec) (*Pod, error) {
	proc, ports, err := onFreePorts(ip, 1,
		func(ports []netip.AddrPort) (*process, error) {
			return startProcess(greet(ports[0].String(), s.Name, s.Delay), "greeter "+s.Name)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitServing(ctx, "passthrough:///"+ports[0].String(), proc, 10*time.Second)
		})
	if err != nil {
		return nil, fmt.Errorf("start pod %s: %w", s.Name, err)
	}
	return &Pod{Name: s.Name, Addr: ports[0], Delay: s.Delay, proc: proc}, nil
}

func stopPods(pods []*Pod) {
	for _, p := range pods {
		p.proc.stop()
	}
}

func podNames(pods []*Pod) []string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Name
	}
	return names
}

func podAddrs(pods []*Pod) []netip.AddrPort {
	addrs := make([]netip.AddrPort, len(pods))
	for i, p := range pods {
		addrs[i] = p.Addr
	}
	return addrs
}

// freePort asks the kernel for a free port on ip.
func freePort(ip netip.Addr) (netip.AddrPort, error) {
	lis, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("find a free port on %s: %w", ip, err)
	}
	defer lis.Close()
	return netip.MustParseAddrPort(lis.Addr().String()), nil
}

// onFreePorts starts a child process on n free ports of ip (start) and
// waits until it serves (ready). A port the kernel picked can be taken by
// someone else before the child binds it, so a child that exits before it
// is ready is tried again on other ports, three tries in all; one that
// runs but never serves is not (another port will not help). A child that
// never became ready is stopped.
func onFreePorts(ip netip.Addr, n int, start func(ports []netip.AddrPort) (*process, error), ready func(*process, []netip.AddrPort) error) (*process, []netip.AddrPort, error) {
	var lastErr error
	for range 3 {
		ports := make([]netip.AddrPort, n)
		for i := range ports {
			var err error
			if ports[i], err = freePort(ip); err != nil {
				return nil, nil, err
			}
		}
		proc, err := start(ports)
		if err != nil {
			return nil, nil, err
		}
		if lastErr = ready(proc, ports); lastErr == nil {
			return proc, ports, nil
		}
		proc.stop()
		if !errors.Is(lastErr, errExited) {
			break
		}
	}
	return nil, nil, lastErr
}

// waitServing polls target with SayHello until one succeeds, the process
// exits or the wait is over.
func waitServing(ctx context.Context, target string, proc *process, wait time.Duration) error {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", target, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	client := pb.NewGreeterClient(conn)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		callCtx, callCancel := context.WithTimeout(ctx, time.Second)
		_, err = client.SayHello(callCtx, &pb.HelloRequest{Name: "ready"}, grpc.WaitForReady(false))
		callCancel()
		if err == nil {
			return nil
		}
		select {
		case <-proc.exited:
			return fmt.Errorf("%s %w before serving: %v; output: %s", proc.name, errExited, proc.err, proc.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not serving on %s after %s: %w; its last output: %s", proc.name, target, wait, err, proc.tail())
		case <-tick.C:
		}
	}
}

// process is a child the benchmark started and must stop: it runs in its
// own process group, so stop reaches its children too (nginx's worker),
// and it is killed if the benchmark dies.
type process struct {
	name   string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	err    error
}

func startProcess(cmd *exec.Cmd, name string) (*process, error) {
	out := &syncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) output() string { return p.out.String() }

// tail is the end of the process's output, for an error message.
func (p *process) tail() string {
	out := strings.TrimSpace(p.output())
	if r := []rune(out); len(r) > 600 {
		return "…" + string(r[len(r)-600:])
	}
	if out == "" {
		return "(none)"
	}
	return out
}

// errExited says a child process ended before it was ready, which is
// worth a retry on another port; a child that runs but never serves is not.
var errExited = errors.New("exited")

// stop asks the process group to terminate, and kills it if it has not
// within five seconds.
func (p *process) stop() {
	pgid := p.cmd.Process.Pid
	select {
	case <-p.exited:
		syscall.Kill(-pgid, syscall.SIGKILL) // any child it left behind
		return
	default:
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.exited
}

// syncBuffer keeps a child's output for error messages, bounded to its
// last 64 KiB.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - 64<<10; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
