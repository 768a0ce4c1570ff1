package demo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
)

// KubeNamespace is where RunKube replays the article: a namespace of its
// own, so that labelling it for injection touches nothing else.
const KubeNamespace = "ballast-demo"

// RunKube replays the article on a real cluster (see devcluster), every
// mode the embedded demo shows, with the objects a user would apply: the
// article's Service, a Deployment of greeters and the client pod, in
// KubeNamespace. The client's calls go
//   - to native-tools-2:50051 through the ClusterIP (kube-proxy's
//     per-connection choice);
//   - with --target kubernetes:///…, through Ballast's resolver reading the
//     cluster's EndpointSlices;
//   - with --target xds:///… and a bootstrap, through grpc-go's xDS client
//     fed by the control plane Cluster.InstallMeshProxyless installs;
//   - as the article ends: the namespace labelled for injection and the
//     pods recreated, the unchanged client's one connection goes to its
//     sidecar, which balances each call.
//
// image holds the ballast binary; the control plane's and the sidecar's
// images are the dev cluster's (InstallMesh).
func RunKube(ctx context.Context, c *devcluster.Cluster, image string, opts Options) (*Result, error) {
	opts.Calls = max(opts.Calls, 1)
	opts.Pods = max(opts.Pods, 1)
	ns := KubeNamespace
	if err := c.Apply(ctx, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n"); err != nil {
		return nil, err
	}
	if err := c.Apply(ctx, devcluster.ArticleServers(ns, image, opts.Pods)); err != nil {
		return nil, err
	}
	target := fmt.Sprintf("%s.%s:%d", Service, ns, GRPCPort)
	rows := []struct {
		mode, description string
		client            devcluster.ClientKind
		clientArgs        []string
		// perCall modes warm up until every pod has answered, as Run's
		// do, so the counted calls show the balancing, not start-up.
		perCall bool
		// before readies the cluster for the mode.
		before func() error
	}{
		{mode: "plain-service", description: "the article's client dials native-tools-2:50051: CoreDNS → ClusterIP → one pod per connection"},
		{mode: "client-side", description: "the same client with --target kubernetes:///" + target + " (round_robin over the EndpointSlices)",
			perCall: true, client: devcluster.ClientKubernetes, clientArgs: []string{"--target", "kubernetes:///" + target}},
		{mode: "proxyless", description: "the same client with --target xds:///" + target + " and a bootstrap from `ballast bootstrap`: grpc-go's xDS client fed by ballast control",
			perCall: true, client: devcluster.ClientXDS, clientArgs: []string{"--target", "xds:///" + target},
			before: func() error { return c.InstallMeshProxyless(ctx) }},
		{mode: "sidecar", description: "the article's client unchanged, its namespace labelled for injection: its one connection goes to the injected sidecar, which balances each call",
			perCall: true, before: func() error { return injectAll(ctx, c, ns, image, opts.Pods) }},
	}
	res := &Result{}
	for _, row := range rows {
		if row.before != nil {
			if err := row.before(); err != nil {
				return nil, fmt.Errorf("mode %s: %w", row.mode, err)
			}
		}
		m, err := replayKube(ctx, c, ns, image, row.client, row.clientArgs, row.perCall, opts)
		if err != nil {
			return nil, fmt.Errorf("mode %s: %w", row.mode, err)
		}
		m.Mode, m.Description = row.mode, row.description
		if opts.Progress != nil {
			opts.Progress(row.mode, m.Calls, opts.Calls)
		}
		res.Modes = append(res.Modes, m)
	}
	return res, nil
}

// replayKube (re)creates the client pod and counts the pods that answer
// its calls.
func replayKube(ctx context.Context, c *devcluster.Cluster, ns, image string, kind devcluster.ClientKind, clientArgs []string, perCall bool, opts Options) (ModeResult, error) {
	if err := deletePod(ctx, c, ns, "native-tools"); err != nil {
		return ModeResult{}, err
	}
	if err := c.Apply(ctx, devcluster.ArticleClient(ns, image, kind, clientArgs...)); err != nil {
		return ModeResult{}, err
	}
	if err := c.WaitReadyEndpoints(ctx, ns, Service, "grpc", opts.Pods, 2*time.Minute); err != nil {
		return ModeResult{}, err
	}
	if err := c.WaitPodReady(ctx, ns, "native-tools", 2*time.Minute); err != nil {
		return ModeResult{}, err
	}
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + Service})
	if err != nil {
		return ModeResult{}, err
	}
	if perCall {
		// Failed calls are part of starting up here: the client may not
		// listen yet when its pod turns Ready (a probe through the
		// sidecar's capture), nor know every endpoint.
		seen := map[string]bool{}
		var last error
		err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
			counts, err := c.ArticleCallsIn(ctx, ns, len(pods.Items))
			for p := range counts {
				seen[p] = true
			}
			last = err
			return len(seen) >= opts.Pods, nil
		})
		if err != nil {
			return ModeResult{}, fmt.Errorf("warm-up: %d of %d pods answered (last error: %v): %w", len(seen), opts.Pods, last, err)
		}
	}
	counts, err := c.ArticleCallsIn(ctx, ns, opts.Calls)
	if err != nil {
		return ModeResult{}, err
	}
	m := ModeResult{Pods: map[string]int{}}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			m.Pods[p.Name] = 0
		}
	}
	maps.Copy(m.Pods, counts)
	for _, n := range counts {
		m.Calls += n
	}
	m.MaxMean = MaxMean(m.Pods)
	return m, nil
}

// injectAll labels ns for injection and recreates the greeters, as the
// article does after labelling: pods get their sidecar when created.
func injectAll(ctx context.Context, c *devcluster.Cluster, ns, image string, replicas int) error {
	if err := c.EnableInjection(ctx, ns); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, nil, "-n", ns, "rollout", "restart", "deployment/"+Service); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, nil, "-n", ns, "rollout", "status", "deployment/"+Service, "--timeout=2m"); err != nil {
		return err
	}
	// rollout status returns once the new pods are ready; the old ones may
	// still be terminating, and their endpoints with them.
	return devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + Service})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if !devcluster.Injected(&p) {
				return false, nil
			}
		}
		return len(pods.Items) == replicas, nil
	})
}

// deletePod deletes a pod and waits until it is gone, so that it can be
// created again with another spec.
func deletePod(ctx context.Context, c *devcluster.Cluster, namespace, name string) error {
	pods := c.Client.CoreV1().Pods(namespace)
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return errors.Join(fmt.Errorf("pod %s/%s not gone", namespace, name), err)
	}
	return nil
}
