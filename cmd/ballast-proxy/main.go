// Command ballast-proxy is Ballast's sidecar on its own: the same command
// as `ballast proxy` (and its init), in a binary that links no Kubernetes
// client and no control plane. Every meshed pod runs one, so its memory is
// paid once per pod, and most of an idle Go process's RSS is the code and
// data pages of its binary touched by package initialisation: what this
// binary does not link, no pod holds. It learns Services from the control
// plane. `ballast bench` measures its idle RSS (docs/benchmarks.md).
//
// Build it as the image does: CGO_ENABLED=0 go build -tags grpcnotrace.
// The tag drops x/net/trace, whose html/template would keep every exported
// method of every reachable type (all of Envoy's generated validators) in
// the binary.
package main

import (
	"github.com/ballast-dev/ballast/cmd/internal/cli"
	"github.com/ballast-dev/ballast/cmd/internal/proxycmd"
)

func main() {
	root := proxycmd.New()
	root.Use = "ballast-proxy"
	cli.AddLogLevel(root)
	cli.Main(root)
}
