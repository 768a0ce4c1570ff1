// Package demo replays the article's experiment on one machine: three
// greeter pods, one client with one long-lived gRPC connection, and the same
// calls sent once through a plain Service (an L4, per-connection balancer)
// and once through each of Ballast's per-call modes (client-side, sidecar).
package demo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	grpcxds "google.golang.org/grpc/xds"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/clusterip"
	"github.com/ballast-dev/ballast/control"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/greeter"
	sidecarproxy "github.com/ballast-dev/ballast/proxy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
	"github.com/ballast-dev/ballast/xds"
	xdsclient "github.com/ballast-dev/ballast/xds/client"
)

// The article's names.
const (
	Namespace = "default"
	Service   = "native-tools-2"
	GRPCPort  = 50051
)

// Options says what to replay.
type Options struct {
	// Calls is the number of calls per mode; default 300.
	Calls int
	// Pods is the number of greeter pods; default 3.
	Pods int
	// Progress, if set, is told of every call made.
	Progress func(mode string, done, total int)
	Log      *slog.Logger
}

// Result is what the replay measured, in the shape `--output json` prints.
type Result struct {
	Modes []ModeResult `json:"modes"`
}

// ModeResult is the outcome of one mode: how many calls each pod answered.
type ModeResult struct {
	Mode        string         `json:"mode"`
	Description string         `json:"description"`
	Calls       int            `json:"calls"`
	Errors      int            `json:"errors"`
	LastError   string         `json:"last_error,omitempty"`
	Pods        map[string]int `json:"pods"`
	// MaxMean is the busiest pod's share over the mean share: 1.0 is even,
	// and the number of pods means every call went to one pod. With a
	// canary, over the stable version's pods.
	MaxMean float64 `json:"max_mean"`
	// Versions counts the calls each version answered, with a canary.
	Versions map[string]int `json:"versions,omitempty"`
}

// mode is one way for the client to reach the pods.
type mode struct {
	name, description string
	target            string
	// perCall modes balance each call, so they are warmed up until every
	// pod is connected before counting.
	perCall     bool
	dialOptions []grpc.DialOption
}

// Run starts the pods, replays every mode and tears everything down.
func Run(ctx context.Context, opts Options) (*Result, error) {
	opts.Calls = cmp.Or(opts.Calls, 300)
	opts.Pods = cmp.Or(opts.Pods, 3)
	log := cmp.Or(opts.Log, slog.Default())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := startWorld(ctx, opts.Pods, nil, log)
	if err != nil {
		return nil, err
	}
	defer w.stop()

	modes := append([]mode{{
		name:        "plain-service",
		description: "one connection to the Service's ClusterIP, balanced per connection (kube-proxy)",
		target:      "passthrough:///" + w.clusterIP.String(),
	}}, w.perCallModes()...)
	res := &Result{}
	for _, m := range modes {
		r, err := w.replay(ctx, m, opts)
		if err != nil {
			return nil, err
		}
		res.Modes = append(res.Modes, r)
	}
	return res, nil
}

// perCallModes are the modes that balance each call: client-side,
// proxyless and sidecar.
func (w *world) perCallModes() []mode {
	return []mode{
		{
			name:        "client-side",
			perCall:     true,
			description: "kubernetes:/// resolver + round_robin in the client, balanced per call",
			target:      fmt.Sprintf("kubernetes:///%s.%s:%d", Service, Namespace, GRPCPort),
			dialOptions: []grpc.DialOption{
				grpc.WithResolvers(kubernetes.NewBuilder(w.registry)),
				grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
			},
		},
		{
			name:        "proxyless",
			perCall:     true,
			description: "xds:/// target, grpc-go's xDS client fed by an embedded ballast control, balanced per call",
			target:      fmt.Sprintf("xds:///%s.%s:%d", Service, Namespace, GRPCPort),
			dialOptions: []grpc.DialOption{grpc.WithResolvers(w.xdsResolver)},
		},
		{
			name:        "sidecar",
			perCall:     true,
			description: "the unchanged client's one connection to ballast proxy, which balances each call (same xDS config as proxyless)",
			target:      "passthrough:///" + w.sidecar.String(),
		},
	}
}

func (w *world) replay(ctx context.Context, m mode, opts Options) (ModeResult, error) {
	conn, err := grpc.NewClient(m.target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, m.dialOptions...)...)
	if err != nil {
		return ModeResult{}, fmt.Errorf("mode %s: dial %s: %w", m.name, m.target, err)
	}
	defer conn.Close()
	if m.perCall {
		if err := w.warmUp(ctx, conn); err != nil {
			return ModeResult{}, fmt.Errorf("mode %s: %w", m.name, err)
		}
	}
	var progress func(int)
	if opts.Progress != nil {
		progress = func(done int) { opts.Progress(m.name, done, opts.Calls) }
	}
	t := greeter.Call(ctx, conn, opts.Calls, 0, progress)
	r := ModeResult{Mode: m.name, Description: m.description, Calls: t.Calls, Errors: t.Errors, Pods: map[string]int{}}
	if t.LastError != nil {
		r.LastError = t.LastError.Error()
	}
	for _, p := range w.pods {
		r.Pods[p] = 0
	}
	maps.Copy(r.Pods, t.Pods)
	r.MaxMean = MaxMean(r.Pods)
	if w.canary != nil {
		r.Versions, r.MaxMean = w.canary.versions(r.Pods)
	}
	return r, ctx.Err()
}

