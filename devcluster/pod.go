package devcluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podRuntime runs one pod: its network namespace, init containers in
// order, then every container under a supervisor that restarts it per the
// pod's restartPolicy, and readiness probes. Its status is rebuilt from
// this state and pushed to the node agent after every change.
type podRuntime struct {
	node  *nodeAgent
	log   *slog.Logger
	dir   string
	net   *podNet
	vols  *podVolumes // written by the volume sync alone after creation
	start metav1.Time

	ctx    context.Context // ends when the pod is torn down
	cancel context.CancelFunc
	wg     sync.WaitGroup

	notifyMu sync.Mutex // orders notifications; see changed

	mu          sync.Mutex
	pod         *corev1.Pod // spec as given (env resolved), status maintained here
	inits       []*containerRuntime
	containers  []*containerRuntime
	initsDone   bool
	terminating bool
	finished    bool          // every process ended and the namespace is gone
	finishedCh  chan struct{} // closed when finished turns true
	failMessage string
}

// containerRuntime is one container's process and status.
type containerRuntime struct {
	spec     corev1.Container
	env      []string // resolved at pod creation
	logPath  string
	proc     *process
	img      *pulledImage // the image of the last start; nil for HostImage
	restarts int32
	ready    bool
	started  metav1.Time
	last     *corev1.ContainerStateTerminated
	waiting  string // reason while not running, e.g. CrashLoopBackOff
}

func newContainerRuntime(dir string, c corev1.Container) *containerRuntime {
	return &containerRuntime{spec: c, logPath: filepath.Join(dir, c.Name+".log"), waiting: "ContainerCreating"}
}

// run drives the pod until its context ends. It owns the supervisors and
// probes it starts, and waits for them.
func (p *podRuntime) run() {
	defer p.wg.Done()
	p.wg.Add(1)
	go p.syncVolumes()
	for _, c := range p.inits {
		if isSidecar(c.spec) {
			if !p.startSidecar(c) {
				return
			}
			continue
		}
		if !p.runInit(c) {
			return
		}
	}
	p.mu.Lock()
	p.initsDone = true
	p.mu.Unlock()
	p.changed()
	for _, c := range p.containers {
		p.startContainer(c)
	}
}

// runInit runs an init container to success, retrying per restartPolicy.
// It returns false if the pod cannot proceed.
func (p *podRuntime) runInit(c *containerRuntime) bool {
	for attempt := 0; ; attempt++ {
		if p.ctx.Err() != nil {
			return false
		}
		code, ok := p.runOnce(c)
		if !ok {
			return false
		}
		if code == 0 {
			return true
		}
		if p.pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
			p.mu.Lock()
			p.failMessage = fmt.Sprintf("init container %s exited with %d", c.spec.Name, code)
			p.mu.Unlock()
			p.changed()
			return false
		}
		if !p.backoff(c, attempt) {
			return false
		}
	}
}

// supervise runs a container and restarts it per restartPolicy (a native
// sidecar's own restartPolicy Always overrides the pod's).
func (p *podRuntime) supervise(c *containerRuntime) {
	defer p.wg.Done()
	policy := p.pod.Spec.RestartPolicy
	if isSidecar(c.spec) {
		policy = corev1.RestartPolicyAlways
	}
	for attempt := 0; ; attempt++ {
		code, ok := p.runOnce(c)
		if !ok {
			return
		}
		switch policy {
		case corev1.RestartPolicyNever:
			return
		case corev1.RestartPolicyOnFailure:
			if code == 0 {
				return
			}
		}
		if !p.backoff(c, attempt) {
			return
		}
	}
}

