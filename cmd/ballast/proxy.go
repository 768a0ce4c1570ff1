package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/cmd/internal/proxycmd"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/source"
	"github.com/ballast-dev/ballast/proxy"
	k8sresolver "github.com/ballast-dev/ballast/resolver/kubernetes"
)

// newProxyCmd is the sidecar (the same command as the ballast-proxy
// binary), plus the sources only this binary links: the Kubernetes API and
// Service YAML files.
func newProxyCmd() *cobra.Command {
	return proxycmd.New(&registrySource{})
}

// registrySource learns Services' ClusterIPs through Ballast's discovery,
// from the Kubernetes API or a folder of YAML.
type registrySource struct {
	kubernetes bool
	filesDir   string
}

func (s *registrySource) AddFlags(f *pflag.FlagSet) {
	f.BoolVar(&s.kubernetes, "kubernetes", false, "transparent mode: learn Services' ClusterIPs from the Kubernetes API (in-cluster or $KUBECONFIG) instead of the control plane")
	f.StringVar(&s.filesDir, "files", "", "transparent mode: learn Services' ClusterIPs from the Service YAML in this folder")
}

// Known reads Services into a Registry. With a control plane their
// ClusterIPs lead to xds:/// targets; without one, to kubernetes:///
// targets that resolver/kubernetes resolves from the same Registry,
// balanced by the policy the Service's ballast.dev/lb-policy annotation
// names (round robin without one), as the control plane would.
func (s *registrySource) Known(withXDS bool) (*proxycmd.Known, error) {
	if s.kubernetes && s.filesDir != "" {
		return nil, errors.New("--kubernetes and --files: choose one source of Services")
	}
	if !s.kubernetes && s.filesDir == "" {
		return nil, nil
	}
	reg := discovery.NewRegistry()
	sources, err := source.Open(source.Config{Kubernetes: s.kubernetes, Files: s.filesDir}, reg)
	if err != nil {
		return nil, fmt.Errorf("--kubernetes: %w", err)
	}
	run := sources.Run
	index := discovery.NewClusterIPIndex(reg)
	both := func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		indexDone := make(chan error, 1)
		go func() { indexDone <- index.Run(ctx) }()
		err := run(ctx)
		cancel()
		return errors.Join(err, <-indexDone)
	}
	k := &proxycmd.Known{Destinations: registryDestinations{index, proxy.XDSTarget}, Run: both, Synced: sources.Synced}
	if !withXDS {
		k.Destinations = registryDestinations{index, proxy.KubernetesTarget}
		k.Resolvers = []resolver.Builder{k8sresolver.NewBuilder(reg)}
	}
	return k, nil
}

// registryDestinations sends a connection to a Service's ClusterIP to the
// Service port's target.
type registryDestinations struct {
	index  *discovery.ClusterIPIndex
	target func(name, namespace string, port int32) string
}

func (r registryDestinations) Target(dst netip.AddrPort) (string, bool) {
	sp, ok := r.index.Lookup(dst)
	if !ok {
		return "", false
	}
	return r.target(sp.Key.Name, sp.Key.Namespace, sp.Port), true
}
