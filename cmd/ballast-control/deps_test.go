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
// run against it. Nor client-go's clientset, discovery client, informer
// factory or leader election, nor Gateway API's clientset: each links
// client-go's scheme of every built-in API group (internal/kubeclient
// says more), where the plane reads a handful of kinds.
func TestLinksOnlyTheControlPlane(t *testing.T) {
	linktest.Forbid(t, "ballast-control",
		"github.com/ballast-dev/ballast/proxy", "github.com/ballast-dev/ballast/gateway",
		"github.com/ballast-dev/ballast/bench", "github.com/ballast-dev/ballast/devcluster",
		"github.com/ballast-dev/ballast/demo",
		"google.golang.org/grpc/xds", "google.golang.org/grpc/internal/xds",
		"google.golang.org/grpc/credentials/alts", "github.com/go-jose/", "github.com/spiffe/",
		"k8s.io/client-go/kubernetes", "k8s.io/client-go/discovery", "k8s.io/client-go/informers",
		"k8s.io/client-go/tools/leaderelection", "sigs.k8s.io/gateway-api/pkg/client/",
		"k8s.io/api/apps/", "k8s.io/api/batch/", "k8s.io/api/networking/", "k8s.io/api/resource/", "k8s.io/api/storage/",
	)
}
