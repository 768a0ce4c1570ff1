package devcluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/util/cert"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// agent is the kubelet side of the cluster: one virtual-kubelet node per
// zone, whose pods are local processes in their own network namespaces,
// each container in its own root: its image pulled from the cluster's
// registry and unpacked.
type agent struct {
	images *imageStore
	tools  hostTools
	net    *network
	dir    string
	log    *slog.Logger
	files  func(pod *corev1.Pod) map[string]string // /etc/netns files for a pod
	tokens tokenSource                             // for serviceAccountToken volumes
	// baseEnv is in every container's environment: how to reach the API
	// server from a pod (KUBERNETES_SERVICE_HOST/PORT), which client-go's
	// in-cluster config reads with the mounted ServiceAccount token.
	baseEnv []string
}

// command is a container's argv and its image, pulled (nil for
// HostImage, whose programs are the host's).
func (a *agent) command(ctx context.Context, c corev1.Container) ([]string, *pulledImage, error) {
	if isHostImage(c.Image) {
		argv, err := a.resolveArgv(nil, nil, append(append([]string{}, c.Command...), c.Args...))
		return argv, nil, err
	}
	img, err := a.images.pull(ctx, c.Image, c.ImagePullPolicy)
	if err != nil {
		return nil, nil, err
	}
	argv, err := img.argv(c)
	return argv, img, err
}

// resolveArgv maps argv[0] to the program a process in the container
// runs: in img (by its path there, or by name on env's PATH), or for
// HostImage (img nil) on the host's PATH.
func (a *agent) resolveArgv(img *pulledImage, env, argv []string) ([]string, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("empty command")
	}
	argv = append([]string{}, argv...)
	if img != nil {
		prog, err := img.program(argv[0], env)
		if err != nil {
			return nil, err
		}
		argv[0] = prog
		return argv, nil
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("image %s: command %q: %w", HostImage, argv[0], err)
	}
	argv[0] = path
	return argv, nil
}

// nodeAgent is one Node: a virtual-kubelet provider for the pods bound to it.
type nodeAgent struct {
	agent *agent
	name  string
	index int
	zone  string
	log   *slog.Logger
	pods  corev1listers.PodLister
	env   envResolver
	ctx   context.Context

	mu       sync.Mutex
	running  map[string]*podRuntime
	notifyFn func(*corev1.Pod)
	node     *nodeutil.Node
	// stop ends the Node's agent (Cluster.FailNode).
	stop context.CancelFunc
}

var (
	_ nodeutil.Provider = (*nodeAgent)(nil)
	_ node.PodNotifier  = (*nodeAgent)(nil)
)

// startNode registers a Node and runs its controllers until ctx ends.
func (a *agent) startNode(ctx context.Context, client kubernetes.Interface, name, zone string, index int) (*nodeAgent, error) {
	n := &nodeAgent{agent: a, name: name, index: index, zone: zone, ctx: ctx, running: map[string]*podRuntime{},
		log: a.log.With("node", name)}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := cert.GenerateSelfSignedCertKey("127.0.0.1", []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	vk, err := nodeutil.NewNode(name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		n.pods = pc.Pods
		n.env = envResolver{configMaps: pc.ConfigMaps, secrets: pc.Secrets}
		return n, nil, nil
	},
		nodeutil.WithClient(client),
		nodeutil.AttachProviderRoutes(mux),
		func(cfg *nodeutil.NodeConfig) error {
			cfg.HTTPListenAddr = "127.0.0.1:" + strconv.Itoa(port)
			cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
			cfg.Handler = mux
			cfg.NumWorkers = 4
			// Our own resolver knows status.podIP, which virtual-kubelet's
			// cannot resolve before the pod has an address.
			cfg.SkipDownwardAPIResolution = true
			cfg.InformerResyncPeriod = time.Minute
			n.nodeSpec(&cfg.NodeSpec, port)
			return nil
		},
	)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	n.node = vk
	return n, nil
}