// backoff waits before a restart, as the kubelet's CrashLoopBackOff does
// (shorter: 1s doubling to 20s), and counts the restart.
func (p *podRuntime) backoff(c *containerRuntime, attempt int) bool {
	p.mu.Lock()
	c.restarts++
	c.waiting = "CrashLoopBackOff"
	p.mu.Unlock()
	p.changed()
	d := time.Second << min(attempt, 5)
	d = min(d, 20*time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// runOnce starts the container's process and waits for it to end. ok is
// false if it could not start or the pod is going away.
func (p *podRuntime) runOnce(c *containerRuntime) (code int, ok bool) {
	// The pull first, outside the lock: it may take a while.
	argv, img, err := p.node.agent.command(p.ctx, c.spec)
	waiting := "RunContainerError"
	if err != nil && img == nil && !isHostImage(c.spec.Image) {
		waiting = "ErrImagePull"
	}
	p.mu.Lock()
	if p.terminating || p.ctx.Err() != nil {
		p.mu.Unlock()
		return 0, false
	}
	var u user
	if err == nil {
		u, err = containerUser(p.pod, c.spec, img)
	}
	if err == nil {
		err = u.available()
	}
	env := p.env(c, img)
	var script string
	if err == nil {
		script, err = p.containerScript(c, img, u)
	}
	if err == nil {
		var proc *process
		proc, err = startProcessFlags(c.spec.Name, c.logPath, env, syscall.CLONE_NEWUTS, p.launcher(script, argv)...)
		if err == nil {
			c.proc = proc
			c.img = img
			c.started = metav1.Now()
			c.waiting = ""
			c.ready = c.spec.ReadinessProbe == nil
		}
	}
	if err != nil {
		c.waiting = waiting
		p.mu.Unlock()
		p.log.Warn("container did not start", "container", c.spec.Name, "err", err)
		p.changed()
		// A missing binary or image stays missing: back off the longest.
		return 1, p.pod.Spec.RestartPolicy != corev1.RestartPolicyNever && p.backoff(c, 5)
	}
	proc := c.proc
	p.mu.Unlock()
	p.log.Info("container started", "container", c.spec.Name, "pid", proc.cmd.Process.Pid)
	p.changed()

	<-proc.done
	proc.signal(syscall.SIGKILL) // anything it left in its group
	code = proc.exitCode()
	p.mu.Lock()
	c.ready = false
	c.last = &corev1.ContainerStateTerminated{
		ExitCode: int32(code), StartedAt: c.started, FinishedAt: metav1.Now(),
		Reason: map[bool]string{true: "Completed", false: "Error"}[code == 0],
	}
	c.proc = nil
	p.mu.Unlock()
	p.log.Info("container exited", "container", c.spec.Name, "code", code)
	p.changed()
	return code, true
}

// containerScript is the shell code the launcher runs before the
// container's program: for an image, build its root (rootScript) and bind
// the volumes into it, then enter it as u (chrootArgv); for HostImage,
// bind the volumes over the host's paths and switch to u (setpriv). Both
// happen in the container's own mount namespace.
func (p *podRuntime) containerScript(c *containerRuntime, img *pulledImage, u user) (string, error) {
	t := p.node.agent.tools
	if img == nil {
		mounts, err := p.vols.mountScript(c.spec, nil)
		if err != nil {
			return "", err
		}
		exec := "exec"
		if w := u.wrap(nil); len(w) > 0 {
			exec += " " + shellJoin(w)
		}
		return mounts + fmt.Sprintf(`%s "$0" && %s "$@"`, t.hostname, exec), nil
	}
	if wd := c.spec.WorkingDir; wd != "" && path.Clean(wd) != "/" {
		return "", fmt.Errorf("container %s: workingDir %q: the dev cluster runs containers in /", c.spec.Name, wd)
	}
	if wd := img.config.WorkingDir; wd != "" && path.Clean(wd) != "/" {
		return "", fmt.Errorf("container %s: image %s's working directory %q: the dev cluster runs containers in /", c.spec.Name, img.ref, wd)
	}
	scratch := filepath.Join(p.dir, "roots", c.spec.Name)
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		return "", err
	}
	mounts, err := p.vols.mountScript(c.spec, &t)
	if err != nil {
		return "", err
	}
	return t.rootScript(scratch, img.root) + mounts +
		fmt.Sprintf(`%s "$0" && exec %s "$R" "$@"`, t.hostname, shellJoin(t.chrootArgv(u))), nil
}

// shellJoin quotes each word for sh.
func shellJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = shellQuote(w)
	}
	return strings.Join(q, " ")
}

// launcher is the command line that runs script and then argv as a
// container process: inside the pod's network namespace and its own mount
// namespace (both made by `ip netns exec`, which also binds the pod's
// /etc/resolv.conf, /etc/hosts and /etc/hostname over the host's), and in
// its own UTS namespace (the caller adds CLONE_NEWUTS) named as the
// kubelet names it, so os.Hostname() is the pod's hostname. script gets
// the hostname as $0 and argv as "$@".
func (p *podRuntime) launcher(script string, argv []string) []string {
	return append([]string{"ip", "netns", "exec", p.net.netns, p.node.agent.tools.sh, "-c", script, podHostname(p.pod)}, argv...)
}

