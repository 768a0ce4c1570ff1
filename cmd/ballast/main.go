// Command ballast balances gRPC traffic inside Kubernetes, per call: a
// control plane for proxyless gRPC clients, a sidecar for unmodified ones, a
// Go client library, and the article's greeter and demo.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	// xds:/// targets, and the balancers xDS Clusters and service configs name.
	_ "google.golang.org/grpc/xds"

	_ "github.com/ballast-dev/ballast/balancer/p2c"
	_ "github.com/ballast-dev/ballast/balancer/peakewma"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ballast:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	var logLevel slog.Level = slog.LevelWarn
	root := &cobra.Command{
		Use:           "ballast",
		Short:         "Per-call gRPC load balancing for Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			slog.SetDefault(slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: logLevel})))
		},
	}
	root.PersistentFlags().Var(levelFlag{&logLevel}, "log-level", "log level: debug, info, warn or error")
	root.AddCommand(
		newGreeterCmd(),
		newDemoCmd(),
		newControlCmd(),
		newBootstrapCmd(),
		newProxyCmd(),
		newInjectCmd(),
		newBenchCmd(),
		newDevCmd(),
	)
	return root
}

// levelFlag lets cobra parse an slog level.
type levelFlag struct{ l *slog.Level }

func (f levelFlag) String() string     { return f.l.String() }
func (f levelFlag) Set(s string) error { return f.l.UnmarshalText([]byte(s)) }
func (f levelFlag) Type() string       { return "level" }
