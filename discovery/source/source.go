// Package source opens the discovery sources a command names: the
// Kubernetes API, a folder of YAML, or both, filling one registry. Every
// command that discovers Services (control, proxy, greeter, inject) opens
// them here, so they read a cluster the same way.
package source

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

// Config names the sources to open.
type Config struct {
	// Kubernetes reads the cluster RESTConfig(Kubeconfig) finds.
	Kubernetes bool
	Kubeconfig string
	// Files is a folder of Service and EndpointSlice YAML, watched for
	// changes; empty means none.
	Files string
	// Routes reads GRPCRoutes and ReferenceGrants from the Kubernetes API
	// too (the folder's are always read).
	Routes bool
	// Gateways reads GatewayClasses, Gateways and TLS Secrets from the
	// Kubernetes API too (the folder's are always read).
	Gateways bool
	// Policies reads TrafficPolicies from the Kubernetes API too (the
	// folder's are always read).
	Policies bool
	// Log receives the sources' logs; nil means slog.Default().
	Log *slog.Logger
}

// Set is the open sources of one registry.
type Set struct {
	runs   []func(context.Context) error
	synced []func() bool
}

// Open opens the sources cfg names, writing to reg. The file source loads
// once here, so a bad file is reported at start; it then serves the files
// that did load, as it keeps the last good ones later. Open fails only
// when a source cannot be opened at all.
func Open(cfg Config, reg *discovery.Registry) (*Set, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	s := &Set{}
	if cfg.Files != "" {
		src := files.New(cfg.Files, reg, files.Options{Logger: log})
		if err := src.Load(); err != nil {
			log.Error("some discovery files were not loaded; serving the rest", "dir", cfg.Files, "err", err)
		}
		s.runs = append(s.runs, src.Run)
	}
	if cfg.Kubernetes {
		restCfg, err := RESTConfig(cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
		src := kube.New(restCfg, reg, kube.Options{Logger: log, Routes: cfg.Routes, Gateways: cfg.Gateways, Policies: cfg.Policies})
		s.runs = append(s.runs, src.Run)
		s.synced = append(s.synced, src.HasSynced)
	}
	return s, nil
}

// RESTConfig is how every Ballast command finds its cluster, client-go's
// usual order: the kubeconfig path if given, else $KUBECONFIG or
// ~/.kube/config, else the pod's service account.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w", err)
	}
	return cfg, nil
}

// Run runs every source until ctx ends or one of them fails.
func (s *Set) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, run := range s.runs {
		g.Go(func() error { return run(ctx) })
	}
	return g.Wait()
}

// Synced reports whether every source has listed everything once.
func (s *Set) Synced() bool {
	for _, synced := range s.synced {
		if !synced() {
			return false
		}
	}
	return true
}
