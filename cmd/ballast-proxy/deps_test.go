package main

import (
	"testing"

	"github.com/ballast-dev/ballast/internal/linktest"
)

// Every meshed pod runs this binary, and most of an idle Go process's
// memory is the pages of its binary that package initialisation and first
// use touch, so it links only what the sidecar runs:
//   - no Kubernetes client code: the sidecar learns Services from the
//     control plane, and the policy model and xDS client it reads them
//     with stand apart from discovery;
//   - not grpc-go's xDS client (google.golang.org/grpc/xds and what it
//     registers: its balancers, resolvers, HTTP filters, and the OAuth2,
//     JOSE, SPIFFE and ALTS credentials of its bootstrap): the sidecar
//     speaks xDS with its own client (xds/client), and its outlier
//     detection is balancer/ejection's;
//   - not Envoy's generated messages (go-control-plane, and cncf/xds, CEL
//     and protoc-gen-validate they import): registering them and building
//     the descriptors and coders of every file a decoded Listener or
//     Cluster reaches held more memory than the rest of the sidecar's heap.
//     Its xDS client reads Envoy's wire format into copies cut down to the
//     fields it reads (xds/client/internal/wire).
func TestLinksOnlyTheSidecar(t *testing.T) {
	linktest.Forbid(t, "ballast-proxy",
		"k8s.io/", "sigs.k8s.io/",
		"google.golang.org/grpc/xds", "google.golang.org/grpc/internal/xds",
		"google.golang.org/grpc/credentials/alts", "google.golang.org/grpc/credentials/google",
		"golang.org/x/oauth2", "github.com/go-jose/", "github.com/spiffe/", "cloud.google.com/",
		"github.com/envoyproxy/", "github.com/cncf/", "cel.dev/", "google.golang.org/protobuf/types/descriptorpb",
	)
}
