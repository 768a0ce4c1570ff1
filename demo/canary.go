package demo

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/greeter"
)

// CanaryService is the Service of the greeter's v2 release.
const CanaryService = Service + "-v2"

// CanaryOptions says what the canary replay runs.
type CanaryOptions struct {
	Options
	// Percent is the canary's share of the calls; default 10.
	Percent int
	// Pods is the number of v2 pods; default 1.
	Pods int
}

// canary is the v2 release in the world: its pods and the route's split.
type canary struct {
	percent int
	pods    int
}

// RunCanary is the article's gray release: beside the greeter's v1 pods,
// v2 pods behind their own Service, and a GRPCRoute (Gateway API, attached
// to the article's Service) that sends Percent of its calls to v2. Each
// per-call mode shows per pod and per version where the calls went; the
// route reaches the client-side resolver from the registry, and proxyless
// clients and the sidecar as xDS from the embedded control plane.
func RunCanary(ctx context.Context, opts CanaryOptions) (*Result, error) {
	opts.Calls = cmp.Or(opts.Calls, 300)
	opts.Options.Pods = cmp.Or(opts.Options.Pods, 3)
	c := &canary{percent: cmp.Or(opts.Percent, 10), pods: cmp.Or(opts.Pods, 1)}
	if c.percent < 0 || c.percent > 100 {
		return nil, fmt.Errorf("canary percent %d: want 0 to 100", c.percent)
	}
	log := cmp.Or(opts.Log, slog.Default())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := startWorld(ctx, opts.Options.Pods, c, log)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	split := fmt.Sprintf("GRPCRoute %s %d/%d", Service, 100-c.percent, c.percent)
	res := &Result{}
	for _, m := range w.perCallModes() {
		m.description = split + ": " + m.description
		r, err := w.replay(ctx, m, opts.Options)
		if err != nil {
			return nil, err
		}
		res.Modes = append(res.Modes, r)
	}
	return res, nil
}

// route is the GRPCRoute a user writes for a canary: attached to the
// stable Service (GAMMA), splitting its calls by weight.
func (c *canary) route() string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: %[1]s-canary
  namespace: %[2]s
spec:
  parentRefs:
  - {group: "", kind: Service, name: %[1]s, port: %[3]d}
  rules:
  - backendRefs:
    - {name: %[1]s, port: %[3]d, weight: %[4]d}
    - {name: %[5]s, port: %[3]d, weight: %[6]d}
`, Service, Namespace, GRPCPort, 100-c.percent, CanaryService, c.percent)
}

// startCanary starts the v2 pods after the n v1 ones and writes their
// Service and the route beside the article's manifest.
func (w *world) startCanary(ctx context.Context, c *canary, n int, log *slog.Logger) error {
	w.canary = c
	var pods []files.Pod
	for i := range c.pods {
		pod := fmt.Sprintf("%s-7f9c8b5d6-%s", CanaryService, []string{"k3j9w", "p8x2n", "r6t4m"}[i%3])
		lis, err := listen(netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + n + i)}), GRPCPort)
		if err != nil {
			return fmt.Errorf("start pod %s: %w", pod, err)
		}
		w.pods = append(w.pods, pod)
		pods = append(pods, files.Pod{Name: pod, Addr: netip.MustParseAddrPort(lis.Addr().String()), Zone: "zone-a"})
		w.run(ctx, func(ctx context.Context) error { return (&greeter.Server{Pod: pod, Log: log}).Serve(ctx, lis) })
	}
	service := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: CanaryService, Namespace: Namespace},
		Spec: corev1.ServiceSpec{
			ClusterIP: "127.0.0.11",
			Selector:  map[string]string{"app": CanaryService},
			Ports:     []corev1.ServicePort{{Name: "grpc", Port: GRPCPort, TargetPort: intstr.FromString("grpc")}},
		},
	}
	yaml, err := files.Manifest(service, "grpc", pods)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(w.dir, CanaryService+".yaml"), yaml, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(w.dir, Service+"-canary.yaml"), []byte(c.route()), 0o644)
}

// versions counts calls per version, and the busiest stable pod's count
// over the stable pods' mean.
func (c *canary) versions(pods map[string]int) (map[string]int, float64) {
	versions := map[string]int{"v1": 0, "v2": 0}
	stable := map[string]int{}
	for pod, n := range pods {
		if strings.HasPrefix(pod, CanaryService+"-") {
			versions["v2"] += n
			continue
		}
		versions["v1"] += n
		stable[pod] = n
	}
	return versions, MaxMean(stable)
}
