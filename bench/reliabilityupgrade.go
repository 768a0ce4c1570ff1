package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/inject"
)

// injectDeployment is the sidecar injector's Deployment, in
// controlNamespace.
const injectDeployment = "ballast-inject"

// upgradeTag tags version N+1's images; version N is devcluster.DevTag.
const upgradeTag = "next"

// upgrade moves the installation from version N to N+1 under load as a
// user does: `ballast install` again with the new tag (the control plane
// and the injector roll, one new pod up before an old one goes), then the
// sidecars by rolling the workloads that carry them: the sidecar client's
// pod is replaced by one the new injector injects, which takes the load
// once Ready, before the old pod is deleted.
func upgrade(ctx context.Context, r *relRun) (*faultOutcome, error) {
	if err := r.cluster.PushImages(ctx, upgradeTag, r.next); err != nil {
		return nil, err
	}
	o := &faultOutcome{Start: time.Now()}
	if err := r.cluster.UpgradeMesh(ctx, upgradeTag, true); err != nil {
		return nil, fmt.Errorf("ballast install of version N+1: %w", err)
	}
	for _, d := range []struct{ deployment, container, image string }{
		{controlDeployment, "control", "ballast-control:" + upgradeTag},
		{injectDeployment, "inject", "ballast:" + upgradeTag},
	} {
		if err := r.waitRolledTo(ctx, d.deployment, d.container, d.image); err != nil {
			return nil, err
		}
	}
	planeDone := time.Now()
	var rolled []string
	for _, m := range r.modes {
		// The modes this fault measures; the 6b greeters' sidecars and
		// their client stay at N (pods of their own, for that fault).
		if !m.Sidecar || !m.measuredIn("upgrade") {
			continue
		}
		pod := clientPod(m)
		pod.Name = m.Pod + "-" + upgradeTag
		if err := r.createClient(ctx, pod); err != nil {
			return nil, err
		}
		if err := r.cluster.WaitPodReady(ctx, relNamespace, pod.Name, r.c.Wait); err != nil {
			return nil, err
		}
		got, err := r.cluster.Client.CoreV1().Pods(relNamespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		if img := containerImage(got.Spec.InitContainers, inject.ProxyContainerName) + containerImage(got.Spec.Containers, inject.ProxyContainerName); img != "ballast-proxy:"+upgradeTag {
			return nil, fmt.Errorf("%s: the injector of version N+1 gave it sidecar image %q, want ballast-proxy:%s", pod.Name, img, upgradeTag)
		}
		hc, err := r.cluster.PodHTTPClient(relNamespace, pod.Name)
		if err != nil {
			return nil, err
		}
		switched := time.Now()
		r.load.switchClient(m.Name, hc)
		// The mode's calls are one at a time: once one that started after
		// the switch has ended, none is left on the old pod.
		err = devcluster.Poll(ctx, r.c.Wait, func(context.Context) (bool, error) {
			calls := r.load.snapshot(m.Name)
			return len(calls) > 0 && !calls[len(calls)-1].Start.Before(switched), nil
		})
		if err != nil {
			return nil, fmt.Errorf("no call through %s after the switch: %w", pod.Name, err)
		}
		if err := r.cluster.Client.CoreV1().Pods(relNamespace).Delete(ctx, m.Pod, metav1.DeleteOptions{}); err != nil {
			return nil, err
		}
		err = devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
			_, err := r.cluster.Client.CoreV1().Pods(relNamespace).Get(ctx, m.Pod, metav1.GetOptions{})
			return err != nil && strings.Contains(err.Error(), "not found"), nil
		})
		if err != nil {
			return nil, fmt.Errorf("old sidecar client %s not gone: %w", m.Pod, err)
		}
		rolled = append(rolled, m.Pod+" → "+pod.Name)
	}
	o.End = time.Now()
	o.Note = fmt.Sprintf("%s → %s: `ballast install` with the new tag rolled the control plane and the injector in %.1f s; then the sidecar clients (%s) in %.1f s",
		"ballast-*:"+devcluster.DevTag, "ballast-*:"+upgradeTag, planeDone.Sub(o.Start).Seconds(), strings.Join(rolled, ", "), o.End.Sub(planeDone).Seconds())
	return o, nil
}

// waitRolledTo waits until every pod of a Deployment in controlNamespace
// that is not going away runs image in container, and is Ready.
func (r *relRun) waitRolledTo(ctx context.Context, deployment, container, image string) error {
	var images []string
	err := devcluster.Poll(ctx, r.c.Wait, func(ctx context.Context) (bool, error) {
		pods, err := r.cluster.Client.CoreV1().Pods(controlNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + deployment})
		if err != nil {
			return false, nil
		}
		images = images[:0]
		done := true
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			img := containerImage(p.Spec.Containers, container)
			images = append(images, p.Name+"="+img)
			ready := false
			for _, c := range p.Status.Conditions {
				if c.Type == "Ready" && c.Status == "True" {
					ready = true
				}
			}
			done = done && img == image && ready
		}
		return done && len(images) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("%s not rolled to %s (pods: %v): %w", deployment, image, images, err)
	}
	// The install applies the chart server-side; the pin to the surviving
	// Node (deploy's patch, another field manager's) must outlive it, or
	// the node-down fault could take the control plane away.
	pods, err := r.cluster.Client.CoreV1().Pods(controlNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + deployment})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Spec.NodeName != r.survivingNode() {
			return fmt.Errorf("%s: pod %s of version N+1 runs on %s, not %s: the upgrade dropped the pin", deployment, p.Name, p.Spec.NodeName, r.survivingNode())
		}
	}
	return nil
}

// containerImage is the image of the container called name; "" if none is.
func containerImage(cs []corev1.Container, name string) string {
	for _, c := range cs {
		if c.Name == name {
			return c.Image
		}
	}
	return ""
}
