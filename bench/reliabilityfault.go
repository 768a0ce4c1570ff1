package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/inject"
)

// reliabilityFaults are the faults, in the order they run.
func reliabilityFaults() []fault {
	return []fault{
		{ID: "rolling-update", Title: "1. Rolling update (maxSurge 1, maxUnavailable 0)", ZeroGoal: true,
			Converge: "each new pod's Ready → its first call (the slowest)", run: rollingUpdate},
		{ID: "scale", Title: "2. Scale out and in", ZeroGoal: true,
			Converge: "each new pod's Ready → its first call (the slowest)", run: scaleOutIn},
		{ID: "kill", Title: "3. kill -9 of one greeter's process",
			Converge: "the restarted pod's Ready → its first call", run: killPod},
		{ID: "control-plane-down", Title: "4. Control plane down, a greeter replaced meanwhile", ZeroGoal: true,
			Converge: "the replacement pod's Ready → its first call (proxyless and sidecar learn it when the control plane is back)", run: controlPlaneDown},
		{ID: "api-server-down", Title: "5. API server down (frozen with SIGSTOP: connections hang, as in a partition)", ZeroGoal: true,
			Converge: "–: nothing changes meanwhile", run: apiServerDown},
		{ID: "sidecar-restart", Title: "6. Sidecar of the client pod killed (-9) and restarted",
			Converge: "the kill → the sidecar client's next successful call", run: sidecarRestart},
		{ID: "server-sidecar-restart", Title: "6b. Sidecar of a server pod killed (-9) and restarted",
			Converge: "the pod's Ready again → its first call", run: serverSidecarRestart},
		{ID: "upgrade", Title: "7. Upgrade from version N to N+1: control plane, injector, then the sidecars by rolling their workloads", ZeroGoal: true,
			Converge: "–: no new endpoints; the calls go on through every step", run: upgrade},
		// Last: the scenario does not recover from it. The Node stays
		// away, and a dns:/// client keeps its connection to a lost pod
		// (silent: nothing closes it) and fails the calls it sends there.
		{ID: "node-down", Title: "8. A Node going away with its pods (power lost: its pods stop answering, silently)",
			Converge: "the failure → the end of the last failed call", run: nodeDown},
	}
}

// readyGreeters lists the greeter Deployment's pods that are Ready now, by
// name.
func (r *relRun) readyGreeters(ctx context.Context) ([]string, error) {
	return r.readyPods(ctx, relService)
}

// readyPods lists the pods labelled app that are Ready now, by name.
func (r *relRun) readyPods(ctx context.Context, app string) ([]string, error) {
	pods, err := r.cluster.Client.CoreV1().Pods(relNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				names = append(names, p.Name)
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// waitGreeters waits until exactly n greeter pods exist and are Ready, and
// returns them.
func (r *relRun) waitGreeters(ctx context.Context, n int) ([]string, error) {
	var ready []string
	err := devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		pods, err := r.cluster.Client.CoreV1().Pods(relNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + relService})
		if err != nil {
			return false, nil
		}
		ready, err = r.readyGreeters(ctx)
		return err == nil && len(pods.Items) == n && len(ready) == n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for %d ready greeters (ready: %v): %w", n, ready, err)
	}
	return ready, nil
}

func newNames(before, after []string) []string {
	var out []string
	for _, p := range after {
		if !slices.Contains(before, p) {
			out = append(out, p)
		}
	}
	return out
}

func rollingUpdate(ctx context.Context, r *relRun) (*faultOutcome, error) {
	before, err := r.readyGreeters(ctx)
	if err != nil {
		return nil, err
	}
	o := &faultOutcome{Start: time.Now()}
	if _, err := r.cluster.Kubectl(ctx, nil, "-n", relNamespace, "rollout", "restart", "deployment/"+relService); err != nil {
		return nil, err
	}
	if _, err := r.cluster.Kubectl(ctx, nil, "-n", relNamespace, "rollout", "status", "deployment/"+relService, "--timeout="+r.c.Wait.String()); err != nil {
		return nil, err
	}
	after, err := r.waitGreeters(ctx, r.c.Replicas)
	if err != nil {
		return nil, err
	}
	o.End, o.NewPods = time.Now(), newNames(before, after)
	return o, nil
}

