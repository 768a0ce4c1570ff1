// Package devcluster runs a real Kubernetes control plane on one machine,
// with pods as local processes, for end-to-end tests and `ballast dev
// cluster`: etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler built from their Go modules (tools/build.sh), two Nodes in
// different zones played by virtual-kubelet providers that run each
// container's command inside the pod's own network namespace, ClusterIP
// Services balanced per connection by iptables DNAT as kube-proxy does, and
// cluster DNS.
//
// It needs root, ip(8) and iptables (tools/deps.sh installs them). Pod and
// Service addresses exist only inside namespaces it creates; the host gets
// blackhole routes for both CIDRs while the cluster is up. Everything is
// torn down by Stop, and a later Start removes what a killed run left.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ballast-dev/ballast/image"
	"github.com/ballast-dev/ballast/internal/toolcache"
)

// Options configures a cluster.
type Options struct {
	// Images are pushed to the cluster's registry as <name>:dev (what
	// deploy/ names) before the Nodes start; more can be pushed later
	// (PushImages, PushImage). Pods' images are pulled from there.
	Images []image.Built
	// Bin is the directory with the control-plane binaries; empty means
	// $KUBEBUILDER_ASSETS, else what tools/build.sh prints.
	Bin string
	// Zones are the Nodes' topology.kubernetes.io/zone labels, one Node
	// each; empty means zone-a and zone-b. The API server copies a Node's
	// label onto each Pod the scheduler binds to it (the PodTopologyLabels
	// admission plugin, on by default since Kubernetes 1.35, so no flag
	// here), where the downward API gives it to zone-preferring clients.
	Zones []string
	// Log receives progress (Info) and details (Debug); nil discards.
	Log *slog.Logger
	// TokenClock is the clock by which ServiceAccount tokens in pods'
	// volumes age and are rotated (at 80% of their lifetime, as the
	// kubelet does); nil is time.Now. A test moves it forward to see a
	// rotation without waiting the API server's 10-minute minimum.
	TokenClock func() time.Time
}

// Cluster is a running dev cluster.
type Cluster struct {
	// Kubeconfig is the path of an admin kubeconfig for kubectl.
	Kubeconfig string
	// Config and Client talk to the API server as admin.
	Config *rest.Config
	Client kubernetes.Interface
	// PodCIDR and ServiceCIDR are this run's ranges (unique among the runs
	// alive on the machine).
	PodCIDR, ServiceCIDR netip.Prefix
	// Dir is the run directory: logs of every process and container.
	Dir string
	// Bin is the directory with the control-plane binaries and kubectl.
	Bin string

	id       string
	bin      string
	log      *slog.Logger
	lock     *os.File
	slot     *os.File
	net      *network
	cp       *controlPlane
	proxy    *proxy
	agent    *agent
	registry *imageRegistry
	nodes    []*nodeAgent
	cancel   context.CancelFunc
	runCtx   context.Context // ends at Stop; owns the relays
	wg       sync.WaitGroup
	once     sync.Once
	stopErr  error
}

const maxSlots = 64

// statusSyncPeriod is how often a node compares its pods' statuses with the
// API server's (statusSync); a lost status is repaired within two periods.
const statusSyncPeriod = time.Second

// BaseDir holds every run's directory and the slot locks. It is fixed,
// not per user or $TMPDIR, so that every run on the machine sees every
// other run when it sweeps.
const BaseDir = "/run/ballast-devcluster"

// slotCIDRs are the pod and Service CIDRs of slot k: 10.(64+k).0.0/16 and
// 10.(128+k).0.0/16, room for 65k Services.
func slotCIDRs(k int) (pods, services netip.Prefix) {
	return netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 64+k)), netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", 128+k))
}

func slotLock(base string, k int) string { return filepath.Join(base, fmt.Sprintf("slot-%d.lock", k)) }