// enter is the command prefix that runs a program beside c's process (for
// exec and exec probes) and c's image (nil for HostImage): in its network,
// mount and UTS namespaces while it runs, in its root and as its user for
// an image; else, for HostImage, in the pod's network namespace.
func (p *podRuntime) enter(c *containerRuntime) ([]string, *pulledImage, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.proc == nil {
		if isHostImage(c.spec.Image) {
			return []string{"ip", "netns", "exec", p.net.netns}, nil, nil
		}
		return nil, nil, fmt.Errorf("container %s is not running", c.spec.Name)
	}
	argv := []string{"nsenter", "-t", strconv.Itoa(c.proc.cmd.Process.Pid), "-n", "-m", "-u"}
	if c.img == nil {
		return append(argv, "--"), nil, nil
	}
	u, err := containerUser(p.pod, c.spec, c.img)
	if err != nil {
		return nil, nil, err
	}
	argv = append(argv, "-r", "-w")
	if u.uid != 0 || u.gid != 0 {
		argv = append(argv, "-S", strconv.FormatInt(u.uid, 10), "-G", strconv.FormatInt(u.gid, 10))
	}
	return append(argv, "--"), c.img, nil
}

// syncVolumes keeps the pod's volumes up to date until the pod goes.
func (p *podRuntime) syncVolumes() {
	defer p.wg.Done()
	t := time.NewTicker(volumeSyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		pod := p.pod.DeepCopy()
		p.mu.Unlock()
		if err := p.vols.sync(pod, p.net.ip.String()); err != nil {
			p.log.Warn("volume sync", "err", err)
		}
	}
}

// env is the container's environment: the image's (img; for HostImage a
// minimal base), then the container's own variables (the last of
// duplicates wins).
func (p *podRuntime) env(c *containerRuntime, img *pulledImage) []string {
	if img != nil {
		return img.env(append(append([]string{"HOSTNAME=" + p.pod.Name}, p.node.agent.baseEnv...), c.env...))
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		// Not the host's home: client-go would load the host's
		// ~/.kube/config there before falling back to in-cluster config.
		"HOME=" + filepath.Join(p.dir, "home"),
		"HOSTNAME=" + p.pod.Name,
	}
	env = append(env, p.node.agent.baseEnv...)
	return append(env, c.env...)
}

// terminate stops every container (SIGTERM, SIGKILL after grace), removes
// the namespace and marks the pod finished. Safe to call more than once.
func (p *podRuntime) terminate(grace time.Duration) {
	p.mu.Lock()
	if p.terminating {
		p.mu.Unlock()
		return
	}
	p.terminating = true
	p.mu.Unlock()
	p.log.Info("terminating pod", "grace", grace)
	p.changed()
	go func() {
		p.cancel() // no restarts, no new processes, probes stop
		// The app's containers first, then native sidecars with what is
		// left of the grace period (at least 2s, as the kubelet gives), so
		// a proxy outlives the app that sends through it.
		var apps, sidecars []*process
		p.mu.Lock()
		for _, c := range append(append([]*containerRuntime{}, p.inits...), p.containers...) {
			switch {
			case c.proc == nil:
			case isSidecar(c.spec):
				sidecars = append(sidecars, c.proc)
			default:
				apps = append(apps, c.proc)
			}
		}
		p.mu.Unlock()
		began := time.Now()
		stopAll(apps, grace)
		rest := max(grace-time.Since(began), 0)
		if grace > 0 {
			rest = max(rest, 2*time.Second)
		}
		stopAll(sidecars, rest)
		p.wg.Wait()
		// Every process that had the volumes mounted is gone: their
		// mount namespaces with them.
		if err := os.RemoveAll(p.vols.dir); err != nil {
			p.log.Warn("removing pod volumes", "err", err)
		}
		if p.node.agent.tokens != nil {
			p.node.agent.tokens.forget(string(p.pod.UID))
		}
		if err := p.node.agent.net.removePod(context.Background(), p.net); err != nil {
			p.log.Warn("removing pod network", "err", err)
		}
		p.mu.Lock()
		p.finished = true
		p.mu.Unlock()
		close(p.finishedCh)
		p.log.Info("pod terminated")
		p.changed()
	}()
}

