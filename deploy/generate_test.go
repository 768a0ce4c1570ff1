package deploy_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/charts"
)

var update = flag.Bool("update", false, "render deploy/ from charts/ballast again")

// generated is deploy/ as charts/ballast renders with deploy/values.yaml:
// path (under deploy/) → content. The chart's crds/ become
// control/gateway-api (Gateway API's) and control/crd (Ballast's), templates/<dir>/ become <dir>/ (the top-level
// namespace.yaml goes to control/, which makes the namespace), and each
// directory gets a kustomization.yaml listing its files.
func generated(t *testing.T) map[string][]byte {
	t.Helper()
	raw, err := os.ReadFile("values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatalf("deploy/values.yaml: %v", err)
	}
	ms, err := charts.Render(context.Background(), charts.Options{Values: values})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	dirs := map[string][]string{}
	for _, m := range ms {
		var dir string
		switch {
		case m.CRD() && strings.HasPrefix(path.Base(m.Name), "gateway.networking.k8s.io_"):
			dir = "control/gateway-api"
		case m.CRD():
			dir = "control/crd"
		case path.Dir(m.Name) == "templates":
			dir = "control"
		default:
			dir = strings.TrimPrefix(path.Dir(m.Name), "templates/")
		}
		p := path.Join(dir, path.Base(m.Name))
		if _, dup := out[p]; dup {
			t.Fatalf("two chart files render to deploy/%s", p)
		}
		header := fmt.Sprintf("# Rendered from charts/ballast/%s with deploy/values.yaml: edit the chart.\n", m.Name)
		out[p] = []byte(header + strings.TrimPrefix(m.Content, "---\n"))
		dirs[dir] = append(dirs[dir], path.Base(m.Name))
	}
	dirs["control"] = append(dirs["control"], "crd", "gateway-api")
	comments := map[string]string{
		"control": "# The Ballast control plane: xDS for proxyless gRPC clients, read from the\n" +
			"# Kubernetes API. Apply with: kubectl apply -k deploy/control\n",
		"control/gateway-api": "# Gateway API v1.6.3, standard channel, as released (the chart's crds/):\n" +
			"# the GRPCRoute and ReferenceGrant CRDs the control plane reads. A cluster\n" +
			"# that already has Gateway API installed keeps its own: leave this base out\n" +
			"# of control/.\n",
		"control/crd": "# Ballast's own CRDs (the chart's crds/): TrafficPolicy (ballast.dev/v1alpha1).\n",
		"inject": "# The sidecar injector: a mutating webhook that adds `ballast proxy init`\n" +
			"# and `ballast proxy` to pods in namespaces labelled\n" +
			"# ballast-injection=enabled. Apply deploy/control first (it makes the\n" +
			"# ballast-system namespace), then: kubectl apply -k deploy/inject\n",
	}
	for dir, files := range dirs {
		slices.Sort(files)
		var b bytes.Buffer
		b.WriteString(comments[dir])
		b.WriteString("# Rendered from charts/ballast by `go test ./deploy -run TestGeneratedFromChart -update`.\n")
		b.WriteString("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n")
		for _, f := range files {
			fmt.Fprintf(&b, "  - %s\n", f)
		}
		out[path.Join(dir, "kustomization.yaml")] = b.Bytes()
	}
	return out
}

// TestGeneratedFromChart: deploy/ is charts/ballast rendered with
// deploy/values.yaml, file for file, and nothing else: one source, the
// chart. -update writes it so.
func TestGeneratedFromChart(t *testing.T) {
	want := generated(t)
	have := map[string][]byte{}
	for _, dir := range []string{"control", "inject"} {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			have[filepath.ToSlash(p)] = b
			return err
		})
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	if *update {
		for p := range have {
			if _, ok := want[p]; !ok {
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
			}
		}
		for p, b := range want {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	const fix = "deploy/ is rendered from charts/ballast: edit the chart, then go test ./deploy -run TestGeneratedFromChart -update"
	for p, b := range want {
		if got, ok := have[p]; !ok {
			t.Errorf("deploy/%s missing; %s", p, fix)
		} else if !bytes.Equal(got, b) {
			t.Errorf("deploy/%s differs from the chart's render; %s", p, fix)
		}
	}
	for p := range have {
		if _, ok := want[p]; !ok {
			t.Errorf("deploy/%s is not in the chart's render; %s", p, fix)
		}
	}
}