// Start brings a cluster up; it returns when both Nodes are Ready and the
// ClusterIP rules are in place. On error everything it made is removed.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	began := time.Now()
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("devcluster needs root (network namespaces, routes, iptables)")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("devcluster needs %s: run tools/deps.sh: %w", tool, err)
		}
	}
	tools, err := findHostTools()
	if err != nil {
		return nil, err
	}
	bin := opts.Bin
	if bin == "" {
		if bin, err = assets(); err != nil {
			return nil, err
		}
	}
	base := BaseDir
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	if err := sweep(ctx, base, log); err != nil {
		log.Warn("removing leftovers of dead runs", "err", err)
	}
	c := &Cluster{id: randomHex(3), bin: bin, log: log}
	c.Bin = bin
	// Lock the run directory before it gets the name a sweep looks for,
	// so a concurrent sweep never takes a starting run for a dead one.
	tmpDir := filepath.Join(base, ".new-"+c.id)
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return nil, err
	}
	if c.lock, err = lockFile(filepath.Join(tmpDir, "lock")); err != nil {
		return nil, fmt.Errorf("lock run dir: %w", err)
	}
	c.Dir = filepath.Join(base, "run-"+c.id)
	if err := os.Rename(tmpDir, c.Dir); err != nil {
		c.lock.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	// A slot picks CIDRs no other live run uses.
	k := 0
	for ; k < maxSlots; k++ {
		if c.slot, err = lockFile(slotLock(base, k)); err == nil {
			break
		}
	}
	if c.slot == nil {
		return nil, fmt.Errorf("all %d dev cluster slots are in use", maxSlots)
	}
	c.PodCIDR, c.ServiceCIDR = slotCIDRs(k)
	if err := os.WriteFile(filepath.Join(c.Dir, "slot"), []byte(strconv.Itoa(k)), 0o644); err != nil {
		return nil, err
	}
	c.net = &network{prefix: netnsPrefix + c.id + "-", podCIDR: c.PodCIDR, svcCIDR: c.ServiceCIDR,
		gateway: c.PodCIDR.Addr().Next()}
	log.Info("dev cluster: network", "run", c.id, "pods", c.PodCIDR, "services", c.ServiceCIDR)
	if err := c.net.setup(ctx); err != nil {
		return nil, err
	}

	c.cp = &controlPlane{dir: c.Dir, bin: bin}
	if err := c.cp.start(ctx, c.ServiceCIDR.String(), c.net.gateway, log); err != nil {
		return nil, err
	}
	c.Kubeconfig, c.Config = c.cp.kubeconfig, c.cp.config
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel, c.runCtx = cancel, runCtx
	apiHost := strings.TrimPrefix(c.Config.Host, "https://")
	api, err := c.exposeAPIServer(ctx, apiHost)
	if err != nil {
		return nil, err
	}
	// The kubernetes Service's endpoint, as the API server advertises it.
	if ep, err := c.ForwardToHost(apiHost); err != nil {
		return nil, err
	} else if ep.Port() != netip.MustParseAddrPort(apiHost).Port() {
		return nil, fmt.Errorf("expose API server to pods: port %d is taken at %s", netip.MustParseAddrPort(apiHost).Port(), c.net.gateway)
	}
	log.Info("starting CoreDNS")
	dns := &dnsServer{net: c.net, log: log.With("component", "dns")}
	if err := dns.start(runCtx, c.Kubeconfig, c.Dir); err != nil {
		return nil, err
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); dns.wait() }()

	if c.registry, err = startRegistry(c.Dir); err != nil {
		return nil, fmt.Errorf("image registry: %w", err)
	}
	if err := c.PushImages(ctx, DevTag, opts.Images); err != nil {
		return nil, err
	}
	c.agent = &agent{images: newImageStore(c.registry, filepath.Join(c.Dir, "images")), tools: tools, net: c.net, dir: c.Dir, log: log.With("component", "node-agent"),
		baseEnv: []string{
			"KUBERNETES_SERVICE_HOST=" + api.Addr().String(),
			"KUBERNETES_SERVICE_PORT=" + strconv.Itoa(int(api.Port())),
		},
		files:  func(pod *corev1.Pod) map[string]string { return podFiles(pod, dns.addr) },
		tokens: newTokenManager(c.Client, opts.TokenClock)}
	zones := opts.Zones
	if len(zones) == 0 {
		zones = []string{"zone-a", "zone-b"}
	}
	for i, zone := range zones {
		// Each Node's agent runs until the cluster stops or FailNode.
		nodeCtx, stopNode := context.WithCancel(runCtx)
		n, err := c.agent.startNode(nodeCtx, c.Client, fmt.Sprintf("node-%s", zone), zone, i)
		if err != nil {
			stopNode()
			return nil, err
		}
		n.stop = stopNode
		c.nodes = append(c.nodes, n)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := n.node.Run(withVKLogger(nodeCtx, n.log)); err != nil && nodeCtx.Err() == nil {
				log.Error("node agent stopped", "node", n.name, "err", err)
			}
		}()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			newStatusSync(n, c.Client).run(nodeCtx, statusSyncPeriod)
		}()
	}
	lb := &loadBalancer{net: c.net, client: c.Client, base: lbRange(k), log: log.With("component", "load-balancer")}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := lb.run(runCtx); err != nil {
			log.Error("load balancer stopped", "err", err)
		}
	}()
	px := &proxy{net: c.net, log: log.With("component", "proxy"), synced: make(chan struct{})}
	c.proxy = px
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := px.run(runCtx, c.Client); err != nil {
			log.Error("ClusterIP proxy stopped", "err", err)
		}
	}()
	for _, n := range c.nodes {
		if err := n.node.WaitReady(ctx, 2*time.Minute); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.name, err)
		}
	}
	select {
	case <-px.synced:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := c.waitDefaultServiceAccount(ctx); err != nil {
		return nil, err
	}
	log.Info("dev cluster: up", "run", c.id, "took", time.Since(began).Round(time.Millisecond), "kubeconfig", c.Kubeconfig)
	return c, nil
}

