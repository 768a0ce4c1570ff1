package bench

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds"
)

// The routed sidecar's GRPCRoute is valid, has five rules, and the
// benchmark's calls are compared with all of them: they match only the
// last.
func TestRouteManifestMatchesLastRule(t *testing.T) {
	dir := t.TempDir()
	pods := []*pod{{Name: "pod-a", Addr: netip.MustParseAddrPort("127.0.0.2:50051")}}
	svc, err := serviceManifest(pods, defaultClusterIP)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"greeter.yaml": svc, "routes.yaml": routeManifest()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	reg := discovery.NewRegistry()
	if err := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)}).Load(); err != nil {
		t.Fatalf("load the bench's manifests: %v", err)
	}
	s, ok := reg.Get(discovery.Key{Namespace: benchNamespace, Name: benchService})
	if !ok {
		t.Fatal("no greeter.bench in the registry")
	}
	ports, err := xds.Model(s, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	router := policy.NewRouter(ports[0].Route)
	if errs := router.Errors(); len(errs) > 0 {
		t.Fatalf("route errors: %v", errs)
	}
	if n := len(ports[0].Route.Rules); n != 5 {
		t.Fatalf("%d rules, want 5", n)
	}
	if got := router.Match("/helloworld.Greeter/SayHello", policy.NoHeaders); got != 4 {
		t.Errorf("SayHello matches rule %d, want the last (4)", got)
	}
}
