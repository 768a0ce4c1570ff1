// Package linktest checks what a binary links, for the tests that keep a
// slim binary slim.
package linktest

import (
	"os/exec"
	"strings"
	"testing"
)

// Forbid fails t for each package the main package in the current
// directory links (built as its image builds it, with grpcnotrace) that
// is one of forbidden or inside it; a prefix ending in "/" forbids
// everything it starts.
func Forbid(t *testing.T, binary string, forbidden ...string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, prefix := range forbidden {
			if pkg == prefix || strings.HasPrefix(pkg, strings.TrimSuffix(prefix, "/")+"/") {
				t.Errorf("%s links %s", binary, pkg)
			}
		}
	}
}