// waitDefaultServiceAccount waits for the controller manager to be working
// (its service account controller creates default/default).
func (c *Cluster) waitDefaultServiceAccount(ctx context.Context) error {
	return Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1GetOptions)
		return err == nil, nil
	})
}

// Stop tears everything down: pods, node agents, control plane, network,
// routes. It is safe to call more than once and returns every error.
func (c *Cluster) Stop() error {
	c.once.Do(func() {
		var errs []error
		ctx := context.Background()
		// Controllers first, so nothing starts pods or rewrites statuses
		// while the pods are killed.
		if c.cancel != nil {
			c.cancel()
		}
		c.wg.Wait()
		for _, n := range c.nodes {
			n.shutdown()
		}
		if c.cp != nil {
			c.cp.stop()
		}
		if c.registry != nil {
			c.registry.close()
		}
		if c.net != nil && c.net.used != nil {
			// Anything a pod left (it should be gone already).
			errs = append(errs, removeNetns(ctx, c.net.prefix+"p"), c.net.teardown(ctx))
		}
		if c.Dir != "" {
			killByArg(c.Dir)
		}
		if c.slot != nil {
			c.slot.Close()
		}
		if c.lock != nil {
			c.lock.Close()
			if os.Getenv("BALLAST_DEVCLUSTER_KEEP") == "" {
				errs = append(errs, os.RemoveAll(c.Dir))
			}
		}
		c.stopErr = errors.Join(errs...)
		if c.log != nil {
			c.log.Info("dev cluster: down", "run", c.id, "err", c.stopErr)
		}
	})
	return c.stopErr
}

