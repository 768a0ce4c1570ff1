package main

import (
	"os/exec"
	"strings"
	"testing"
)

// Every replica runs this binary, and most of an idle Go process's memory
// is the pages of its binary that package initialisation and first use
// touch, so it links only the control plane: not the sidecar, the gateway,
// the benchmark, the dev cluster or the demo, and not grpc-go's xDS client
// (google.golang.org/grpc/xds and what it registers, with the JOSE, SPIFFE
// and ALTS credentials of its bootstrap), which only the plane's tests
// run against it.
func TestLinksOnlyTheControlPlane(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	forbidden := []string{
		"github.com/ballast-dev/ballast/proxy", "github.com/ballast-dev/ballast/gateway",
		"github.com/ballast-dev/ballast/bench", "github.com/ballast-dev/ballast/devcluster",
		"github.com/ballast-dev/ballast/demo",
		"google.golang.org/grpc/xds", "google.golang.org/grpc/internal/xds",
		"google.golang.org/grpc/credentials/alts", "github.com/go-jose/", "github.com/spiffe/",
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, prefix := range forbidden {
			if pkg == prefix || strings.HasPrefix(pkg, prefix+"/") || (strings.HasSuffix(prefix, "/") && strings.HasPrefix(pkg, prefix)) {
				t.Errorf("ballast-control links %s", pkg)
			}
		}
	}
}
