package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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
	control, err := b.startControl(ctx, nil, pods, p.policy, defaultClusterIP, nil)
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

// capture is how the client's connection reaches the sidecar.
type capture int

const (
	// explicitListener: the proxy listens for the client on a port of its
	// own (--outbound ADDR=TARGET), and the client dials that port.
	explicitListener capture = iota
	// iptablesCapture: as in an injected pod, the client dials the
	// Service's ClusterIP and `ballast proxy init`'s rules redirect the
	// connection to the proxy's transparent listener, in a network
	// namespace the benchmark makes for it.
	iptablesCapture
)

// sidecar is the sidecar proxy (ballast-proxy, or else `ballast proxy`)
// with an explicit listener for the client, sending every call to
// greeter.bench:50051 as the control plane (with the given xDS LB policy)
// describes it. Its CPU and memory are the proxy's alone; the control
// plane is not on the data path.
func sidecar(policy string) path { return sidecarPath{policy: policy, capture: explicitListener} }

// routedSidecar is sidecar("round_robin") with a GRPCRoute of five rules
// attached to the Service (routeManifest): what per-call routing costs.
func routedSidecar() path {
	return sidecarPath{policy: "round_robin", capture: explicitListener, routed: true}
}

// transparentSidecar is the sidecar as injected pods run it: the client
// dials the ClusterIP, iptables hands the connection to the proxy. It
// needs root; its pods, control plane and proxy run inside the namespace.
func transparentSidecar(policy string) path {
	return sidecarPath{policy: policy, capture: iptablesCapture}
}

type sidecarPath struct {
	policy  string
	capture capture
	routed  bool
}

func (p sidecarPath) Name() string {
	if p.routed {
		return routedSidecarName
	}
	return sidecarName(p.policy, p.capture)
}

// routedSidecarName is the row of routedSidecar.
var routedSidecarName = "sidecar, 5-rule GRPCRoute (explicit listener)"

// sidecarName is the row of the sidecar with an LB policy and a capture.
func sidecarName(policy string, c capture) string {
	name := "sidecar"
	if policy != "round_robin" {
		name += " " + policy
	}
	if c == iptablesCapture {
		return name + " (iptables)"
	}
	return name + " (explicit listener)"
}

// proxyCommand is the binary and leading arguments of the sidecar.
func (b *Bench) proxyCommand() (bin string, args []string, name string) {
	if b.opts.ProxyBinary != "" {
		return b.opts.ProxyBinary, nil, "ballast-proxy"
	}
	return b.opts.Binary, []string{"proxy"}, "ballast proxy"
}

func (p sidecarPath) Open(ctx context.Context, b *Bench, pods []*pod) (_ *route, err error) {
	if err := b.hasCommand("proxy", "the sidecar proxy (issue 5)"); err != nil {
		return nil, err
	}
	if p.capture == iptablesCapture {
		return p.openTransparent(ctx, b, pods)
	}
	var routes []byte
	if p.routed {
		routes = routeManifest()
	}
	control, err := b.startControl(ctx, nil, pods, p.policy, defaultClusterIP, routes)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			control.proc.stop()
		}
	}()
	proc, ports, err := b.startSidecar(ctx, control)
	if err != nil {
		return nil, err
	}
	return &route{Target: "passthrough:///" + ports[0].String(), Proxy: proc, Close: func() { proc.stop(); control.proc.stop() }}, nil
}

// startSidecar runs the sidecar with an explicit listener for the client
// (ports[0]) and its admin port (ports[1]), fed by control; each of the
// other Services of the bench namespace gets an explicit listener of its
// own (ports[2:], in order).
func (b *Bench) startSidecar(ctx context.Context, control *control, others ...string) (*process, []netip.AddrPort, error) {
	bin, args, name := b.proxyCommand()
	proc, ports, err := onFreePorts(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 2+len(others),
		func(ports []netip.AddrPort) (*process, error) {
			args := append(slices.Clone(args),
				"--outbound", fmt.Sprintf("%s=%s.%s:%d", ports[0], benchService, benchNamespace, benchPort),
				"--xds-address", control.xds.String(),
				"--node-id", "ballast~bench-sidecar."+benchNamespace,
				"--admin-address", ports[1].String())
			for i, svc := range others {
				args = append(args, "--outbound", fmt.Sprintf("%s=%s.%s:%d", ports[2+i], svc, benchNamespace, benchPort))
			}
			return startProcess(exec.Command(bin, args...), name)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitServing(ctx, "passthrough:///"+ports[0].String(), proc, 15*time.Second)
		})
	if err != nil {
		return nil, nil, fmt.Errorf("start the sidecar proxy: %w", err)
	}
	return proc, ports, nil
}

