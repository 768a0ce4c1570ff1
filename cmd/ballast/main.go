// Command ballast balances gRPC traffic inside Kubernetes, per call: a
// control plane for proxyless gRPC clients, a sidecar for unmodified ones, a
// Go client library, and the article's greeter and demo.
package main

import (
	"github.com/spf13/cobra"
	// xds:/// targets, and the balancers xDS Clusters and service configs name.
	_ "google.golang.org/grpc/xds"

	_ "github.com/ballast-dev/ballast/balancer/p2c"
	_ "github.com/ballast-dev/ballast/balancer/peakewma"
	"github.com/ballast-dev/ballast/cmd/internal/cli"
	"github.com/ballast-dev/ballast/cmd/internal/controlcmd"
	"github.com/ballast-dev/ballast/cmd/internal/gatewaycmd"
)

func main() { cli.Main(newRootCmd()) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "ballast",
		Short: "Per-call gRPC load balancing for Kubernetes",
	}
	cli.AddLogLevel(root)
	root.AddCommand(
		newGreeterCmd(),
		newDemoCmd(),
		controlcmd.New(),
		gatewaycmd.New(),
		newBootstrapCmd(),
		newProxyCmd(),
		newInjectCmd(),
		newBenchCmd(),
		newDevCmd(),
		newImageCmd(),
		newInstallCmd(),
		newUninstallCmd(),
		newVersionCmd(),
	)
	return root
}
