package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/xds" // the xds:/// resolver and xDS balancers, for the proxyless rows
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/discovery/files"
	ballastxds "github.com/ballast-dev/ballast/xds"
)

// Ballast's own modes that run as processes: the control plane (`ballast
// control`) serving the pods as one Service from a folder of YAML, and the
// sidecar (`ballast proxy`) in front of the client. They run the ballast
// binary given in Options.Binary; a row is pending while that binary lacks
// the command or no binary was given.

// proxyless is a grpc-go client in the benchmark dialling
// xds:///greeter.bench:50051, served by `ballast control` with the given
// xDS LB policy (round_robin, least_request or peak_ewma).
func proxyless(policy string) path { return proxylessPath{policy} }

type proxylessPath struct{ policy string }

func (p proxylessPath) Name() string { return "proxyless xDS " + p.policy }

func (p proxylessPath) Open(ctx context.Context, b *Bench, pods []*pod) (*route, error) {
	control, err := b.startControl(ctx, pods, p.policy)
	if err != nil {
		return nil, err
	}
	bootstrap, err := ballastxds.Bootstrap{Server: control.xds.String(), Pod: "bench-client", Namespace: benchNamespace}.JSON()
	if err != nil {
		control.proc.stop()
		return nil, err
	}
	builder, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		control.proc.stop()
		return nil, fmt.Errorf("xds bootstrap: %w", err)
	}
	return &route{
		Target:      fmt.Sprintf("xds:///%s.%s:%d", benchService, benchNamespace, benchPort),
		DialOptions: []grpc.DialOption{grpc.WithResolvers(builder)},
		Close:       control.proc.stop,
	}, nil
}

// sidecar is the sidecar proxy (ballast-proxy, or else `ballast proxy`)
// with an explicit listener for the client,
// sending every call to greeter.bench:50051 as the control plane (with the
// given xDS LB policy) describes it. Its CPU and memory are the proxy's
// alone; the control plane is not on the data path.
func sidecar(policy string) path { return sidecarPath{policy} }

type sidecarPath struct{ policy string }

func (p sidecarPath) Name() string {
	if p.policy == "round_robin" {
		return "sidecar"
	}
	return "sidecar " + p.policy
}

func (p sidecarPath) Open(ctx context.Context, b *Bench, pods []*pod) (_ *route, err error) {
	if err := b.hasCommand("proxy", "the sidecar proxy (issue 5)"); err != nil {
		return nil, err
	}
	control, err := b.startControl(ctx, pods, p.policy)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			control.proc.stop()
		}
	}()
	bin, args, name := b.opts.Binary, []string{"proxy"}, "ballast proxy"
	if b.opts.ProxyBinary != "" {
		bin, args, name = b.opts.ProxyBinary, nil, "ballast-proxy"
	}
	// ports: the client's listener, admin
	proc, ports, err := onFreePorts(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 2,
		func(ports []netip.AddrPort) (*process, error) {
			return startProcess(exec.Command(bin, append(args,
				"--outbound", fmt.Sprintf("%s=%s.%s:%d", ports[0], benchService, benchNamespace, benchPort),
				"--xds-address", control.xds.String(),
				"--node-id", "ballast~bench-sidecar."+benchNamespace,
				"--admin-address", ports[1].String())...), name)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitServing(ctx, "passthrough:///"+ports[0].String(), proc, 15*time.Second)
		})
	if err != nil {
		return nil, fmt.Errorf("start the sidecar proxy: %w", err)
	}
	return &route{Target: "passthrough:///" + ports[0].String(), Proxy: proc, Close: func() { proc.stop(); control.proc.stop() }}, nil
}

// hasCommand says whether the ballast binary has a subcommand; if not, the
// row is pending on what would bring it.
func (b *Bench) hasCommand(name, what string) error {
	if b.opts.Binary == "" {
		return &unavailable{Status: "pending", Reason: "no ballast binary to run `ballast " + name + "` (run as `ballast bench`)"}
	}
	b.commandsMu.Lock()
	defer b.commandsMu.Unlock()
	if b.commands == nil {
		b.commands = map[string]bool{}
	}
	ok, seen := b.commands[name]
	if !seen {
		ok = exec.Command(b.opts.Binary, name, "--help").Run() == nil
		b.commands[name] = ok
	}
	if !ok {
		return &unavailable{Status: "pending", Reason: fmt.Sprintf("this ballast binary has no `%s` command: %s has not landed yet", name, what)}
	}
	return nil
}

// control is a running `ballast control`.
type control struct {
	xds  netip.AddrPort
	proc *process
}

// startControl runs `ballast control` over a folder holding the pods as the
// Service greeter.bench, and waits until it says it is ready.
func (b *Bench) startControl(ctx context.Context, pods []*pod, policy string) (*control, error) {
	dir, err := os.MkdirTemp(b.dir, "control-")
	if err != nil {
		return nil, err
	}
	manifest, err := serviceManifest(pods)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "greeter.yaml"), manifest, 0o644); err != nil {
		return nil, err
	}
	// ports: xDS, HTTP
	proc, ports, err := onFreePorts(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 2,
		func(ports []netip.AddrPort) (*process, error) {
			return b.startControlProcess("--files", dir,
				"--xds-address", ports[0].String(), "--http-address", ports[1].String(),
				"--default-lb-policy", policy)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitHTTP(ctx, "http://"+ports[1].String()+"/readyz", proc, 15*time.Second)
		})
	if err != nil {
		return nil, fmt.Errorf("start ballast control: %w", err)
	}
	return &control{xds: ports[0], proc: proc}, nil
}

// startControlProcess runs the control plane with args: ballast-control
// when Options.ControlBinary names it, else `ballast control`.
func (b *Bench) startControlProcess(args ...string) (*process, error) {
	if b.opts.ControlBinary != "" {
		return startProcess(exec.Command(b.opts.ControlBinary, args...), "ballast-control")
	}
	if err := b.hasCommand("control", "the xDS control plane (issue 4)"); err != nil {
		return nil, err
	}
	return startProcess(exec.Command(b.opts.Binary, append([]string{"control"}, args...)...), "ballast control")
}

// waitHTTP polls url until it answers 200, the process exits or the wait
// is over.
func waitHTTP(ctx context.Context, url string, proc *process, wait time.Duration) error {
	return proc.waitReady(ctx, wait, 50*time.Millisecond, "ready at "+url, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	})
}

// serviceManifest is the pods as the Service greeter.bench and the
// EndpointSlices the endpoint slice controller would write.
func serviceManifest(pods []*pod) ([]byte, error) {
	service := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: benchService, Namespace: benchNamespace},
		Spec: corev1.ServiceSpec{
			ClusterIP: "127.0.0.10",
			Ports:     []corev1.ServicePort{{Name: "grpc", Port: benchPort, TargetPort: intstr.FromString("grpc")}},
		},
	}
	eps := make([]files.Pod, len(pods))
	for i, p := range pods {
		eps[i] = files.Pod{Name: p.Name, Addr: p.Addr}
	}
	return files.Manifest(service, "grpc", eps)
}