func (n *nodeAgent) nodeSpec(spec *corev1.Node, port int) {
	spec.Labels = map[string]string{
		"kubernetes.io/hostname":      n.name,
		"kubernetes.io/os":            "linux",
		"kubernetes.io/arch":          "amd64",
		"topology.kubernetes.io/zone": n.zone,
		"ballast.dev/dev-cluster":     "true",
	}
	base := n.agent.net.podCIDR.Addr().As4()
	spec.Spec.PodCIDR = fmt.Sprintf("%d.%d.%d.0/24", base[0], base[1], n.index+1)
	spec.Spec.PodCIDRs = []string{spec.Spec.PodCIDR}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
	spec.Status.Capacity = capacity
	spec.Status.Allocatable = capacity
	spec.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
		{Type: corev1.NodeHostName, Address: n.name},
	}
	spec.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	spec.Status.NodeInfo = corev1.NodeSystemInfo{
		OperatingSystem: "linux", Architecture: "amd64",
		KubeletVersion: "v1.37.2-ballast-dev", ContainerRuntimeVersion: "ballast-dev://processes",
	}
	for i, c := range spec.Status.Conditions {
		if c.Type != corev1.NodeReady {
			c.Status = corev1.ConditionFalse
			c.Reason = "KubeletHasSufficientResources"
			spec.Status.Conditions[i] = c
		}
	}
}

// NotifyPods is called once by virtual-kubelet with the status callback.
func (n *nodeAgent) NotifyPods(_ context.Context, fn func(*corev1.Pod)) {
	n.mu.Lock()
	n.notifyFn = fn
	n.mu.Unlock()
}

func (n *nodeAgent) notify(pod *corev1.Pod) {
	n.mu.Lock()
	fn := n.notifyFn
	n.mu.Unlock()
	if fn != nil {
		fn(pod)
	}
}

// CreatePod sets up the pod's network and starts its containers.
func (n *nodeAgent) CreatePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	n.mu.Lock()
	if old, ok := n.running[key]; ok {
		old.mu.Lock()
		sameUID, finished := old.pod.UID == pod.UID, old.finished
		old.mu.Unlock()
		switch {
		case sameUID:
			n.mu.Unlock()
			return nil
		case !finished:
			// A new pod with the name of one still shutting down (e.g. a
			// StatefulSet's): virtual-kubelet retries until it is gone.
			n.mu.Unlock()
			return fmt.Errorf("pod %s: previous pod with this name is still terminating", key)
		}
		delete(n.running, key)
	}
	n.mu.Unlock()

	var sysctls []corev1.Sysctl
	if pod.Spec.SecurityContext != nil {
		sysctls = pod.Spec.SecurityContext.Sysctls
	}
	pn, err := n.agent.net.addPod(n.ctx, n.index, n.agent.files(pod), sysctls)
	if err != nil {
		if n.ctx.Err() == nil {
			n.log.Warn("pod network", "pod", key, "err", err)
		}
		return err
	}
	pod = pod.DeepCopy()
	dir := filepath.Join(n.agent.dir, "pods", pn.netns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		n.agent.net.removePod(n.ctx, pn)
		return err
	}
	// HOME for its containers, writable by any user as an image's /tmp.
	if err := os.Mkdir(filepath.Join(dir, "home"), 0o777); err == nil {
		os.Chmod(filepath.Join(dir, "home"), 0o1777)
	}
	vols := newPodVolumes(dir, volumeSources{configMaps: n.env.configMaps, secrets: n.env.secrets, tokens: n.agent.tokens})
	err = os.WriteFile(filepath.Join("/etc/netns", pn.netns, "hosts"), []byte(podHosts(pod, pn.ip)), 0o644)
	if err == nil {
		err = vols.sync(pod, pn.ip.String())
	}
	if err != nil {
		// virtual-kubelet retries, as the kubelet waits for a missing
		// ConfigMap or Secret.
		n.log.Warn("pod volumes", "pod", key, "err", err)
		n.agent.net.removePod(n.ctx, pn)
		return fmt.Errorf("pod %s: %w", key, err)
	}
	ctx, cancel := context.WithCancel(n.ctx)
	p := &podRuntime{node: n, dir: dir, net: pn, vols: vols, start: metav1.Now(), ctx: ctx, cancel: cancel, pod: pod, finishedCh: make(chan struct{}),
		log: n.log.With("pod", key, "ip", pn.ip.String())}
	for i, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		cr := newContainerRuntime(dir, c)
		if cr.env, err = n.env.resolve(pod, c, pn.ip.String()); err != nil {
			n.log.Warn("pod environment", "pod", key, "err", err)
			cancel()
			n.agent.net.removePod(n.ctx, pn)
			return err
		}
		cr.spec.Command, cr.spec.Args = expandArgs(c.Command, cr.env), expandArgs(c.Args, cr.env)
		if i < len(pod.Spec.InitContainers) {
			p.inits = append(p.inits, cr)
		} else {
			p.containers = append(p.containers, cr)
		}
	}
	n.mu.Lock()
	n.running[key] = p
	n.mu.Unlock()
	p.log.Info("pod created", "netns", pn.netns)
	p.wg.Add(1)
	go p.run()
	p.changed()
	return nil
}

