package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/strvals"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/charts"
	"github.com/ballast-dev/ballast/discovery/source"
	"github.com/ballast-dev/ballast/install"
	"github.com/ballast-dev/ballast/internal/version"
)

// installFlags are the flags install and uninstall share: where, and the
// chart's values as helm takes them.
type installFlags struct {
	kubeconfig, namespace string
	valueFiles, sets      []string
	timeout               time.Duration
}

func (f *installFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
	fl.StringVarP(&f.namespace, "namespace", "n", charts.DefaultNamespace, "namespace of the control plane and the webhook")
	fl.StringArrayVarP(&f.valueFiles, "values", "f", nil, "a values file of charts/ballast (repeatable; later wins)")
	fl.StringArrayVar(&f.sets, "set", nil, "a chart value, key=value as helm --set (repeatable; over --values)")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long to wait for the rollout and the webhook")
}

// options reads the values: the images of this binary's version, then the
// files, then --set.
func (f *installFlags) options(cmd *cobra.Command) (install.Options, error) {
	cfg, err := source.RESTConfig(f.kubeconfig)
	if err != nil {
		return install.Options{}, err
	}
	values := map[string]any{"image": map[string]any{"tag": version.Get().Version}}
	for _, file := range f.valueFiles {
		raw, err := os.ReadFile(file)
		if err != nil {
			return install.Options{}, fmt.Errorf("--values: %w", err)
		}
		var v map[string]any
		if err := yaml.Unmarshal(raw, &v); err != nil {
			return install.Options{}, fmt.Errorf("--values %s: %w", file, err)
		}
		values = loader.MergeMaps(values, v)
	}
	for _, s := range f.sets {
		if err := strvals.ParseInto(s, values); err != nil {
			return install.Options{}, fmt.Errorf("--set %s: %w", s, err)
		}
	}
	return install.Options{Config: cfg, Namespace: f.namespace, Values: values,
		Progress: cmd.OutOrStdout(), Timeout: f.timeout}, nil
}

func newInstallCmd() *cobra.Command {
	var f installFlags
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install or upgrade Ballast on a cluster without Helm (charts/ballast, server-side applied)",
		Long: `Renders charts/ballast (embedded in this binary) as helm install would, with
--values and --set, and applies it by server-side apply; run again to
upgrade in place. Preflight: the API server's version, and the Gateway API
CRDs (created when missing, a cluster's own kept if they serve GRPCRoute v1).
Then waits for each Deployment's rollout, printing progress, and checks that
the API server's calls to the webhook inject pods. Images default to this
binary's version: REGISTRY/ballast-control:VERSION etc. (--set image.tag=...,
--set image.registry=...).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := f.options(cmd)
			if err != nil {
				return err
			}
			return install.Install(cmd.Context(), o)
		},
	}
	f.register(cmd)
	return cmd
}

func newUninstallCmd() *cobra.Command {
	var f installFlags
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove what ballast install applied (the CRDs stay, with the routes in them)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := f.options(cmd)
			if err != nil {
				return err
			}
			return install.Uninstall(cmd.Context(), o)
		},
	}
	f.register(cmd)
	return cmd
}
