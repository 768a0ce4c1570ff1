// Command ballast-gateway is Ballast's Gateway API gateway on its own: the
// same command as `ballast gateway`, in a binary that links no sidecar
// injection, control plane, bench or dev cluster (the ballast-gateway:dev
// image runs it).
package main

import (
	"github.com/ballast-dev/ballast/cmd/internal/cli"
	"github.com/ballast-dev/ballast/cmd/internal/gatewaycmd"
)

func main() {
	root := gatewaycmd.New()
	root.Use = "ballast-gateway"
	cli.AddLogLevel(root)
	cli.Main(root)
}
