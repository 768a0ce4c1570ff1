package main

import (
	"testing"

	"github.com/ballast-dev/ballast/internal/linktest"
)

// Every replica runs this binary, and most of an idle Go process's memory
// is the pages of its binary that package initialisation and first use
// touch, so it links only the control plane: not the sidecar, the gateway,
// the benchmark, the dev cluster or the demo, and not grpc-go's xDS client
// (google.golang.org/grpc/xds and what it registers, with the JOSE, SPIFFE
// and ALTS credentials of its bootstrap), which only the plane's tests
// run against it.
func TestLinksOnlyTheControlPlane(t *testing.T) {
	linktest.Forbid(t, "ballast-control",
		"github.com/ballast-dev/ballast/proxy", "github.com/ballast-dev/ballast/gateway",
		"github.com/ballast-dev/ballast/bench", "github.com/ballast-dev/ballast/devcluster",
		"github.com/ballast-dev/ballast/demo",
		"google.golang.org/grpc/xds", "google.golang.org/grpc/internal/xds",
		"google.golang.org/grpc/credentials/alts", "github.com/go-jose/", "github.com/spiffe/",
	)
}
