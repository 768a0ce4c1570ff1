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
	"os"
	"runtime/debug"

	"github.com/ballast-dev/ballast/cmd/internal/cli"
	"github.com/ballast-dev/ballast/cmd/internal/controlcmd"
)

// gcPercent is the control plane's GOGC when the environment sets none.
// Its heap is mostly state it keeps for as long as it runs (the informer
// caches, the registry, the resources it serves), which grows with the
// cluster, and between changes it allocates little. Go's default, 100,
// lets the heap grow to twice that state before collecting, and the
// process keeps the pages: RSS in every replica. Collecting at a quarter
// over it costs more collections, but they are few, since little is
// allocated (ballast bench scenario 5 reports the plane's CPU over a churn
// of endpoint changes beside its RSS). GOGC in the environment still wins.
const gcPercent = 25

// setGC applies gcPercent unless getenv has a GOGC.
func setGC(getenv func(string) (string, bool)) {
	if _, ok := getenv("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
}

func main() {
	setGC(os.LookupEnv)
	root := controlcmd.New()
	root.Use = "ballast-control"
	cli.AddLogLevel(root)
	cli.Main(root)
}
