// Command ballast-proxy is Ballast's sidecar on its own: the same command
// as `ballast proxy` (and its init), in a binary that links no Kubernetes
// client and no control plane. Every meshed pod runs one, so its memory is
// paid once per pod: idle, this binary holds about a quarter of the RSS of
// the full ballast binary, most of which is code and data pages touched by
// package initialisation. It learns Services from the control plane.
//
// Build it as the image does: CGO_ENABLED=0 go build -tags grpcnotrace.
// The tag drops x/net/trace, whose html/template would keep every exported
// method of every reachable type (all of Envoy's generated validators) in
// the binary: 20 MB instead of 33, about 4 MiB less idle RSS.
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
