package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/grpclog"

	"github.com/ballast-dev/ballast/demo"
	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/image"
)

func newDemoCmd() *cobra.Command {
	var (
		opts   demo.Options
		output string
		kube   bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Replay the article's experiment: one connection, plain Service vs per-call balancing",
		Long: `Starts 3 greeter pods on 127.0.0.x, a per-connection L4 balancer standing in for a
ClusterIP Service, and makes the same calls over one gRPC connection in each mode,
printing how many calls each pod answered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			if opts.Calls < 1 || opts.Pods < 1 || opts.Pods > 8 {
				return fmt.Errorf("--calls must be ≥ 1 and --pods between 1 and 8 (got %d, %d)", opts.Calls, opts.Pods)
			}
			quietGRPC()
			opts.Progress = progressBar(cmd.ErrOrStderr())
			run := demo.Run
			if kube {
				run = runKubeDemo
			}
			res, err := run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			return writeResult(cmd.OutOrStdout(), res, output)
		},
	}
	cmd.AddCommand(newDemoCanaryCmd())
	cmd.Flags().IntVar(&opts.Calls, "calls", 300, "calls per mode")
	cmd.Flags().IntVar(&opts.Pods, "pods", 3, "greeter pods")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.Flags().BoolVar(&kube, "kube", false, "replay on a real Kubernetes started on this machine (needs root; see ballast dev cluster)")
	return cmd
}

func newDemoCanaryCmd() *cobra.Command {
	var (
		opts   demo.CanaryOptions
		output string
	)
	cmd := &cobra.Command{
		Use:   "canary",
		Short: "The article's gray release: a GRPCRoute sends a share of the greeter's calls to v2",
		Long: `Starts the greeter's v1 pods and a v2 release behind its own Service, and a Gateway API
GRPCRoute attached to the article's Service that sends --percent of its calls to v2. Each per-call
mode (client-side kubernetes:///, proxyless xds:///, sidecar) makes the same calls over one connection
and prints how many each pod and each version answered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			if opts.Calls < 1 || opts.Options.Pods < 1 || opts.Options.Pods > 6 || opts.Pods < 1 || opts.Pods > 2 {
				return fmt.Errorf("--calls must be ≥ 1, --pods between 1 and 6 and --canary-pods 1 or 2 (got %d, %d, %d)", opts.Calls, opts.Options.Pods, opts.Pods)
			}
			if opts.Percent < 0 || opts.Percent > 100 {
				return fmt.Errorf("--percent %d: want 0 to 100", opts.Percent)
			}
			quietGRPC()
			opts.Progress = progressBar(cmd.ErrOrStderr())
			res, err := demo.RunCanary(cmd.Context(), opts)
			if err != nil {
				return err
			}
			return writeResult(cmd.OutOrStdout(), res, output)
		},
	}
	cmd.Flags().IntVar(&opts.Calls, "calls", 1000, "calls per mode")
	cmd.Flags().IntVar(&opts.Options.Pods, "pods", 3, "v1 greeter pods")
	cmd.Flags().IntVar(&opts.Pods, "canary-pods", 1, "v2 greeter pods")
	cmd.Flags().IntVar(&opts.Percent, "percent", 10, "the canary's share of the calls, in percent (the route's weights are 100-N and N)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// quietGRPC keeps gRPC's warnings out of a demo's output unless
// GRPC_GO_LOG_SEVERITY_LEVEL asks for them: pods and streams that start or
// stop while the demo sets up and tears down are not news (the dev
// cluster's readiness probes dial pods before they listen, and clients
// see their streams end as the world stops).
func quietGRPC() {
	if os.Getenv("GRPC_GO_LOG_SEVERITY_LEVEL") == "" {
		grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
	}
}

// writeResult prints a demo's result as text tables or JSON.
func writeResult(out io.Writer, res *demo.Result, output string) error {
	if output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	res.WriteText(out)
	return nil
}

// progressBar draws one bar per mode on a terminal, redrawn in place; on
// anything else it prints one line when a mode finishes.
func progressBar(w io.Writer) func(mode string, done, total int) {
	f, ok := w.(*os.File)
	tty := ok && term.IsTerminal(int(f.Fd()))
	return func(mode string, done, total int) {
		if !tty {
			if done == total {
				fmt.Fprintf(w, "%s: %d calls done\n", mode, total)
			}
			return
		}
		const width = 30
		filled := width * done / total
		fmt.Fprintf(w, "\r%-14s [%s%s] %d/%d", mode, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, total)
		if done == total {
			fmt.Fprintln(w)
		}
	}
}

// runKubeDemo starts a dev cluster whose ballast:dev image is this binary
// and whose ballast-control:dev and ballast-proxy:dev images are the slim
// binaries (next to this one, on $PATH, or built from the checkout),
// replays the article on it and tears it down.
func runKubeDemo(ctx context.Context, opts demo.Options) (*demo.Result, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	bins := map[string]string{"ballast": exe}
	for _, b := range []struct{ name, image string }{
		{"ballast-control", "ballast-control:dev"},
		{"ballast-proxy", "ballast-proxy:dev"},
	} {
		path, cleanup := slimBinary(ctx, b.name, "the demo's "+b.image, "", os.Stderr)
		defer cleanup()
		if path == "" {
			return nil, fmt.Errorf("the proxyless and sidecar steps run %s: put it next to this binary or on $PATH, or run from a checkout of ballast", b.name)
		}
		// The control plane and the sidecar run as users of their own; a
		// binary built here is in a folder only root may enter.
		if fi, err := os.Stat(filepath.Dir(path)); err == nil && fi.Mode().Perm()&0o005 != 0o005 {
			if err := os.Chmod(filepath.Dir(path), fi.Mode().Perm()|0o005); err != nil {
				return nil, err
			}
		}
		bins[b.name] = path
	}
	images, err := image.FromBinaries(ctx, image.Ballast(), bins, image.Options{})
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, "starting a dev cluster (etcd, kube-apiserver, controllers, 2 nodes, CoreDNS)…")
	c, err := devcluster.Start(ctx, devcluster.Options{Images: images, Log: slog.Default()})
	if err != nil {
		return nil, err
	}
	defer c.Stop()
	fmt.Fprintln(os.Stderr, "cluster up; applying the article's Service, Deployment and client pod, then ballast from deploy/")
	return demo.RunKube(ctx, c, "ballast:dev", opts)
}
