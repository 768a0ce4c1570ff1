package main

import (
	"os/exec"
	"strings"
	"testing"
)

// Every meshed pod runs this binary, so it links no Kubernetes client
// code: the sidecar learns Services from the control plane, and the policy
// model and xDS client it reads them with stand apart from discovery.
func TestLinksNoKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/") {
			t.Errorf("ballast-proxy links %s", pkg)
		}
	}
}
