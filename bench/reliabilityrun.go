package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/image"
	"github.com/ballast-dev/ballast/inject"
)

// relRun is one run of the reliability scenario on its dev cluster.
type relRun struct {
	b               *Bench
	c               ReliabilityConfig
	cluster         *devcluster.Cluster
	modes           []relMode
	watch           *podWatch
	controlReplicas int
	// load is the scenario's load; next the images of version N+1 that
	// the upgrade fault moves to.
	load *relLoad
	next []image.Built
}

// podWatch polls the pods of a namespace and remembers when it saw each
// turn Ready: the moment a new pod could take calls.
type podWatch struct {
	mu    sync.Mutex
	ready map[string][]time.Time // pod → each time it was seen turning Ready
	was   map[string]bool
}

func (w *podWatch) run(ctx context.Context, cluster *devcluster.Cluster, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		listCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		pods, err := cluster.Client.CoreV1().Pods(relNamespace).List(listCtx, metav1.ListOptions{})
		cancel()
		if err == nil {
			now := time.Now()
			w.mu.Lock()
			for _, p := range pods.Items {
				ready := false
				for _, c := range p.Status.Conditions {
					if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
						ready = true
					}
				}
				if ready && !w.was[p.Name] {
					w.ready[p.Name] = append(w.ready[p.Name], now)
				}
				w.was[p.Name] = ready
			}
			w.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readyAfter is when pod was first seen turning Ready at or after t; zero
// if it has not.
func (w *podWatch) readyAfter(pod string, t time.Time) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, at := range w.ready[pod] {
		if !at.Before(t) {
			return at
		}
	}
	return time.Time{}
}

// ReliabilityReport is what `ballast bench --only reliability` measured.
type ReliabilityReport struct {
	Date    time.Time     `json:"date"`
	Wall    time.Duration `json:"wall"`
	Machine machine       `json:"machine"`
	CI      bool          `json:"ci"`
	Config  struct {
		Replicas, ScaleTo        int
		Pace, Down, Quiet, Bound time.Duration
	} `json:"config"`
	Modes  []string       `json:"modes"`
	Faults []*faultReport `json:"faults"`
	// Failed says why the scenario stopped before its faults ran.
	Failed string `json:"failed,omitempty"`
}

type faultReport struct {
	ID, Title, Converge string
	ZeroGoal            bool
	Start, End          time.Time
	Note                string
	// NotRun or Failed say why there are no numbers.
	NotRun, Failed string
	Rows           []*modeResult
}

type modeResult struct {
	Mode    string `json:"mode"`
	Ballast bool   `json:"ballast"`
	// During is the calls that started during the fault; Failed the calls
	// that failed from its start to Quiet after its end.
	During, Failed int
	FirstErr       string `json:",omitempty"`
	// Converge is the time until the new state was used; Converged false
	// means it never was in the run (Measured false: no such measure).
	Converge            time.Duration
	Converged, Measured bool
}

