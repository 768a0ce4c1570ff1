package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
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

// pod is a running greeter process.
type pod struct {
	Name  string
	Addr  netip.AddrPort
	Delay time.Duration
	proc  *process
}

// podSpec says what pod to start.
type podSpec struct {
	Name  string
	Delay time.Duration
}

// startPods starts one greeter per spec, pod i on 127.0.0.(20+i), and
// waits until each answers a call. On error the ones started are stopped.
func startPods(ctx context.Context, greet GreeterCommand, specs []podSpec) ([]*pod, error) {
	return startPodsIn(ctx, nil, greet, specs)
}

// startPodsIn is startPods inside ns (nil: this process's namespace).
func startPodsIn(ctx context.Context, ns *netns, greet GreeterCommand, specs []podSpec) (_ []*pod, err error) {
	var pods []*pod
	defer func() {
		if err != nil {
			stopPods(pods)
		}
	}()
	for i, s := range specs {
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(20 + i)})
		p, err := startPod(ctx, ns, greet, ip, s)
		if err != nil {
			return nil, err
		}
		pods = append(pods, p)
	}
	return pods, nil
}

func startPod(ctx context.Context, ns *netns, greet GreeterCommand, ip netip.Addr, s podSpec) (*pod, error) {
	proc, ports, err := onFreePorts(ip, 1,
		func(ports []netip.AddrPort) (*process, error) {
			cmd := greet(ports[0].String(), s.Name, s.Delay)
			if ns != nil {
				cmd = ns.command(cmd)
			}
			return startProcess(cmd, "greeter "+s.Name)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitServing(ctx, "passthrough:///"+ports[0].String(), proc, 10*time.Second, ns.dialOptions()...)
		})
	if err != nil {
		return nil, fmt.Errorf("start pod %s: %w", s.Name, err)
	}
	return &pod{Name: s.Name, Addr: ports[0], Delay: s.Delay, proc: proc}, nil
}

func stopPods(pods []*pod) {
	for _, p := range pods {
		p.proc.stop()
	}
}

func podNames(pods []*pod) []string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Name
	}
	return names
}

func podAddrs(pods []*pod) []netip.AddrPort {
	addrs := make([]netip.AddrPort, len(pods))
	for i, p := range pods {
		addrs[i] = p.Addr
	}
	return addrs
}

// waitServing polls target with SayHello until one succeeds, the process
// exits or the wait is over.
func waitServing(ctx context.Context, target string, proc *process, wait time.Duration, opts ...grpc.DialOption) error {
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		return fmt.Errorf("dial %s: %w", target, err)
	}
	defer conn.Close()
	client := pb.NewGreeterClient(conn)
	return proc.waitReady(ctx, wait, 20*time.Millisecond, "serving on "+target, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := client.SayHello(ctx, &pb.HelloRequest{Name: "ready"}, grpc.WaitForReady(false))
		return err
	})
}
