// Package charts holds Ballast's Helm chart, charts/ballast, embedded, and
// renders it with Helm's own engine (helm.sh/helm/v4), as `helm template`
// does: the one source of what is installed, whether by `helm install`,
// `ballast install` or deploy/ (the chart rendered with deploy/values.yaml).
package charts

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
)

// FS holds the chart's directory, ballast/ (all: keeps _helpers.tpl).
//
//go:embed all:ballast
var FS embed.FS

// Name is the chart's name, and the release name `ballast install` uses.
const Name = "ballast"

// DefaultNamespace is where the chart is installed unless told otherwise.
const DefaultNamespace = "ballast-system"

// Load reads the embedded chart.
func Load() (*chart.Chart, error) {
	var files []*archive.BufferedFile
	err := fs.WalkDir(FS, Name, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := FS.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, &archive.BufferedFile{Name: strings.TrimPrefix(p, Name+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", Name, err)
	}
	c, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", Name, err)
	}
	return c, nil
}

// Options say how to render the chart.
type Options struct {
	// Namespace is the release's namespace (DefaultNamespace if empty).
	Namespace string
	// Values override the chart's values.yaml, as helm's --values and --set.
	Values map[string]any
	// Config, if set, lets the chart's lookup read the cluster, as helm
	// install and upgrade do: the webhook's certificate is then kept across
	// renders. Without it (helm template) lookup finds nothing.
	Config *rest.Config
	// Upgrade renders for an upgrade of an installed release.
	Upgrade bool
}

// Manifest is one file of the rendered chart: a template's output or a CRD
// of crds/, named by its path in the chart.
type Manifest struct {
	Name    string // e.g. templates/control/deployment.yaml, crds/x.yaml
	Content string
}

// CRD reports whether m is from crds/: installed when missing, never
// upgraded or deleted, as Helm treats that directory.
func (m Manifest) CRD() bool { return strings.HasPrefix(m.Name, "crds/") }

// Objects decodes the manifest's objects.
func (m Manifest) Objects() ([]*unstructured.Unstructured, error) {
	objs, err := Decode(m.Content)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name, err)
	}
	return objs, nil
}

// Render renders the chart: the CRDs of crds/ first, then every template
// that renders to something, in path order. Values are checked as Helm
// checks them, and a template's error names its file and line.
func Render(ctx context.Context, opts Options) ([]Manifest, error) {
	c, err := Load()
	if err != nil {
		return nil, err
	}
	ns := cmp.Or(opts.Namespace, DefaultNamespace)
	vals, err := chartutil.ToRenderValues(c, opts.Values, common.ReleaseOptions{
		Name: Name, Namespace: ns, Revision: 1, IsInstall: !opts.Upgrade, IsUpgrade: opts.Upgrade,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("chart %s values: %w", Name, err)
	}
	var e engine.Engine
	if opts.Config != nil {
		e = engine.New(opts.Config)
	}
	rendered, err := e.RenderWithContext(ctx, c, vals)
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", Name, err)
	}
	var out []Manifest
	for _, f := range c.CRDs() {
		out = append(out, Manifest{Name: f.Name, Content: string(f.Data)})
	}
	var tpls []Manifest
	for name, content := range rendered {
		name = strings.TrimPrefix(name, Name+"/")
		if path.Ext(name) != ".yaml" || strings.TrimSpace(content) == "" {
			continue
		}
		tpls = append(tpls, Manifest{Name: name, Content: strings.TrimLeft(content, "\n")})
	}
	slices.SortFunc(tpls, func(a, b Manifest) int { return strings.Compare(a.Name, b.Name) })
	return append(out, tpls...), nil
}

// Decode reads a stream of YAML or JSON objects, skipping empty documents.
func Decode(manifests string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(u.Object) > 0 {
			out = append(out, &u)
		}
	}
}