// UpdatePod takes the new metadata; a pod's containers are immutable.
func (n *nodeAgent) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	p := n.get(pod.Namespace, pod.Name)
	if p == nil {
		return errdefs.NotFoundf("pod %s/%s", pod.Namespace, pod.Name)
	}
	p.mu.Lock()
	if p.pod.UID != pod.UID {
		// virtual-kubelet looks pods up by name: this is a new pod that
		// reuses the name of an old one.
		p.mu.Unlock()
		return n.CreatePod(ctx, pod)
	}
	p.pod.ObjectMeta = *pod.ObjectMeta.DeepCopy()
	p.mu.Unlock()
	return nil
}

// DeletePod starts termination: SIGTERM now, SIGKILL after the grace
// period. The status goes terminal when every process has ended, and
// virtual-kubelet then removes the pod object.
func (n *nodeAgent) DeletePod(_ context.Context, pod *corev1.Pod) error {
	p := n.get(pod.Namespace, pod.Name)
	if p == nil {
		return errdefs.NotFoundf("pod %s/%s", pod.Namespace, pod.Name)
	}
	p.mu.Lock()
	finished := p.finished
	p.mu.Unlock()
	if finished {
		n.mu.Lock()
		if n.running[podKey(pod.Namespace, pod.Name)] == p {
			delete(n.running, podKey(pod.Namespace, pod.Name))
		}
		n.mu.Unlock()
		return nil
	}
	grace := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	}
	p.terminate(time.Duration(grace) * time.Second)
	return nil
}

func (n *nodeAgent) get(namespace, name string) *podRuntime {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.running[podKey(namespace, name)]
}

// GetPod returns the pod with its current status.
func (n *nodeAgent) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p := n.get(namespace, name)
	if p == nil {
		return nil, errdefs.NotFoundf("pod %s/%s", namespace, name)
	}
	return p.snapshot(), nil
}

// GetPodStatus returns the pod's current status.
func (n *nodeAgent) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := n.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the pods this node runs.
func (n *nodeAgent) GetPods(context.Context) ([]*corev1.Pod, error) {
	n.mu.Lock()
	ps := make([]*podRuntime, 0, len(n.running))
	for _, p := range n.running {
		ps = append(ps, p)
	}
	n.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.snapshot())
	}
	return out, nil
}

func (n *nodeAgent) container(namespace, podName, container string) (*podRuntime, *containerRuntime, error) {
	p := n.get(namespace, podName)
	if p == nil {
		return nil, nil, errdefs.NotFoundf("pod %s/%s", namespace, podName)
	}
	for _, c := range append(append([]*containerRuntime{}, p.containers...), p.inits...) {
		if c.spec.Name == container || (container == "" && len(p.containers) == 1) {
			return p, c, nil
		}
	}
	return nil, nil, errdefs.NotFoundf("pod %s/%s has no container %q", namespace, podName, container)
}

