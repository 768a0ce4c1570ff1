// Package image builds Ballast's OCI images from the checkout: each image is
// one static Go binary (CGO_ENABLED=0, cross-compiled per platform) on an
// empty base, run as a numeric non-root user, labelled with the source,
// revision and version it came from, and published as one index holding
// every platform. Nothing is downloaded: there is no base image.
package image

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// OCI annotation keys Ballast's images carry as config labels.
const (
	LabelSource   = "org.opencontainers.image.source"
	LabelRevision = "org.opencontainers.image.revision"
	LabelVersion  = "org.opencontainers.image.version"
)

// User is the uid:gid every image runs as: numeric, so runAsNonRoot can check
// it without a passwd file in the image (65532 is distroless' nonroot).
const User = "65532:65532"

// BinDir is where binaries live in an image; PATH names it, so a Pod's
// `command: ["ballast", "inject"]` resolves as it does on a host.
const BinDir = "/usr/local/bin"

// Spec is one image: the binary it holds and how it starts.
type Spec struct {
	// Name is the image's repository name under the push prefix.
	Name string
	// Package is the main package built into it, relative to the module.
	Package string
	// Binary is the file name under BinDir.
	Binary string
	// Args follow the binary in the entrypoint.
	Args []string
	// Tags are Go build tags.
	Tags []string
	// Iptables adds the build machine's iptables (programs, extensions and
	// the libraries they load) under /usr/sbin, for the platform of that
	// machine only: `ballast-proxy init` runs iptables-restore.
	Iptables bool
}

// Entrypoint is the image's entrypoint.
func (s Spec) Entrypoint() []string {
	return append([]string{BinDir + "/" + s.Binary}, s.Args...)
}

// Ballast lists the images of every binary that runs in a pod: the control
// plane, the sidecar (`ballast-proxy` and its init, `ballast-proxy init`),
// the full CLI, which deploy/inject runs as the webhook (`ballast inject`),
// and the greeter tests and the article deploy (`ballast greeter serve`,
// same binary, another entrypoint, so registries store its layer once).
func Ballast() []Spec {
	slim := []string{"grpcnotrace"}
	return []Spec{
		{Name: "ballast-control", Package: "./cmd/ballast-control", Binary: "ballast-control", Tags: slim},
		{Name: "ballast-proxy", Package: "./cmd/ballast-proxy", Binary: "ballast-proxy", Tags: slim, Iptables: true},
		{Name: "ballast-gateway", Package: "./cmd/ballast-gateway", Binary: "ballast-gateway", Tags: slim},
		{Name: "ballast", Package: "./cmd/ballast", Binary: "ballast"},
		{Name: "greeter", Package: "./cmd/ballast", Binary: "ballast", Args: []string{"greeter", "serve"}},
	}
}

// Platforms are the platforms every index holds.
var Platforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// Options say what to build and how to label it.
type Options struct {
	// Module is the checkout's root (where go.mod is).
	Module string
	// Specs are the images to build; Ballast() when empty.
	Specs []Spec
	// Platforms; the package's Platforms when empty.
	Platforms []v1.Platform
	// Source, Revision and Version label the images and are linked into the
	// binaries; VCS fills what is empty.
	Source, Revision, Version string
	// Work holds the built binaries; a temporary directory when empty.
	Work string
	// Local builds as `go build` and `go test` do, without -trimpath, so
	// the build cache the tests filled serves it: for images that never
	// leave the machine (the dev cluster's). Released images are built
	// with -trimpath, which no other build shares.
	Local bool
}

// Built is one image: its spec and its index.
type Built struct {
	Spec  Spec
	Index v1.ImageIndex
	// Warnings say what the image lacks on some platform.
	Warnings []string
}

