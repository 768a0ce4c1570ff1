package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Config is one platform's image of a named index, as its config says.
type Config struct {
	Name     string
	Platform v1.Platform
	Digest   v1.Hash
	Config   v1.Config
}

// Inspect reads every image src holds: src is an archive WriteArchive wrote,
// an OCI layout directory, or a registry reference.
func Inspect(ctx context.Context, src string) ([]Config, error) {
	fi, err := os.Stat(src)
	switch {
	case err == nil && fi.IsDir():
		return inspectLayout(src)
	case err == nil:
		dir, err := os.MkdirTemp("", "ballast-inspect-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if err := untar(src, dir); err != nil {
			return nil, fmt.Errorf("archive %s: %w", src, err)
		}
		return inspectLayout(dir)
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	ref, err := name.ParseReference(src)
	if err != nil {
		return nil, fmt.Errorf("%s: neither a file nor an image reference: %w", src, err)
	}
	desc, err := remote.Get(ref, remote.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, err
		}
		return indexConfigs(ref.String(), idx)
	}
	img, err := desc.Image()
	if err != nil {
		return nil, err
	}
	c, err := imageConfig(ref.String(), img)
	if err != nil {
		return nil, err
	}
	return []Config{c}, nil
}

func inspectLayout(dir string) ([]Config, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("oci layout %s: %w", dir, err)
	}
	root, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := root.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []Config
	for _, d := range m.Manifests {
		n := d.Annotations["io.containerd.image.name"]
		if n == "" {
			n = d.Annotations["org.opencontainers.image.ref.name"]
		}
		if d.MediaType.IsIndex() {
			idx, err := root.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			cs, err := indexConfigs(n, idx)
			if err != nil {
				return nil, err
			}
			out = append(out, cs...)
			continue
		}
		img, err := root.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		c, err := imageConfig(n, img)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func indexConfigs(n string, idx v1.ImageIndex) ([]Config, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n, err)
	}
	var out []Config
	for _, d := range m.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n, err)
		}
		c, err := imageConfig(n, img)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func imageConfig(n string, img v1.Image) (Config, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return Config{}, fmt.Errorf("%s: config: %w", n, err)
	}
	dg, err := img.Digest()
	if err != nil {
		return Config{}, err
	}
	return Config{Name: n, Digest: dg, Config: cf.Config, Platform: v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}}, nil
}

func untar(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		clean := filepath.Clean(h.Name)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("entry %q leaves the archive", h.Name)
		}
		dst := filepath.Join(dir, clean)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			out, err := os.Create(dst)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}