// GetContainerLogs serves `kubectl logs` from the container's log file.
func (n *nodeAgent) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	p, c, err := n.container(namespace, podName, containerName)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(c.logPath)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	if opts.Tail > 0 {
		lines := bytes.SplitAfter(data, []byte("\n"))
		if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1]
		}
		if len(lines) > opts.Tail {
			lines = lines[len(lines)-opts.Tail:]
		}
		data = bytes.Join(lines, nil)
	}
	if opts.LimitBytes > 0 && len(data) > opts.LimitBytes {
		data = data[:opts.LimitBytes]
	}
	if !opts.Follow {
		return io.NopCloser(bytes.NewReader(data)), nil
	}
	// Follow: stream what is already there, then new bytes until the
	// request or the pod ends.
	pr, pw := io.Pipe()
	go func() {
		f, err := os.Open(c.logPath)
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		defer f.Close()
		st, _ := f.Stat()
		if _, err := pw.Write(data); err != nil {
			return
		}
		off := int64(0)
		if st != nil {
			off = st.Size()
		}
		r := bufio.NewReader(io.NewSectionReader(f, off, 1<<62))
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		buf := make([]byte, 32<<10)
		for {
			nr, rerr := r.Read(buf)
			if nr > 0 {
				if _, err := pw.Write(buf[:nr]); err != nil {
					return
				}
				continue
			}
			if rerr != nil && rerr != io.EOF {
				pw.CloseWithError(rerr)
				return
			}
			select {
			case <-ctx.Done():
				pw.Close()
				return
			case <-p.ctx.Done():
				pw.Close()
				return
			case <-tick.C:
			}
		}
	}()
	return pr, nil
}

// RunInContainer serves `kubectl exec`: the command runs in the
// container's namespaces (so it sees its volumes and hostname) with its
// environment.
func (n *nodeAgent) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	p, c, err := n.container(namespace, podName, containerName)
	if err != nil {
		return err
	}
	enter, img, err := p.enter(c)
	if err != nil {
		return err
	}
	argv, err := n.agent.resolveArgv(img, p.env(c, img), cmd)
	if err != nil {
		return err
	}
	x := exec.CommandContext(ctx, enter[0], append(enter[1:], argv...)...)
	x.Env = p.env(c, img)
	x.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if attach.Stdin() != nil {
		x.Stdin = attach.Stdin()
	}
	if attach.Stdout() != nil {
		x.Stdout = attach.Stdout()
	}
	if attach.Stderr() != nil {
		x.Stderr = attach.Stderr()
	}
	return x.Run()
}

// AttachToContainer is not supported: container output goes to its log.
func (n *nodeAgent) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by the ballast dev cluster; use logs or exec")
}

// GetStatsSummary reports no stats.
func (n *nodeAgent) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: n.name}}, nil
}

// GetMetricsResource reports no metrics.
func (n *nodeAgent) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}

// PortForward connects the stream to the port inside the pod's namespace.
func (n *nodeAgent) PortForward(ctx context.Context, namespace, podName string, port int32, stream io.ReadWriteCloser) error {
	p := n.get(namespace, podName)
	if p == nil {
		return errdefs.NotFoundf("pod %s/%s", namespace, podName)
	}
	defer stream.Close()
	conn, err := netnsDialer{netns: p.net.netns}.DialContext(ctx, "tcp", net.JoinHostPort(p.net.ip.String(), strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(conn, stream); errc <- err }()
	go func() { _, err := io.Copy(stream, conn); errc <- err }()
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	return err
}

// shutdown kills every pod at once (the cluster is going away) and waits
// for them, at most a minute.
func (n *nodeAgent) shutdown() {
	n.mu.Lock()
	ps := make([]*podRuntime, 0, len(n.running))
	for _, p := range n.running {
		ps = append(ps, p)
	}
	n.mu.Unlock()
	for _, p := range ps {
		p.terminate(0)
	}
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for _, p := range ps {
		select {
		case <-p.finishedCh:
		case <-timeout.C:
			n.log.Warn("pods did not finish within a minute")
			return
		}
	}
}