// changed pushes the current status to the node agent. Snapshot and
// notification happen under notifyMu, so notifications leave in the order
// their snapshots were taken and the last one is the newest: virtual-kubelet
// writes the last status it is told, and a stale snapshot delivered after a
// newer one (CreatePod's Pending overtaking the container's Running and
// Ready) would otherwise stay in the API server.
func (p *podRuntime) changed() {
	p.notifyMu.Lock()
	defer p.notifyMu.Unlock()
	p.node.notify(p.snapshot())
}

// snapshot is the pod with its current status.
func (p *podRuntime) snapshot() *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod := p.pod.DeepCopy()
	st := &pod.Status
	st.HostIP = "127.0.0.1"
	st.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	st.PodIP = p.net.ip.String()
	st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	st.StartTime = &p.start
	// The API server computes the QoS class at creation and refuses a
	// status that changes it (a pod with requests is Burstable).
	if st.QOSClass == "" {
		st.QOSClass = corev1.PodQOSBestEffort
	}
	st.InitContainerStatuses = nil
	st.ContainerStatuses = nil
	allReady, running, exited, failed := true, 0, 0, 0
	for _, c := range p.inits {
		cs := p.containerStatus(c)
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
		if isSidecar(c.spec) {
			// A native sidecar counts towards the pod's readiness.
			allReady = allReady && cs.Ready && cs.State.Running != nil
		}
	}
	for _, c := range p.containers {
		cs := p.containerStatus(c)
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil:
			exited++
			if cs.State.Terminated.ExitCode != 0 {
				failed++
			}
		}
	}
	n := len(p.containers)
	switch {
	case p.failMessage != "":
		st.Phase, st.Message = corev1.PodFailed, p.failMessage
	case p.finished || (exited == n && p.pod.Spec.RestartPolicy != corev1.RestartPolicyAlways) ||
		(exited == n && failed == 0 && p.pod.Spec.RestartPolicy == corev1.RestartPolicyOnFailure):
		st.Phase = corev1.PodSucceeded
		if failed > 0 {
			st.Phase = corev1.PodFailed
		}
	case p.initsDone && running+exited > 0:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	ready := allReady && p.initsDone && !p.terminating && !p.finished && running == n
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true),
		cond(corev1.PodReadyToStartContainers, true),
		cond(corev1.PodInitialized, p.initsDone),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
	// Keep transition times stable so an unchanged status compares equal.
	for i := range st.Conditions {
		for _, old := range p.pod.Status.Conditions {
			if old.Type == st.Conditions[i].Type && old.Status == st.Conditions[i].Status {
				st.Conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	p.pod.Status.Conditions = st.Conditions
	return pod
}

// containerStatus must be called with p.mu held.
func (p *podRuntime) containerStatus(c *containerRuntime) corev1.ContainerStatus {
	cs := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      imageID(c),
		ContainerID:  "ballast-dev://" + filepath.Base(p.dir) + "/" + c.spec.Name,
		RestartCount: c.restarts,
		Ready:        c.ready && c.proc != nil && !p.terminating,
	}
	started := c.proc != nil
	cs.Started = &started
	switch {
	case c.proc != nil:
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.started}
		if c.last != nil {
			cs.LastTerminationState.Terminated = c.last.DeepCopy()
		}
	case c.last != nil && (p.finished || c.waiting == "" || p.terminating):
		cs.State.Terminated = c.last.DeepCopy()
	case p.finished:
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}
	default:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waiting}
		if c.last != nil {
			cs.LastTerminationState.Terminated = c.last.DeepCopy()
		}
	}
	if cs.State.Waiting != nil && cs.State.Waiting.Reason == "" {
		cs.State.Waiting.Reason = "PodInitializing"
	}
	return cs
}

// setReady records a readiness result and reports a change.
func (p *podRuntime) setReady(c *containerRuntime, ready bool) {
	p.mu.Lock()
	changed := c.ready != ready
	c.ready = ready
	p.mu.Unlock()
	if changed {
		p.log.Info("readiness changed", "container", c.spec.Name, "ready", ready)
		p.changed()
	}
}

// key is namespace/name.
func podKey(namespace, name string) string { return namespace + "/" + name }

func (p *podRuntime) String() string {
	return podKey(p.pod.Namespace, p.pod.Name)
}

// imageID is what the container runs: repository@digest of the image
// pulled for it.
func imageID(c *containerRuntime) string {
	if c.img == nil {
		return "ballast-dev://" + c.spec.Image
	}
	return c.img.id
}