func (r *relRun) scaleGreeters(ctx context.Context, n int) error {
	_, err := r.cluster.Kubectl(ctx, nil, "-n", relNamespace, "scale", "deployment/"+relService, "--replicas="+strconv.Itoa(n))
	return err
}

func scaleOutIn(ctx context.Context, r *relRun) (*faultOutcome, error) {
	before, err := r.readyGreeters(ctx)
	if err != nil {
		return nil, err
	}
	o := &faultOutcome{Start: time.Now(), Note: fmt.Sprintf("%d → %d → %d replicas", r.c.Replicas, r.c.ScaleTo, r.c.Replicas)}
	if err := r.scaleGreeters(ctx, r.c.ScaleTo); err != nil {
		return nil, err
	}
	after, err := r.waitGreeters(ctx, r.c.ScaleTo)
	if err != nil {
		return nil, err
	}
	o.NewPods = newNames(before, after)
	// The new pods serve for a while before the scale-in: long enough for
	// every mode that ever will to have called them.
	if err := r.hold(ctx, r.c.Quiet); err != nil {
		return nil, err
	}
	if err := r.scaleGreeters(ctx, r.c.Replicas); err != nil {
		return nil, err
	}
	if _, err := r.waitGreeters(ctx, r.c.Replicas); err != nil {
		return nil, err
	}
	o.End = time.Now()
	return o, nil
}

// hold waits d with the load running; a fault's own timing, not a wait
// for something to happen.
func (r *relRun) hold(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// netnsPids are the processes in a network namespace.
func netnsPids(ctx context.Context, netns string) ([]int, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", netns).Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns pids %s: %w", netns, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

func killPod(ctx context.Context, r *relRun) (*faultOutcome, error) {
	ready, err := r.readyGreeters(ctx)
	if err != nil || len(ready) == 0 {
		return nil, fmt.Errorf("no ready greeter to kill (%v)", err)
	}
	victim := ready[0]
	netns, err := r.cluster.PodNetns(relNamespace, victim)
	if err != nil {
		return nil, err
	}
	pids, err := netnsPids(ctx, netns)
	if err != nil {
		return nil, err
	}
	restarts, _, err := r.restartCount(ctx, victim, "greeter")
	if err != nil {
		return nil, err
	}
	var killed []int
	for _, pid := range pids {
		if strings.Contains(cmdline(pid), "greeter serve") {
			syscall.Kill(pid, syscall.SIGKILL)
			killed = append(killed, pid)
		}
	}
	if len(killed) == 0 {
		return nil, fmt.Errorf("no greeter process in %s's namespace %s (pids %v)", victim, netns, pids)
	}
	o := &faultOutcome{Start: time.Now(), NewPods: []string{victim}, Note: fmt.Sprintf("%s: pid %v", victim, killed)}
	// The kubelet restarts the container; the pod turns Ready again.
	back, err := r.waitRestarted(ctx, victim, "greeter", restarts)
	if err != nil {
		return nil, fmt.Errorf("%s after kill -9: %w", victim, err)
	}
	o.End, o.ReadyAt = back, map[string]time.Time{victim: back}
	return o, nil
}

// restartCount is the restarts of a pod's container (or native sidecar).
func (r *relRun) restartCount(ctx context.Context, pod, container string) (int32, bool, error) {
	p, err := r.cluster.Client.CoreV1().Pods(relNamespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return 0, false, err
	}
	ready := false
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" && c.Status == "True" {
			ready = true
		}
	}
	for _, cs := range append(p.Status.ContainerStatuses, p.Status.InitContainerStatuses...) {
		if cs.Name == container {
			return cs.RestartCount, ready, nil
		}
	}
	return 0, false, fmt.Errorf("pod %s has no container %s", pod, container)
}