// Kubectl runs the real kubectl against the cluster and returns its
// standard output; stdin may be nil.
func (c *Cluster) Kubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	var out, errb strings.Builder
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	cmd.Stdout = &out
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Apply is `kubectl apply -f -` of manifests (YAML, several documents).
//
// A Pod applied with its Namespace is refused until the namespace's
// default ServiceAccount exists (the ServiceAccount admission plugin looks
// it up); Apply tries again then, as a user would.
func (c *Cluster) Apply(ctx context.Context, manifests string) error {
	var err error
	for {
		_, err = c.Kubectl(ctx, strings.NewReader(manifests), "apply", "-f", "-")
		if err == nil || !strings.Contains(err.Error(), "error looking up service account") {
			return err
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// Nodes are the names of the cluster's Nodes, in zone order.
func (c *Cluster) Nodes() []string {
	names := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		names[i] = n.name
	}
	return names
}

// FailNode makes a Node go away as a machine that loses power does: its
// agent stops (no more lease renewals or pod statuses: the API server
// keeps what it last heard until the node lifecycle controller marks the
// Node NotReady), the processes of its pods are killed at once, and
// packets to its pods' addresses are dropped silently (a blackhole route
// where the pod's route was), so connections to them hang rather than
// being refused. The Node does not come back; the cluster's Stop cleans
// up after it as after any other.
func (c *Cluster) FailNode(ctx context.Context, name string) error {
	i := slices.IndexFunc(c.nodes, func(n *nodeAgent) bool { return n.name == name })
	if i < 0 {
		return fmt.Errorf("no node %s (nodes: %v)", name, c.Nodes())
	}
	n := c.nodes[i]
	n.mu.Lock()
	pods := make([]*podRuntime, 0, len(n.running))
	for _, p := range n.running {
		p.mu.Lock()
		if !p.terminating { // else torn down already, its network with it
			pods = append(pods, p)
		}
		p.mu.Unlock()
	}
	n.mu.Unlock()
	var errs []error
	for _, p := range pods {
		if err := c.net.silence(ctx, p.net); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", p, err))
		}
	}
	// Only then the agent: its pods' contexts end with it.
	n.stop()
	for _, p := range pods {
		p.terminate(0)
	}
	return errors.Join(errs...)
}

// pod finds a running pod's runtime.
func (c *Cluster) pod(namespace, name string) (*podRuntime, error) {
	// A pod deleted and created again under its name may start on another
	// node while the first is still being torn down: the newest that is
	// not torn down is the pod the API server has.
	var newest *podRuntime
	for _, n := range c.nodes {
		p := n.get(namespace, name)
		if p == nil || p.ctx.Err() != nil {
			continue
		}
		if newest == nil || newest.start.Before(&p.start) {
			newest = p
		}
	}
	if newest == nil {
		return nil, fmt.Errorf("pod %s/%s is not running on any node", namespace, name)
	}
	return newest, nil
}

// PodNetns is the name of the network namespace a pod runs in (for `ip
// netns exec`).
func (c *Cluster) PodNetns(namespace, name string) (string, error) {
	p, err := c.pod(namespace, name)
	if err != nil {
		return "", err
	}
	return p.net.netns, nil
}

// PodHTTPClient is an HTTP client whose connections start inside the pod's
// network namespace: http://127.0.0.1:<port>/ reaches the pod itself.
func (c *Cluster) PodHTTPClient(namespace, name string) (*http.Client, error) {
	ns, err := c.PodNetns(namespace, name)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: netnsDialer{netns: ns}.DialContext, DisableKeepAlives: true},
	}, nil
}

// Poll calls cond until it returns true, returns an error, or timeout
// passes; it is how tests wait without sleeping blindly.
func Poll(ctx context.Context, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met within %s: %w", timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// assets is the control-plane binary directory: $KUBEBUILDER_ASSETS, else
// what tools/build.sh prints (building on first use).
func assets() (string, error) { return toolcache.Path("KUBEBUILDER_ASSETS", "build.sh") }

// PodDialer dials from inside a pod's network namespace, as a process in
// the pod would: pod IPs, ClusterIPs (through the DNAT rules) and the
// pod's own 127.0.0.1.
func (c *Cluster) PodDialer(namespace, name string) (func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	ns, err := c.PodNetns(namespace, name)
	if err != nil {
		return nil, err
	}
	return netnsDialer{netns: ns}.DialContext, nil
}

// ContainerFile reads a file as a running container sees it (its root,
// its volumes), through /proc/<pid>/root, without a program of the
// image: Ballast's images hold none but their binary.
func (c *Cluster) ContainerFile(namespace, pod, container, path string) ([]byte, error) {
	p, err := c.pod(namespace, pod)
	if err != nil {
		return nil, err
	}
	for _, cr := range append(append([]*containerRuntime{}, p.inits...), p.containers...) {
		if cr.spec.Name != container {
			continue
		}
		p.mu.Lock()
		proc := cr.proc
		p.mu.Unlock()
		if proc == nil {
			return nil, fmt.Errorf("pod %s/%s: container %s is not running", namespace, pod, container)
		}
		return os.ReadFile(filepath.Join("/proc", strconv.Itoa(proc.cmd.Process.Pid), "root", filepath.Clean("/"+path)))
	}
	return nil, fmt.Errorf("pod %s/%s has no container %s", namespace, pod, container)
}