// Reliability runs the reliability scenario: a dev cluster (root), the
// control plane from deploy/control, the greeters and a client pod per
// mode, steady load on each, and the faults one after another.
func (b *Bench) Reliability(ctx context.Context, c ReliabilityConfig, ci bool) *ReliabilityReport {
	start := time.Now()
	rep := &ReliabilityReport{Date: start.UTC(), Machine: thisMachine(), CI: ci}
	rep.Config.Replicas, rep.Config.ScaleTo, rep.Config.Pace, rep.Config.Down, rep.Config.Quiet, rep.Config.Bound = c.Replicas, c.ScaleTo, c.Pace, c.Down, c.Quiet, c.Bound
	defer func() {
		rep.Machine.LoadEnd = loadAverage()
		rep.Wall = time.Since(start)
	}()
	r := &relRun{b: b, c: c, modes: relModes(), watch: &podWatch{ready: map[string][]time.Time{}, was: map[string]bool{}}}
	for _, m := range r.modes {
		rep.Modes = append(rep.Modes, m.Name)
	}
	err := r.start(ctx)
	defer func() {
		if r.cluster != nil {
			if err := r.cluster.Stop(); err != nil {
				b.progress("reliability: stop the dev cluster: %v", err)
			}
		}
	}()
	if err != nil {
		rep.Failed = err.Error()
		return rep
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go r.watch.run(watchCtx, r.cluster, 100*time.Millisecond)
	if err := r.deploy(ctx); err != nil {
		rep.Failed = err.Error()
		return rep
	}
	clients := map[string]*http.Client{}
	for _, m := range r.modes {
		hc, err := r.cluster.PodHTTPClient(relNamespace, m.Pod)
		if err != nil {
			rep.Failed = err.Error()
			return rep
		}
		clients[m.Name] = hc
	}
	// Bounded: the whole scenario's faults at their longest, twice over.
	load := startRelLoad(ctx, clients, c.Pace, time.Duration(len(c.Faults))*2*(c.Wait+c.Down+c.Quiet+c.Bound))
	defer load.stop()
	r.load = load
	if err := r.warm(ctx, load); err != nil {
		rep.Failed = err.Error()
		return rep
	}
	for _, f := range reliabilityFaults() {
		if !selected(c.Faults, f.ID) {
			continue
		}
		fr := &faultReport{ID: f.ID, Title: f.Title, Converge: f.Converge, ZeroGoal: f.ZeroGoal}
		rep.Faults = append(rep.Faults, fr)
		b.progress("reliability: %s", f.Title)
		gate := time.Now()
		if err := r.steady(ctx, f.ID); err != nil {
			fr.Failed = err.Error()
			b.progress("reliability: %s: %v", f.ID, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		b.progress("reliability: %s: steady after %.1f s", f.ID, time.Since(gate).Seconds())
		o, err := f.run(ctx, r)
		if notRun, ok := errors.AsType[errNotRun](err); ok {
			fr.NotRun = string(notRun)
			continue
		}
		if err != nil {
			fr.Failed = err.Error()
			b.progress("reliability: %s: %v", f.ID, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if err := r.hold(ctx, c.Quiet); err != nil {
			fr.Failed = err.Error()
			break
		}
		// Then up to Bound more, until every mode uses the new state (but
		// the plain Service, which never will).
		devcluster.Poll(ctx, c.Bound, func(context.Context) (bool, error) {
			for _, m := range r.modes {
				if !m.measuredIn(f.ID) {
					continue
				}
				if row := r.measure(load.snapshot(m.Name), m, o); row.Measured && !row.Converged && !m.PerConnection {
					return false, nil
				}
			}
			return true, nil
		})
		fr.Start, fr.End, fr.Note = o.Start, o.End, o.Note
		for _, m := range r.modes {
			if m.measuredIn(f.ID) {
				fr.Rows = append(fr.Rows, r.measure(load.snapshot(m.Name), m, o))
			}
		}
		for _, row := range fr.Rows {
			b.progress("reliability: %s: %-30s %5d calls during, %3d failed, new state used after %s%s", f.ID, row.Mode, row.During, row.Failed,
				convergeText(row), map[bool]string{true: " (first error: " + row.FirstErr + ")", false: ""}[row.FirstErr != ""])
		}
	}
	return rep
}

// measure is one mode's figures for one fault.
func (r *relRun) measure(calls []call, m relMode, o *faultOutcome) *modeResult {
	res := &modeResult{Mode: m.Name, Ballast: m.Ballast}
	res.During, _, _ = window(calls, o.Start, o.End)
	_, res.Failed, res.FirstErr = window(calls, o.Start, o.End.Add(r.c.Quiet))
	if o.Modes != nil && !contains(o.Modes, m.Name) {
		return res
	}
	switch {
	case o.Hurt:
		// Over only once the mode answers without a failure again: a
		// mode still failing at the end of the wait was hurt longer than
		// its last failed call so far says.
		res.Measured, res.Converged = true, succeededFor(calls, time.Now()) >= steadyFor
		for _, c := range calls {
			if c.Err != "" && !c.Start.Before(o.Start) {
				res.Converge = max(res.Converge, c.End.Sub(o.Start))
			}
		}
	case o.Recover:
		res.Measured = true
		if t := firstOK(calls, o.Since); !t.IsZero() {
			res.Converge, res.Converged = t.Sub(o.Since), true
		}
	case len(o.NewPods) > 0:
		res.Measured, res.Converged = true, true
		for _, p := range o.NewPods {
			ready, ok := o.ReadyAt[p]
			if !ok {
				ready = r.watch.readyAfter(p, o.Start)
			}
			first := firstCallTo(calls, p, ready)
			if ready.IsZero() || first.IsZero() {
				res.Converged = false
				break
			}
			res.Converge = max(res.Converge, first.Sub(ready))
		}
	}
	return res
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func convergeText(r *modeResult) string {
	if !r.Measured {
		return "–"
	}
	return relCell(r.Converge, r.Converged)
}

// start brings up a dev cluster whose images are this run's binaries.
func (r *relRun) start(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("the reliability scenario runs a dev cluster: it needs root")
	}
	if r.b.opts.ProxyBinary == "" || r.b.opts.ControlBinary == "" {
		return errors.New("the reliability scenario needs the ballast-proxy and ballast-control binaries")
	}
	// The cluster pulls them as images, made from this run's binaries:
	// version N, and N+1 for the upgrade fault (the same binaries under
	// another version label, so other images; pushed by the fault).
	bins := map[string]string{
		"ballast": r.b.opts.Binary, "ballast-proxy": r.b.opts.ProxyBinary, "ballast-control": r.b.opts.ControlBinary,
	}
	images, err := image.FromBinaries(ctx, image.Ballast(), bins, image.Options{})
	if err != nil {
		return err
	}
	if r.next, err = image.FromBinaries(ctx, image.Ballast(), bins, image.Options{Version: upgradeTag}); err != nil {
		return err
	}
	r.b.progress("reliability: starting a dev cluster")
	cluster, err := devcluster.Start(ctx, devcluster.Options{Images: images})
	if err != nil {
		return fmt.Errorf("start the dev cluster: %w", err)
	}
	r.cluster = cluster
	return nil
}

// deploy applies the control plane, the greeters and the client pods, and
// waits until they are all Ready.
func (r *relRun) deploy(ctx context.Context) error {
	r.b.progress("reliability: installing Ballast (ballast install), the greeters and %d client pods", len(r.modes))
	// As `ballast install` does (charts/ballast: the control plane and the
	// sidecar injector). The proxyless clients' grpc-go sends no token over
	// plaintext (docs/security.md), so the control plane serves without
	// one (control.insecure, deploy/control-insecure's values).
	if err := r.cluster.InstallMeshProxyless(ctx); err != nil {
		return fmt.Errorf("ballast install: %w", err)
	}
	dep, err := r.cluster.Client.AppsV1().Deployments(controlNamespace).Get(ctx, controlDeployment, metav1.GetOptions{})
	if err != nil {
		return err
	}
	r.controlReplicas = 1
	if dep.Spec.Replicas != nil {
		r.controlReplicas = int(*dep.Spec.Replicas)
	}
	// The control plane and the clients stay on the first Node, so the
	// node-down fault takes only greeters away.
	// So does the injector: the sidecar client's pod is made by it.
	pin := fmt.Sprintf(`{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":%q}}}}}`, r.survivingNode())
	for _, d := range []string{controlDeployment, injectDeployment} {
		if _, err := r.cluster.Kubectl(ctx, nil, "-n", controlNamespace, "patch", "deployment", d, "--type=merge", "-p", pin); err != nil {
			return err
		}
	}
	if err := r.cluster.Apply(ctx, greeterManifests(r.c.Replicas)); err != nil {
		return err
	}
	if err := r.cluster.WaitInjecting(ctx, relNamespace, true); err != nil {
		return err
	}
	for i := range meshedGreeters {
		if err := r.createPod(ctx, meshedGreeter(i)); err != nil {
			return err
		}
	}
	for _, m := range r.modes {
		if err := r.createClient(ctx, clientPod(m)); err != nil {
			return err
		}
	}
	if err := r.cluster.WaitReadyEndpoints(ctx, controlNamespace, controlDeployment, "grpc-xds", r.controlReplicas, r.c.Wait); err != nil {
		return err
	}
	if _, err := r.waitGreeters(ctx, r.c.Replicas); err != nil {
		return err
	}
	for i := range meshedGreeters {
		if err := r.cluster.WaitPodReady(ctx, relNamespace, fmt.Sprintf("%s-%d", relMeshed, i), r.c.Wait); err != nil {
			return err
		}
	}
	for _, m := range r.modes {
		if err := r.cluster.WaitPodReady(ctx, relNamespace, m.Pod, r.c.Wait); err != nil {
			return err
		}
	}
	return nil
}

// createClient creates a client pod on the surviving Node.
func (r *relRun) createClient(ctx context.Context, pod *corev1.Pod) error {
	pod.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": r.survivingNode()}
	return r.createPod(ctx, pod)
}

// createPod creates a pod in the scenario's namespace and checks that
// the injector injected it unless it opts out (every pod says which).
func (r *relRun) createPod(ctx context.Context, pod *corev1.Pod) error {
	created, err := r.cluster.Client.CoreV1().Pods(relNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	if want := pod.Annotations[inject.OptOutAnnotation] != "false"; devcluster.Injected(created) != want {
		return fmt.Errorf("pod %s: injected %v, want %v (is the injector serving?)", pod.Name, !want, want)
	}
	return nil
}

// survivingNode is the Node the clients and the control plane run on.
func (r *relRun) survivingNode() string { return r.cluster.Nodes()[0] }

// warm waits until every mode has had a call answered by every greeter it
// will reach (the plain Service: one), so the faults start from steady
// state.
func (r *relRun) warm(ctx context.Context, load *relLoad) error {
	greeters := map[string][]string{}
	for _, m := range r.modes {
		ready, err := r.readyPods(ctx, m.greeters())
		if err != nil {
			return err
		}
		greeters[m.greeters()] = ready
	}
	since := time.Now()
	var missing []string
	err := devcluster.Poll(ctx, r.c.Wait, func(context.Context) (bool, error) {
		missing = missing[:0]
		for _, m := range r.modes {
			calls := load.snapshot(m.Name)
			want := greeters[m.greeters()]
			if m.Name == "plain Service (L4)" {
				if firstOK(calls, since).IsZero() {
					missing = append(missing, m.Name)
				}
				continue
			}
			for _, g := range want {
				if firstCallTo(calls, g, since).IsZero() {
					missing = append(missing, m.Name+"→"+g)
				}
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("before the faults, no answer yet for %v: %w", missing, err)
	}
	return nil
}

// steadyFor is how long every mode's calls must have gone on without a
// failure before a fault starts: longer than a call's 1 s deadline, so a
// call hanging on what the fault before left behind shows first.
const steadyFor = 2 * time.Second

// steady waits until the cluster and the load are back in the state each
// fault starts from: the greeters the Deployment asks for, all Ready; the
// control plane serving; and every mode measured in fault id answering
// without a failure for steadyFor. A fault that started earlier would be
// charged with the harm of the one before it.
func (r *relRun) steady(ctx context.Context, id string) error {
	if _, err := r.waitGreeters(ctx, r.c.Replicas); err != nil {
		return fmt.Errorf("not steady after the faults before it: %w", err)
	}
	if err := r.cluster.WaitReadyEndpoints(ctx, controlNamespace, controlDeployment, "grpc-xds", r.controlReplicas, r.c.Wait); err != nil {
		return fmt.Errorf("not steady after the faults before it: the control plane: %w", err)
	}
	var failing []string
	err := devcluster.Poll(ctx, r.c.Wait, func(context.Context) (bool, error) {
		failing = failing[:0]
		now := time.Now()
		for _, m := range r.modes {
			if m.measuredIn(id) && succeededFor(r.load.snapshot(m.Name), now) < steadyFor {
				failing = append(failing, m.Name)
			}
		}
		return len(failing) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("not steady after the faults before it: %v still failing calls: %w", failing, err)
	}
	return nil
}

// succeededFor is how long a mode's calls have gone on without a failure
// until now: from the start of the first call after the last failed one
// to the end of the last call. Zero if the last call failed, or if none
// ended within a call's deadline (one is hanging).
func succeededFor(calls []call, now time.Time) time.Duration {
	if len(calls) == 0 || now.Sub(calls[len(calls)-1].End) > time.Second {
		return 0
	}
	i := len(calls)
	for i > 0 && calls[i-1].Err == "" {
		i--
	}
	if i == len(calls) {
		return 0
	}
	return calls[len(calls)-1].End.Sub(calls[i].Start)
}

// greeterManifests are the greeters: a Deployment rolled one pod at a time
// with no pod down, a ClusterIP Service and a headless one, and the
// ServiceAccount and read access of the kubernetes:/// client.
func greeterManifests(replicas int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels: {%[6]s: %[7]s}
---
apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  selector: {app: %[2]s}
  ports: [{name: grpc, port: 50051, targetPort: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: %[3]s, namespace: %[1]s}
spec:
  clusterIP: None
  selector: {app: %[2]s}
  ports: [{name: grpc, port: 50051, targetPort: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: %[5]s, namespace: %[1]s}
spec:
  selector: {app: %[5]s}
  ports: [{name: grpc, port: 50051, targetPort: 50051}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: %[4]d
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  selector:
    matchLabels: {app: %[2]s}
  template:
    metadata:
      labels: {app: %[2]s}
      annotations: {%[8]s: "false"}
    spec:
      terminationGracePeriodSeconds: 5
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: %[2]s}}}
      containers:
      - name: greeter
        image: ballast:dev
        command: ["ballast", "greeter", "serve", "--address", ":50051"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {name: grpc, containerPort: 50051}
        readinessProbe:
          grpc: {port: 50051}
          periodSeconds: 1
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client-kubernetes, namespace: %[1]s}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ballast-reliability-client}
rules:
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ballast-reliability-client}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ballast-reliability-client}
subjects:
- {kind: ServiceAccount, name: client-kubernetes, namespace: %[1]s}
`, relNamespace, relService, relHeadless, replicas, relMeshed, inject.NamespaceLabel, inject.NamespaceEnabled, inject.OptOutAnnotation)
}

// meshedGreeters is how many greeters serve through their own sidecar.
const meshedGreeters = 2

// meshedGreeter is the i-th greeter served through its own sidecar, which
// the injector adds (capturing its declared port inbound).
// Plain pods, not a Deployment: only their sidecars' restarts are
// measured, and the kubelet restarts a pod's containers either way.
func meshedGreeter(i int) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", relMeshed, i), Namespace: relNamespace, Labels: map[string]string{"app": relMeshed},
			Annotations: map[string]string{inject.OptOutAnnotation: "true"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64(5)),
			Containers: []corev1.Container{{
				Name:    "greeter",
				Image:   "ballast:dev",
				Command: []string{"ballast", "greeter", "serve", "--address", ":50051"},
				Env:     []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Ports:   []corev1.ContainerPort{{Name: "grpc", ContainerPort: 50051}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 50051}},
					PeriodSeconds: 1},
			}},
		},
	}
	return pod
}

// clientPod is the greeter client of a mode: `ballast greeter client`
// serving /grpc_client on 8081, over one connection to its target.
func clientPod(m relMode) *corev1.Pod {
	env := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: m.Pod, Namespace: relNamespace, Labels: map[string]string{"app": m.Pod},
			Annotations: map[string]string{inject.OptOutAnnotation: strconv.FormatBool(m.Sidecar)}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64(5)),
			Containers: []corev1.Container{{
				Name:    "client",
				Image:   "ballast:dev",
				Command: append([]string{"ballast", "greeter", "client", "--listen", ":8081", "--target", m.Target}, m.Args...),
				Env:     env,
				Ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: 8081}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8081)}},
					PeriodSeconds: 1},
			}},
		},
	}
	if m.Discovery {
		pod.Spec.ServiceAccountName = "client-kubernetes"
	}
	if m.Proxyless {
		pod.Spec.Volumes = []corev1.Volume{{Name: "xds", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		bootstrap := corev1.EnvVar{Name: "GRPC_XDS_BOOTSTRAP", Value: "/var/run/ballast-xds/bootstrap.json"}
		mount := []corev1.VolumeMount{{Name: "xds", MountPath: "/var/run/ballast-xds"}}
		pod.Spec.InitContainers = []corev1.Container{{
			Name: "xds-bootstrap", Image: "ballast:dev",
			Command: []string{"ballast", "bootstrap", "--out", "$(GRPC_XDS_BOOTSTRAP)"},
			Env:     append(env, bootstrap), VolumeMounts: mount,
		}}
		c := &pod.Spec.Containers[0]
		c.Env, c.VolumeMounts = append(c.Env, bootstrap), mount
	}
	return pod
}