// waitRestarted waits until container of pod has restarted more than
// before and the pod is Ready, and returns when that was seen.
func (r *relRun) waitRestarted(ctx context.Context, pod, container string, before int32) (time.Time, error) {
	var seen time.Time
	err := devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		n, ready, err := r.restartCount(ctx, pod, container)
		if err == nil && n > before && ready {
			seen = time.Now()
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("container %s not restarted and Ready: %w", container, err)
	}
	return seen, nil
}

const controlNamespace, controlDeployment = "ballast-system", "ballast-control"

func controlPlaneDown(ctx context.Context, r *relRun) (*faultOutcome, error) {
	before, err := r.readyGreeters(ctx)
	if err != nil || len(before) == 0 {
		return nil, fmt.Errorf("no ready greeter (%v)", err)
	}
	o := &faultOutcome{Start: time.Now()}
	if _, err := r.cluster.Kubectl(ctx, nil, "-n", controlNamespace, "scale", "deployment/"+controlDeployment, "--replicas=0"); err != nil {
		return nil, err
	}
	// Scaled back however this ends, so the faults after it have it.
	defer r.cluster.Kubectl(context.WithoutCancel(ctx), nil, "-n", controlNamespace, "scale", "deployment/"+controlDeployment, "--replicas="+strconv.Itoa(r.controlReplicas))
	if err := devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		pods, err := r.cluster.Client.CoreV1().Pods(controlNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + controlDeployment})
		return err == nil && len(pods.Items) == 0, nil
	}); err != nil {
		return nil, fmt.Errorf("control plane not gone: %w", err)
	}
	down := time.Now()
	// Meanwhile a greeter goes and another takes its place.
	if _, err := r.cluster.Kubectl(ctx, nil, "-n", relNamespace, "delete", "pod", before[0], "--wait=true", "--timeout="+r.c.Wait.String()); err != nil {
		return nil, err
	}
	after, err := r.waitGreeters(ctx, r.c.Replicas)
	if err != nil {
		return nil, err
	}
	o.NewPods = newNames(before, after)
	if err := r.hold(ctx, r.c.Down-time.Since(down)); err != nil {
		return nil, err
	}
	if _, err := r.cluster.Kubectl(ctx, nil, "-n", controlNamespace, "scale", "deployment/"+controlDeployment, "--replicas="+strconv.Itoa(r.controlReplicas)); err != nil {
		return nil, err
	}
	if err := r.cluster.WaitReadyEndpoints(ctx, controlNamespace, controlDeployment, "grpc-xds", r.controlReplicas, r.c.Wait); err != nil {
		return nil, err
	}
	o.End = time.Now()
	o.Note = fmt.Sprintf("down %.0f s; %s replaced by %v", o.End.Sub(down).Seconds(), before[0], o.NewPods)
	return o, nil
}

// apiServerPid finds the cluster's kube-apiserver: the process of that
// name whose arguments name the cluster's directory.
func (r *relRun) apiServerPid() (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(func() string { b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); return string(b) }(), "\x00"), "\x00")
		if len(args) > 1 && filepath.Base(args[0]) == "kube-apiserver" && strings.Contains(strings.Join(args, " "), r.cluster.Dir) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no kube-apiserver of the cluster in %s", r.cluster.Dir)
}

