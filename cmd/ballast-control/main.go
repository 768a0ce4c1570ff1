// Command ballast-control is Ballast's xDS control plane on its own: the
// same command as `ballast control`, in a binary that links only the
// control plane (discovery, xDS serving, its HTTP endpoints), as Istio ships
// pilot-discovery apart from its other commands. deploy/control runs it.
// Most of an idle Go process's RSS is the code and data pages of its binary
// touched by package initialisation, so the full ballast binary, with the
// sidecar, bench, dev cluster and demo in it, would spend memory in every
// replica on code the control plane never runs.
//
// Build it as the image does: CGO_ENABLED=0 go build -tags grpcnotrace.
// The tag drops x/net/trace, whose html/template would keep every exported
// method of every reachable type (all of Envoy's generated validators).
package main

import (
	"github.com/ballast-dev/ballast/cmd/internal/cli"
	"github.com/ballast-dev/ballast/cmd/internal/controlcmd"
)

func main() {
	root := controlcmd.New()
	root.Use = "ballast-control"
	cli.AddLogLevel(root)
	cli.Main(root)
}