// Build compiles each spec's binary once per platform (images that share a
// package share the binary and so the layer) and assembles the indexes.
func Build(ctx context.Context, o Options) ([]Built, error) {
	if o.Module == "" {
		return nil, fmt.Errorf("image build: no module directory")
	}
	if len(o.Specs) == 0 {
		o.Specs = Ballast()
	}
	if len(o.Platforms) == 0 {
		o.Platforms = Platforms
	}
	vcs := ReadVCS(ctx, o.Module)
	if o.Source == "" {
		o.Source = vcs.Source
	}
	if o.Revision == "" {
		o.Revision = vcs.Revision
	}
	if o.Version == "" {
		o.Version = vcs.Version
	}
	if o.Work == "" {
		dir, err := os.MkdirTemp("", "ballast-image-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		o.Work = dir
	}
	created := vcs.Time
	layers := map[string]v1.Layer{}
	var iptables v1.Layer
	var out []Built
	for _, s := range o.Specs {
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		var warnings []string
		for _, p := range o.Platforms {
			key := strings.Join([]string{s.Package, strings.Join(s.Tags, ","), p.OS, p.Architecture}, "|")
			layer, ok := layers[key]
			if !ok {
				bin := filepath.Join(o.Work, p.OS+"-"+p.Architecture, s.Name)
				if err := compile(ctx, o, s, p, bin); err != nil {
					return nil, err
				}
				var err error
				if layer, err = binaryLayer(bin, s.Binary); err != nil {
					return nil, fmt.Errorf("image %s %s: %w", s.Name, p, err)
				}
				layers[key] = layer
			}
			extra := []v1.Layer{layer}
			if s.Iptables && p.Equals(HostPlatform()) {
				if iptables == nil {
					var err error
					if iptables, err = iptablesLayer(ctx); err != nil {
						return nil, fmt.Errorf("image %s %s: %w", s.Name, p, err)
					}
				}
				extra = append(extra, iptables)
			} else if s.Iptables {
				warnings = append(warnings, fmt.Sprintf("%s: no iptables (only a %s machine's can be copied in), so `ballast-proxy init` cannot run", p, HostPlatform()))
			}
			img, err := assemble(extra, s, p, o, created)
			if err != nil {
				return nil, fmt.Errorf("image %s %s: %w", s.Name, p, err)
			}
			p := p
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
				Add:        img,
				Descriptor: v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: &p},
			})
		}
		out = append(out, Built{Spec: s, Index: idx, Warnings: warnings})
	}
	return out, nil
}

func assemble(layers []v1.Layer, s Spec, p v1.Platform, o Options, created time.Time) (v1.Image, error) {
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: created}
	cf.Author = o.Source
	cf.Config.Entrypoint = s.Entrypoint()
	cf.Config.Cmd = nil
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=" + BinDir + ":/usr/sbin"}
	cf.Config.Labels = map[string]string{
		LabelSource:   o.Source,
		LabelRevision: o.Revision,
		LabelVersion:  o.Version,
	}
	return mutate.ConfigFile(img, cf)
}

// compile builds one static binary for one platform. The Go build cache keys
// on content, so a second image build of the same tree links and stops.
func compile(ctx context.Context, o Options, s Spec, p v1.Platform, out string) error {
	pkg := "github.com/ballast-dev/ballast/internal/version"
	ldflags := fmt.Sprintf("-s -w -X %s.version=%s -X %s.revision=%s", pkg, o.Version, pkg, o.Revision)
	args := []string{"build", "-trimpath", "-ldflags", ldflags, "-o", out}
	if o.Local {
		args = slices.Delete(args, 1, 2)
	}
	if len(s.Tags) > 0 {
		args = append(args, "-tags", strings.Join(s.Tags, ","))
	}
	args = append(args, s.Package)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = o.Module
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s for %s/%s: %w: %s", s.Package, p.OS, p.Architecture, err, stderr.Bytes())
	}
	return nil
}

// FromBinaries assembles images of specs for this machine's platform from
// binaries already built for it (the path of each spec's Binary, by
// Binary name), as Build would from the sources; specs with no binary are
// left out. `ballast dev cluster` and `ballast demo` run these when they
// are not in a checkout to build from. A binary linked dynamically (a plain
// `go build` with cgo, as `go run ./cmd/ballast` is) gets the host's
// loader and the libraries it loads in a layer of their own, as the
// sidecar's iptables does: such images run on this machine only, which is
// where these are for.
func FromBinaries(ctx context.Context, specs []Spec, bins map[string]string, o Options) ([]Built, error) {
	p := HostPlatform()
	vcs := VCS{Source: DefaultSource, Version: "dev", Revision: "unknown"}
	o.Source, o.Version, o.Revision = cmp.Or(o.Source, vcs.Source), cmp.Or(o.Version, vcs.Version), cmp.Or(o.Revision, vcs.Revision)
	var iptables v1.Layer
	var out []Built
	for _, s := range specs {
		bin, ok := bins[s.Binary]
		if !ok {
			continue
		}
		layer, err := binaryLayer(bin, s.Binary)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		layers := []v1.Layer{layer}
		libs, err := loaderLayer(ctx, bin)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		if libs != nil {
			layers = append(layers, libs)
		}
		if s.Iptables {
			if iptables == nil {
				if iptables, err = iptablesLayer(ctx); err != nil {
					return nil, fmt.Errorf("image %s: %w", s.Name, err)
				}
			}
			layers = append(layers, iptables)
		}
		img, err := assemble(layers, s, p, o, time.Unix(0, 0))
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: &p},
		})
		out = append(out, Built{Spec: s, Index: idx})
	}
	return out, nil
}