func apiServerDown(ctx context.Context, r *relRun) (*faultOutcome, error) {
	pid, err := r.apiServerPid()
	if err != nil {
		return nil, err
	}
	o := &faultOutcome{Start: time.Now()}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, err
	}
	err = r.hold(ctx, r.c.Down)
	syscall.Kill(pid, syscall.SIGCONT)
	if err != nil {
		return nil, err
	}
	if err := devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		_, err := r.cluster.Client.CoreV1().Namespaces().Get(ctx, relNamespace, metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return nil, fmt.Errorf("API server not answering after SIGCONT: %w", err)
	}
	o.End = time.Now()
	o.Note = fmt.Sprintf("kube-apiserver (pid %d) stopped %.0f s", pid, r.c.Down.Seconds())
	// Every Node's lease is stale now: the node controller may mark their
	// pods not ready until the agents renew the leases. Watch for that
	// through the quiet period, and until every greeter is Ready again.
	fewest, firstLow, lastLow := r.c.Replicas, time.Time{}, time.Time{}
	err = devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		ready, err := r.readyGreeters(ctx)
		if err != nil {
			return false, nil
		}
		fewest = min(fewest, len(ready))
		if len(ready) < r.c.Replicas {
			if firstLow.IsZero() {
				firstLow = time.Now()
			}
			lastLow = time.Now()
			return false, nil
		}
		return time.Since(o.End) >= r.c.Quiet, nil
	})
	if err != nil {
		return nil, fmt.Errorf("greeters not all Ready after the API server came back (fewest %d of %d): %w", fewest, r.c.Replicas, err)
	}
	if fewest < r.c.Replicas {
		o.Note += fmt.Sprintf("; once it answered, the node controller marked greeters not ready (the Nodes' leases were stale): %d of %d Ready at the fewest, from %.0f s to %.0f s after it answered",
			fewest, r.c.Replicas, firstLow.Sub(o.End).Seconds(), lastLow.Sub(o.End).Seconds())
	} else {
		o.Note += "; every greeter stayed Ready after it answered"
	}
	return o, nil
}

func sidecarRestart(ctx context.Context, r *relRun) (*faultOutcome, error) {
	var mode relMode
	for _, m := range r.modes {
		if m.Sidecar && m.OnlyIn == "" {
			mode = m
		}
	}
	if mode.Pod == "" {
		return &faultOutcome{Start: time.Now(), End: time.Now(), Note: "no sidecar mode in this run"}, nil
	}
	restarts, killed, err := r.killSidecar(ctx, mode.Pod)
	if err != nil {
		return nil, err
	}
	o := &faultOutcome{Start: time.Now(), Recover: true, Modes: []string{mode.Name},
		Note: fmt.Sprintf("%s: ballast-proxy pid %v; the greeters it calls run no sidecar (6b kills a server's)", mode.Pod, killed)}
	o.Since = o.Start
	if o.End, err = r.waitRestarted(ctx, mode.Pod, inject.ProxyContainerName, restarts); err != nil {
		return nil, fmt.Errorf("%s after its sidecar was killed: %w", mode.Pod, err)
	}
	return o, nil
}

// serverSidecarRestart kills the sidecar of a greeter that serves through
// one: its inbound capture then leads nowhere until the kubelet restarts
// it, and the pod is not Ready meanwhile (the greeter's probe goes through
// the capture too), so clients should stop picking it.
func serverSidecarRestart(ctx context.Context, r *relRun) (*faultOutcome, error) {
	var mode relMode
	for _, m := range r.modes {
		if m.Greeters == relMeshed {
			mode = m
		}
	}
	ready, err := r.readyPods(ctx, relMeshed)
	if err != nil || len(ready) < meshedGreeters {
		return nil, fmt.Errorf("%d of %d sidecar-served greeters ready (%v)", len(ready), meshedGreeters, err)
	}
	victim := ready[0]
	restarts, killed, err := r.killSidecar(ctx, victim)
	if err != nil {
		return nil, err
	}
	o := &faultOutcome{Start: time.Now(), NewPods: []string{victim}, Modes: []string{mode.Name},
		Note: fmt.Sprintf("%s: ballast-proxy pid %v, called by %s through its own sidecar", victim, killed, mode.Pod)}
	back, err := r.waitRestarted(ctx, victim, inject.ProxyContainerName, restarts)
	if err != nil {
		return nil, fmt.Errorf("%s after its sidecar was killed: %w", victim, err)
	}
	o.End, o.ReadyAt = back, map[string]time.Time{victim: back}
	return o, nil
}