// openTransparent makes a network namespace and runs in it what an
// injected client pod has around it: the pods (the same greeters, started
// again inside), the control plane, `ballast proxy init`'s rules and the
// proxy as uid netnsProxyUID. The benchmark's client dials the ClusterIP
// from inside the namespace, as root, so its connection is captured.
func (p sidecarPath) openTransparent(ctx context.Context, b *Bench, pods []*pod) (_ *route, err error) {
	ns, err := newNetns(ctx)
	if err != nil {
		return nil, err
	}
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		if err := ns.close(); err != nil {
			b.progress("transparent sidecar: %v", err)
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	specs := make([]podSpec, len(pods))
	for i, p := range pods {
		specs[i] = podSpec{Name: p.Name, Delay: p.Delay}
	}
	inside, err := startPodsIn(ctx, ns, b.opts.Greeter, specs)
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { stopPods(inside) })
	control, err := b.startControl(ctx, ns, inside, p.policy, netnsClusterIP, nil)
	if err != nil {
		return nil, err
	}
	stops = append(stops, control.proc.stop)

	bin, args, name := b.proxyCommand()
	dir, err := os.MkdirTemp("", "ballast-bench-proxy-")
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { os.RemoveAll(dir) })
	// The proxy runs as another uid, which must reach its binary.
	if bin, err = copyExecutable(bin, dir); err != nil {
		return nil, err
	}
	uid := strconv.Itoa(netnsProxyUID)
	const transparent, admin = "127.0.0.1:15001", "127.0.0.1:15021"
	initArgs := append(slices.Clone(args), "init", "--proxy-port", "15001", "--proxy-uid", uid,
		"--include-cidrs", netnsCIDR, "--admin-port", "15021")
	if out, err := ns.command(exec.CommandContext(ctx, bin, initArgs...)).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s init in %s: %w: %s", name, ns.name, err, out)
	}
	proxyArgs := append([]string{"--reuid", uid, "--regid", uid, "--clear-groups", bin}, args...)
	proxyArgs = append(proxyArgs, "--transparent-address", transparent, "--xds-address", control.xds.String(),
		"--node-id", "ballast~bench-sidecar."+benchNamespace, "--admin-address", admin)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return nil, err
	}
	proc, err := startProcess(ns.command(exec.Command(setpriv, proxyArgs...)), name+" (iptables)")
	if err != nil {
		return nil, err
	}
	stops = append(stops, proc.stop)
	target := fmt.Sprintf("passthrough:///%s:%d", netnsClusterIP, benchPort)
	if err := waitServing(ctx, target, proc, 15*time.Second, ns.dialOptions()...); err != nil {
		return nil, fmt.Errorf("start the transparent sidecar: %w", err)
	}
	return &route{Target: target, DialOptions: ns.dialOptions(), Proxy: proc, Close: stop}, nil
}

// copyExecutable copies the executable bin into dir, readable and
// executable by every uid, and returns the copy's path.
func copyExecutable(bin, dir string) (string, error) {
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	src, err := os.Open(bin)
	if err != nil {
		return "", err
	}
	defer src.Close()
	out := filepath.Join(dir, filepath.Base(bin))
	dst, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", err
	}
	return out, dst.Close()
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
	http netip.AddrPort
	proc *process
	// dir holds the Service's manifest the control plane serves.
	dir string
}

// defaultClusterIP is the Service's ClusterIP in the benchmark's own
// namespace; the explicit-listener rows never dial it.
const defaultClusterIP = "127.0.0.10"