// warmUp makes uncounted calls until every pod has answered one (for at most
// ten seconds or 1,000 calls), so that the counted calls measure how a mode
// balances, not how quickly its connections came up: a per-call balancer
// picks only among pods it has already connected to, and on a loaded
// machine the first tens of calls may find one connection up.
func (w *world) warmUp(ctx context.Context, conn grpc.ClientConnInterface) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seen := map[string]bool{}
	for i := 0; i < 1000 && ctx.Err() == nil && len(seen) < len(w.pods); i++ {
		t := greeter.Call(ctx, conn, 1, 0, nil)
		if t.Errors > 0 {
			return fmt.Errorf("warm-up call: %w", t.LastError)
		}
		for pod := range t.Pods {
			seen[pod] = true
		}
	}
	if len(seen) < len(w.pods) {
		return fmt.Errorf("warm-up: only %d of %d pods answered", len(seen), len(w.pods))
	}
	return nil
}

// MaxMean is the largest count over the mean count; 0 when nothing was counted.
func MaxMean(counts map[string]int) float64 {
	return greeter.MaxOverMean(counts, len(counts))
}

// world is the article's setup on loopback: greeter pods on 127.0.0.x, their
// Service and EndpointSlice as YAML read by the file source, and a
// per-connection balancer on the Service's ClusterIP.
type world struct {
	pods      []string
	registry  *discovery.Registry
	clusterIP netip.AddrPort
	// xdsResolver resolves xds:/// targets through the embedded control
	// plane, bootstrapped as `ballast bootstrap` would for a pod.
	xdsResolver resolver.Builder
	sidecar     netip.AddrPort
	// canary, if set, is the v2 release the article's Service's route
	// sends a share of the calls to.
	canary *canary
	dir    string
	cancel context.CancelFunc
	parts  []part
}

// part is one running part of the world.
type part struct {
	cancel context.CancelFunc
	done   chan error
}