// killSidecar kills -9 the proxy (not its init) in pod's network
// namespace, and returns the sidecar container's restarts before.
func (r *relRun) killSidecar(ctx context.Context, pod string) (restarts int32, killed []int, err error) {
	netns, err := r.cluster.PodNetns(relNamespace, pod)
	if err != nil {
		return 0, nil, err
	}
	pids, err := netnsPids(ctx, netns)
	if err != nil {
		return 0, nil, err
	}
	if restarts, _, err = r.restartCount(ctx, pod, inject.ProxyContainerName); err != nil {
		return 0, nil, err
	}
	for _, pid := range pids {
		if cl := cmdline(pid); strings.Contains(cl, "ballast-proxy") && !strings.Contains(cl, " init") {
			syscall.Kill(pid, syscall.SIGKILL)
			killed = append(killed, pid)
		}
	}
	if len(killed) == 0 {
		return 0, nil, fmt.Errorf("no ballast-proxy process in %s's namespace (pids %v)", pod, pids)
	}
	return restarts, killed, nil
}

// nodeDown fails the Node the clients and the control plane are not on
// (they are pinned to the first: survivingNode) with the greeters it
// runs, as a machine that loses power: its pods stop answering, silently.
// The fault lasts until Kubernetes has noticed: the node lifecycle
// controller marks the Node NotReady and its pods not ready, which takes
// them out of the EndpointSlices. Their eviction and replacement, 300 s
// later by default, is capacity, not what the clients see, and is left
// out. It starts from a steady cluster: after the API server's outage
// the Nodes may still be NotReady (a virtual kubelet reports its status
// once a minute) and the greeters with them.
func nodeDown(ctx context.Context, r *relRun) (*faultOutcome, error) {
	nodes := r.cluster.Nodes()
	if len(nodes) < 2 {
		return nil, errNotRun("the dev cluster has one Node, which the clients need")
	}
	victim := nodes[len(nodes)-1]
	var lost []string
	err := devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		for _, name := range nodes {
			if ready, err := r.nodeReady(ctx, name); err != nil || !ready {
				return false, nil
			}
		}
		pods, err := r.cluster.Client.CoreV1().Pods(relNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + relService})
		if err != nil {
			return false, nil
		}
		ready, err := r.readyGreeters(ctx)
		if err != nil || len(ready) != r.c.Replicas {
			return false, nil
		}
		lost = nil
		for _, p := range pods.Items {
			if p.Spec.NodeName == victim && slices.Contains(ready, p.Name) {
				lost = append(lost, p.Name)
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("no steady cluster to fail a Node in (every Node Ready, %d greeters Ready): %w", r.c.Replicas, err)
	}
	if len(lost) == 0 {
		return nil, errNotRun("no greeter runs on " + victim + " (the scheduler put them all elsewhere)")
	}
	o := &faultOutcome{Start: time.Now(), Hurt: true}
	if err := r.cluster.FailNode(ctx, victim); err != nil {
		return nil, err
	}
	var notReady time.Time
	err = devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		if notReady.IsZero() {
			if ready, err := r.nodeReady(ctx, victim); err == nil && !ready {
				notReady = time.Now()
			}
		}
		ready, err := r.readyGreeters(ctx)
		if err != nil {
			return false, nil
		}
		for _, p := range lost {
			if slices.Contains(ready, p) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s failed with %v, which are still Ready: %w", victim, lost, err)
	}
	o.End = time.Now()
	o.Note = fmt.Sprintf("%s with %v; the Node NotReady after %s, its greeters not ready after %.0f s (Kubernetes' defaults)",
		victim, lost, sinceText(o.Start, notReady), o.End.Sub(o.Start).Seconds())
	return o, nil
}

// nodeReady says whether a Node's Ready condition is True.
func (r *relRun) nodeReady(ctx context.Context, name string) (bool, error) {
	n, err := r.cluster.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True", nil
		}
	}
	return false, nil
}

// sinceText is how long after start t was, or "not seen".
func sinceText(start, t time.Time) string {
	if t.IsZero() {
		return "not seen"
	}
	return fmt.Sprintf("%.0f s", t.Sub(start).Seconds())
}

// errNotRun says a fault was not run, and why.
type errNotRun string

func (e errNotRun) Error() string { return string(e) }