// startControl runs `ballast control`, inside ns unless it is nil, over a
// folder holding the pods as the Service greeter.bench with clusterIP, and
// the routes manifest unless it is nil, and waits until it says it is
// ready.
func (b *Bench) startControl(ctx context.Context, ns *netns, pods []*pod, policy, clusterIP string, routes []byte) (*control, error) {
	dir, err := os.MkdirTemp(b.dir, "control-")
	if err != nil {
		return nil, err
	}
	manifest, err := serviceManifest(pods, clusterIP)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "greeter.yaml"), manifest, 0o644); err != nil {
		return nil, err
	}
	if routes != nil {
		if err := os.WriteFile(filepath.Join(dir, "routes.yaml"), routes, 0o644); err != nil {
			return nil, err
		}
	}
	// ports: xDS, HTTP
	proc, ports, err := onFreePorts(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 2,
		func(ports []netip.AddrPort) (*process, error) {
			cmd, name, err := b.controlCommand("--files", dir,
				"--xds-address", ports[0].String(), "--http-address", ports[1].String(),
				"--default-lb-policy", policy)
			if err != nil {
				return nil, err
			}
			if ns != nil {
				cmd = ns.command(cmd)
			}
			return startProcess(cmd, name)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitHTTP(ctx, ns.httpClient(), "http://"+ports[1].String()+"/readyz", proc, 15*time.Second)
		})
	if err != nil {
		return nil, fmt.Errorf("start ballast control: %w", err)
	}
	return &control{xds: ports[0], http: ports[1], proc: proc, dir: dir}, nil
}

// controlCommand is the control plane with args: ballast-control when
// Options.ControlBinary names it, else `ballast control`.
func (b *Bench) controlCommand(args ...string) (*exec.Cmd, string, error) {
	// No debug listener: its fixed loopback port would collide between
	// the control planes one run, or two runs, start on this host.
	args = append([]string{"--debug-address="}, args...)
	if b.opts.ControlBinary != "" {
		return exec.Command(b.opts.ControlBinary, args...), "ballast-control", nil
	}
	if err := b.hasCommand("control", "the xDS control plane (issue 4)"); err != nil {
		return nil, "", err
	}
	return exec.Command(b.opts.Binary, append([]string{"control"}, args...)...), "ballast control", nil
}

// startControlProcess runs the control plane with args.
func (b *Bench) startControlProcess(args ...string) (*process, error) {
	cmd, name, err := b.controlCommand(args...)
	if err != nil {
		return nil, err
	}
	return startProcess(cmd, name)
}

// waitHTTP polls url with client until it answers 200, the process exits
// or the wait is over.
func waitHTTP(ctx context.Context, client *http.Client, url string, proc *process, wait time.Duration) error {
	return proc.waitReady(ctx, wait, 50*time.Millisecond, "ready at "+url, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
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
func serviceManifest(pods []*pod, clusterIP string) ([]byte, error) {
	return namedServiceManifest(benchService, pods, clusterIP)
}

// namedServiceManifest is serviceManifest for the Service name.bench.
func namedServiceManifest(name string, pods []*pod, clusterIP string) ([]byte, error) {
	service := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: benchNamespace},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP,
			Ports:     []corev1.ServicePort{{Name: "grpc", Port: benchPort, TargetPort: intstr.FromString("grpc")}},
		},
	}
	eps := make([]files.Pod, len(pods))
	for i, p := range pods {
		eps[i] = files.Pod{Name: p.Name, Addr: p.Addr}
	}
	return files.Manifest(service, "grpc", eps)
}

// routeManifest is a GRPCRoute of five rules attached to greeter.bench,
// each sending its calls back to greeter.bench: four that the benchmark's
// SayHello calls do not match (a header with a method, two other methods,
// a method regular expression), which precedence puts first, and one for
// the whole service that they do. Every call is compared with all five,
// as a canary route's default rule's calls are.
func routeManifest() []byte {
	rule := func(match string) string {
		return fmt.Sprintf(`  - matches:
    - {%s}
    backendRefs:
    - {name: %s, port: %d}
`, match, benchService, benchPort)
	}
	svc := `method: {service: helloworld.Greeter`
	return []byte(fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: bench-rules, namespace: %s}
spec:
  parentRefs:
  - {group: "", kind: Service, name: %s, port: %d}
  rules:
`, benchNamespace, benchService, benchPort) +
		rule(svc+`, method: SayHello}, headers: [{name: x-canary, value: "true"}]`) +
		rule(svc+`, method: SayHelloAgain}`) +
		rule(svc+`, method: SayHelloV2}`) +
		rule(`method: {type: RegularExpression, service: helloworld\.Greeter, method: "Debug.*"}`) +
		rule(svc+`}`))
}
