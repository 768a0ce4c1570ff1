package devcluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// statusSync is the level-triggered half of a node's status path.
//
// virtual-kubelet's pod controller is edge-triggered: the agent notifies it
// of each change and it writes the last status it was told, keyed by pod
// name. A status can be lost that way: notifications that overtake each
// other, a write that keeps failing and is dropped after its retries, a
// status someone else wrote. If nothing changes afterwards, the API server keeps
// the stale status for good. So every tick the node compares each of its
// pods' status as the API server has it (the informer cache) with its own,
// and where they differ in what controllers read on two ticks in a row (the
// first tick leaves the edge-triggered path time to deliver), it writes its
// own status and notifies again, as the kubelet's status manager does.
type statusSync struct {
	node   *nodeAgent
	client kubernetes.Interface
	// differing holds, per pod, the summary of the agent's status when it
	// last differed from the API server's; failed, the last write error
	// logged, so a write that keeps failing warns once. Owned by the loop.
	differing map[types.UID]string
	failed    map[types.UID]string
}

func newStatusSync(node *nodeAgent, client kubernetes.Interface) *statusSync {
	return &statusSync{node: node, client: client, differing: map[types.UID]string{}, failed: map[types.UID]string{}}
}

// run compares and repairs every tick until ctx ends.
func (s *statusSync) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.once(ctx)
	}
}

// once is one comparison of every pod the node runs; it returns how many
// statuses it wrote.
func (s *statusSync) once(ctx context.Context) int {
	if s.node.pods == nil { // virtual-kubelet has not handed over its lister yet
		return 0
	}
	s.node.mu.Lock()
	runtimes := make([]*podRuntime, 0, len(s.node.running))
	for _, p := range s.node.running {
		runtimes = append(runtimes, p)
	}
	s.node.mu.Unlock()

	written := 0
	differing, failed := map[types.UID]string{}, map[types.UID]string{}
	for _, p := range runtimes {
		want := p.snapshot()
		have, err := s.node.pods.Pods(want.Namespace).Get(want.Name)
		// Another pod by that name (the API server's is newer: its own
		// runtime comes through CreatePod), or a pod that ended: the
		// kubelet never moves a pod out of a terminal phase.
		if err != nil || have.UID != want.UID ||
			have.Status.Phase == corev1.PodSucceeded || have.Status.Phase == corev1.PodFailed {
			continue
		}
		sum := statusSummary(want.Status)
		if sum == statusSummary(have.Status) {
			continue
		}
		differing[want.UID] = sum
		if s.differing[want.UID] != sum {
			continue // first sighting: the notification may be on its way
		}
		update := have.DeepCopy()
		update.Status = want.Status
		if have.Status.QOSClass != "" { // immutable, set by the API server
			update.Status.QOSClass = have.Status.QOSClass
		}
		_, err = s.client.CoreV1().Pods(want.Namespace).UpdateStatus(ctx, update, metav1.UpdateOptions{})
		switch {
		case err == nil:
			written++
			p.log.Info("pod status was stale in the API server, rewritten", "had", statusSummary(have.Status), "now", sum)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err), ctx.Err() != nil:
			// Gone, or changed since the cache saw it: the next tick looks again.
		default:
			failed[want.UID] = err.Error()
			if s.failed[want.UID] != err.Error() {
				p.log.Warn("rewriting stale pod status", "err", err)
			}
		}
		// Virtual-kubelet's last status for the pod may be the stale one;
		// tell it the current one (in order with the pod's own
		// notifications), so its own retries write that.
		p.changed()
	}
	s.differing, s.failed = differing, failed
	return written
}

// statusSummary is what controllers read of a pod's status: phase, address,
// conditions, and each container's state, readiness and restarts. Times are
// left out (the API server keeps them to the second), and order does not
// count.
func statusSummary(st corev1.PodStatus) string {
	var parts []string
	conds := make([]string, 0, len(st.Conditions))
	for _, c := range st.Conditions {
		conds = append(conds, fmt.Sprintf("%s=%s", c.Type, c.Status))
	}
	slices.Sort(conds)
	containers := func(kind string, list []corev1.ContainerStatus) {
		for _, c := range list {
			state := "waiting"
			switch {
			case c.State.Running != nil:
				state = "running"
			case c.State.Terminated != nil:
				state = fmt.Sprintf("terminated(%d)", c.State.Terminated.ExitCode)
			}
			parts = append(parts, fmt.Sprintf("%s/%s:%s,ready=%t,restarts=%d", kind, c.Name, state, c.Ready, c.RestartCount))
		}
	}
	containers("init", st.InitContainerStatuses)
	containers("container", st.ContainerStatuses)
	slices.Sort(parts)
	return fmt.Sprintf("phase=%s reason=%q message=%q ip=%s conditions=[%s] %s",
		st.Phase, st.Reason, st.Message, st.PodIP, strings.Join(conds, " "), strings.Join(parts, " "))
}
