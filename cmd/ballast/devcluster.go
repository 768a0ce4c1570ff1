package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/grpclog"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/image"
)

func newDevCmd() *cobra.Command {
	dev := &cobra.Command{Use: "dev", Short: "Development tools"}
	cluster := &cobra.Command{
		Use:   "cluster",
		Short: "A real Kubernetes on this machine whose pods are local processes (needs root)",
	}
	cluster.AddCommand(newDevClusterUpCmd(), newDevClusterDownCmd())
	dev.AddCommand(cluster)
	return dev
}

// devClusterPidFile records the pid of the running `up`, for `down`.
func devClusterPidFile() string {
	return filepath.Join(devcluster.BaseDir, "up.pid")
}

func newDevClusterUpCmd() *cobra.Command {
	var (
		kubeconfig string
		binaries   []string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the dev cluster and keep it up until Ctrl-C or `ballast dev cluster down`",
		Long: `Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, CoreDNS and two
Nodes (zone-a, zone-b) whose pods run as local processes, each in its own network
namespace. Writes an admin kubeconfig to --kubeconfig, then stays in the foreground:
Ctrl-C (or SIGTERM, or ` + "`ballast dev cluster down`" + `) tears everything down. A pod whose
image is ballast:dev runs this ballast binary: each binary is made an OCI image (as
` + "`ballast image build`" + ` makes them), pushed to the cluster's registry on 127.0.0.1 and
pulled by the Nodes, which run a container in the image's root filesystem.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kubeconfig == "" {
				return errors.New("--kubeconfig PATH is required")
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			// The images deploy/ and the article name, made from this
			// binary and the slim ballast-proxy and ballast-control next to
			// it (go build -o DIR/ ./cmd/...), or --binary overrides.
			bins := map[string]string{"ballast": self}
			for _, name := range []string{"ballast-proxy", "ballast-control"} {
				if p := filepath.Join(filepath.Dir(self), name); isExecutable(p) {
					bins[name] = p
				}
			}
			for _, m := range binaries {
				name, bin, ok := strings.Cut(m, "=")
				if !ok || name == "" || bin == "" {
					return fmt.Errorf("--binary %q: want NAME=PATH", m)
				}
				bins[name] = bin
			}
			imgs, err := image.FromBinaries(cmd.Context(), image.Ballast(), bins, image.Options{})
			if err != nil {
				return err
			}
			pidFile := devClusterPidFile()
			if err := os.MkdirAll(filepath.Dir(pidFile), 0o755); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			// Readiness probes dial pods before they listen; that is not news.
			grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, cmd.ErrOrStderr()))
			c, err := devcluster.Start(cmd.Context(), devcluster.Options{Images: imgs, Log: log})
			if err != nil {
				return err
			}
			defer c.Stop()
			data, err := os.ReadFile(c.Kubeconfig)
			if err != nil {
				return err
			}
			if err := os.WriteFile(kubeconfig, data, 0o600); err != nil {
				return fmt.Errorf("write kubeconfig: %w", err)
			}
			if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
				return err
			}
			defer os.Remove(pidFile)
			fmt.Fprintf(cmd.OutOrStdout(), "dev cluster up: kubectl --kubeconfig %s get nodes\npods %s, services %s; logs in %s\nCtrl-C or `ballast dev cluster down` to stop\n",
				kubeconfig, c.PodCIDR, c.ServiceCIDR, c.Dir)
			<-cmd.Context().Done()
			fmt.Fprintln(cmd.OutOrStdout(), "dev cluster: tearing down")
			return c.Stop()
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "where to write the admin kubeconfig")
	cmd.Flags().StringArrayVar(&binaries, "binary", nil, "NAME=PATH: the binary of image NAME:dev (ballast, ballast-proxy, ballast-control; ballast is this binary)")
	return cmd
}

func newDevClusterDownCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop a running `ballast dev cluster up` and remove what dead runs left behind",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(devClusterPidFile())
			if err == nil {
				pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
				// Only a live `ballast dev cluster up`: the pid may be stale
				// and reused by an unrelated process.
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				isUp := strings.Contains(string(cmdline), "dev\x00cluster\x00up")
				os.Remove(devClusterPidFile())
				if pid > 0 && isUp && syscall.Kill(pid, syscall.SIGTERM) == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "stopping dev cluster (pid %d)\n", pid)
					deadline := time.Now().Add(2 * time.Minute)
					for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
						time.Sleep(100 * time.Millisecond)
					}
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			return devcluster.Sweep(ctx, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
		},
	}
}
