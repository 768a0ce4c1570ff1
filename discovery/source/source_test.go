package source

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
)

const greeterService = `apiVersion: v1
kind: Service
metadata: {name: greeter, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: grpc, port: 50051}]
`

func TestOpenFilesServesWhatLoaded(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "greeter.yaml"), []byte(greeterService), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "broken.yaml"), []byte("kind: Service\nmetadata: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := discovery.NewRegistry()
	set, err := Open(Config{Files: dir}, reg)
	if err != nil {
		t.Fatalf("Open: a bad file must not fail the source: %v", err)
	}
	if _, ok := reg.Get(discovery.Key{Namespace: "default", Name: "greeter"}); !ok {
		t.Errorf("registry lacks default/greeter after Open; has %d services", len(reg.List()))
	}
	if !set.Synced() {
		t.Error("a file source is synced once loaded")
	}
}

func TestRESTConfigNamesTheMissingKubeconfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.kubeconfig")
	_, err := RESTConfig(missing)
	if err == nil || !strings.Contains(err.Error(), "nope.kubeconfig") {
		t.Fatalf("RESTConfig(%s) = %v; want an error naming the file", missing, err)
	}
}

func TestOpenKubernetesWithoutClusterFails(t *testing.T) {
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "absent"))
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("HOME", t.TempDir())
	if _, err := Open(Config{Kubernetes: true}, discovery.NewRegistry()); err == nil {
		t.Fatal("Open with no kubeconfig and no service account succeeded")
	}
}
