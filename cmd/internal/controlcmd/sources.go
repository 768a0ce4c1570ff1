package controlcmd

import (
	"context"
	"fmt"
	"log/slog"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/discovery/kube"
)

// startSources starts the discovery sources cfg names, in g, writing to
// reg, and returns what /readyz asks: whether all of them have synced.
// The file source syncs with its first Load, done here, so a bad file is
// reported at start; it then keeps serving the files that did load.
func startSources(ctx context.Context, g *errgroup.Group, cfg Config, reg *discovery.Registry, log *slog.Logger) (func() bool, error) {
	var synced []func() bool
	if cfg.Files != "" {
		src := files.New(cfg.Files, reg, files.Options{Logger: log})
		if err := src.Load(); err != nil {
			log.Error("some discovery files were not loaded; serving the rest", "dir", cfg.Files, "err", err)
		}
		g.Go(func() error { return src.Run(ctx) })
	}
	if cfg.Kubeconfig != "" || cfg.InCluster {
		var (
			restCfg *rest.Config
			err     error
		)
		if cfg.InCluster {
			// $KUBECONFIG first, then the pod's service account: client-go's
			// usual order, as the proxy and the greeter client load it (the
			// dev cluster's pods get a KUBECONFIG, not a mounted token).
			restCfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
				clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
		} else {
			restCfg, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		}
		if err != nil {
			return nil, fmt.Errorf("kubernetes config: %w (give --kubeconfig, or --files to run without a cluster)", err)
		}
		src := kube.New(restCfg, reg, kube.Options{Logger: log})
		synced = append(synced, src.HasSynced)
		g.Go(func() error { return src.Run(ctx) })
	}
	return func() bool {
		for _, s := range synced {
			if !s() {
				return false
			}
		}
		return true
	}, nil
}
