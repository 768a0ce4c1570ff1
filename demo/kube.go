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

// RunKube replays the article on a real cluster (see devcluster): the
// article's Service, a Deployment of greeters and the client pod, applied
// with kubectl. The client's calls go first to native-tools-2:50051 through
// the ClusterIP (kube-proxy's per-connection choice), then, with the client
// pod recreated with --target kubernetes:///native-tools-2.default:50051,
// through Ballast's resolver reading the cluster's EndpointSlices.
func RunKube(ctx context.Context, c *devcluster.Cluster, image string, opts Options) (*Result, error) {
	opts.Calls = max(opts.Calls, 1)
	opts.Pods = max(opts.Pods, 1)
	rows := []struct {
		mode, description string
		clientArgs        []string
	}{
		{"plain-service", "the article's client dials native-tools-2:50051: CoreDNS → ClusterIP → one pod per connection", nil},
		{"client-side", "the same client with --target kubernetes:///native-tools-2.default:50051 (round_robin over the EndpointSlices)",
			[]string{"--target", fmt.Sprintf("kubernetes:///%s.%s:%d", Service, Namespace, GRPCPort)}},
	}
	res := &Result{}
	for i, row := range rows {
		if i > 0 {
			if err := deletePod(ctx, c, devcluster.ArticleNamespace, "native-tools"); err != nil {
				return nil, err
			}
		}
		counts, err := c.RunArticle(ctx, image, opts.Pods, opts.Calls, row.clientArgs...)
		if err != nil {
			return nil, fmt.Errorf("mode %s: %w", row.mode, err)
		}
		pods, err := c.Client.CoreV1().Pods(devcluster.ArticleNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + Service})
		if err != nil {
			return nil, err
		}
		m := ModeResult{Mode: row.mode, Description: row.description, Pods: map[string]int{}}
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
		if opts.Progress != nil {
			opts.Progress(row.mode, m.Calls, opts.Calls)
		}
		res.Modes = append(res.Modes, m)
	}
	return res, nil
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