// startWorld starts n greeter pods behind the article's Service and, with
// a canary, its v2 pods behind their own Service and the GRPCRoute that
// splits the article's Service's calls between the two.
func startWorld(ctx context.Context, n int, c *canary, log *slog.Logger) (_ *world, err error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &world{cancel: cancel, registry: discovery.NewRegistry()}
	defer func() {
		if err != nil {
			w.stop()
		}
	}()
	var addrs []netip.AddrPort
	for i := range n {
		pod := podName(i)
		lis, err := listen(netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)}), GRPCPort)
		if err != nil {
			return nil, fmt.Errorf("start pod %s: %w", pod, err)
		}
		w.pods = append(w.pods, pod)
		addrs = append(addrs, netip.MustParseAddrPort(lis.Addr().String()))
		w.run(ctx, func(ctx context.Context) error { return (&greeter.Server{Pod: pod, Log: log}).Serve(ctx, lis) })
	}

	w.dir, err = os.MkdirTemp("", "ballast-demo-")
	if err != nil {
		return nil, err
	}
	clusterIP := netip.AddrFrom4([4]byte{127, 0, 0, 10})
	yaml, err := manifest(clusterIP, w.pods, addrs)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(w.dir, "native-tools-2.yaml"), yaml, 0o644); err != nil {
		return nil, err
	}
	if c != nil {
		if err := w.startCanary(ctx, c, n, log); err != nil {
			return nil, err
		}
	}
	if err := files.New(w.dir, w.registry, files.Options{Logger: log}).Load(); err != nil {
		return nil, fmt.Errorf("load demo manifests: %w", err)
	}

	lis, err := listen(clusterIP, GRPCPort)
	if err != nil {
		return nil, fmt.Errorf("start ClusterIP stand-in: %w", err)
	}
	w.clusterIP = netip.MustParseAddrPort(lis.Addr().String())
	key := discovery.Key{Namespace: Namespace, Name: Service}
	proxy := &clusterip.Proxy{Log: log, Endpoints: func() []netip.AddrPort {
		svc, ok := w.registry.Get(key)
		if !ok {
			return nil
		}
		port, err := svc.Port("grpc")
		if err != nil {
			return nil
		}
		var out []netip.AddrPort
		for _, e := range port.Endpoints {
			// kube-proxy sends new connections to ready endpoints only.
			if e.Ready {
				out = append(out, e.Address)
			}
		}
		return out
	}}
	w.run(ctx, func(ctx context.Context) error { return proxy.Serve(ctx, lis) })

	var controlAddr string
	if w.xdsResolver, controlAddr, err = w.startControlPlane(ctx, log); err != nil {
		return nil, err
	}

	// The sidecar: an explicit listener (where iptables would redirect the
	// client's connection to the ClusterIP) whose upstream is the same
	// xDS config as the proxyless mode.
	sidecarLis, err := listen(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 15001)
	if err != nil {
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	sidecarXDS, err := xdsclient.New(xdsclient.Config{
		Server: controlAddr,
		Node:   xdsclient.Node{ID: xds.Bootstrap{Pod: "native-tools-65c5bd87fc-2fsmc", Namespace: Namespace}.NodeID()},
		Log:    log,
	})
	if err != nil {
		sidecarLis.Close()
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	w.run(ctx, sidecarXDS.Run)
	sidecar, err := sidecarproxy.New(sidecarproxy.Options{
		Outbound: []sidecarproxy.Outbound{{Listener: sidecarLis, Target: fmt.Sprintf("xds:///%s.%s:%d", Service, Namespace, GRPCPort)}},
		XDS:      sidecarXDS,
		Log:      log,
	})
	if err != nil {
		sidecarLis.Close()
		return nil, fmt.Errorf("start sidecar: %w", err)
	}
	w.sidecar = netip.MustParseAddrPort(sidecarLis.Addr().String())
	w.run(ctx, func(ctx context.Context) error { return sidecar.Serve(ctx) })
	return w, nil
}

// startControlPlane serves xDS from the world's registry on a loopback port
// and returns a resolver bootstrapped to use it, and its address.
func (w *world) startControlPlane(ctx context.Context, log *slog.Logger) (resolver.Builder, string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", fmt.Errorf("start control plane: %w", err)
	}
	w.run(ctx, func(ctx context.Context) error {
		return control.Serve(ctx, control.Config{Registry: w.registry, XDS: lis, Log: log})
	})
	bootstrap, err := xds.Bootstrap{Server: lis.Addr().String(), Pod: "native-tools-65c5bd87fc-2fsmc", Namespace: Namespace}.JSON()
	if err != nil {
		return nil, "", err
	}
	// grpc-go reads a bootstrap file named by GRPC_XDS_BOOTSTRAP once per
	// process; a resolver with its own bootstrap lets the demo run in a
	// process (a test) that may already use another control plane.
	r, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	return r, lis.Addr().String(), err
}

// run starts a part of the world that stops when ctx ends or the world
// stops, whichever comes first.
func (w *world) run(ctx context.Context, serve func(context.Context) error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	w.parts = append(w.parts, part{cancel, done})
	go func() { done <- serve(ctx) }()
}

// stop stops the parts in the reverse of the order they started, each
// before the one it depends on: the sidecar before the control plane it
// streams from (which would otherwise vanish under it and make it warn),
// the control plane and the proxies before the pods.
func (w *world) stop() error {
	var errs []error
	for _, p := range slices.Backward(w.parts) {
		p.cancel()
		errs = append(errs, <-p.done)
	}
	w.cancel()
	if w.dir != "" {
		os.RemoveAll(w.dir)
	}
	return errors.Join(errs...)
}

// listen takes port on addr when it is free, else any port on addr.
func listen(addr netip.Addr, port int) (net.Listener, error) {
	if lis, err := net.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String()); err == nil {
		return lis, nil
	}
	return net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
}

// podName makes names shaped like a Deployment's pods in the article.
func podName(i int) string {
	suffixes := []string{"52wgd", "67rx4", "zpwxt", "b8k2q", "m4n7c", "t9v3h", "x2l6p", "q5r8s"}
	return fmt.Sprintf("%s-d6c454689-%s", Service, suffixes[i%len(suffixes)])
}

// manifest is the article's Service and the EndpointSlices the endpoint
// slice controller would write for the pods, two zones taking turns.
func manifest(clusterIP netip.Addr, pods []string, addrs []netip.AddrPort) ([]byte, error) {
	service := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: Service, Namespace: Namespace},
		Spec: corev1.ServiceSpec{
			ClusterIP: clusterIP.String(),
			Selector:  map[string]string{"app": Service},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 8081, TargetPort: intstr.FromInt32(8081)},
				{Name: "grpc", Port: GRPCPort, TargetPort: intstr.FromString("grpc")},
			},
		},
	}
	var eps []files.Pod
	for i, addr := range addrs {
		eps = append(eps, files.Pod{Name: pods[i], Addr: addr, Zone: fmt.Sprintf("zone-%c", 'a'+rune(i%2))})
	}
	return files.Manifest(service, "grpc", eps)
}
