package image

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Reference is the image's name under prefix (a registry and path, e.g.
// ghcr.io/ballast-dev, or empty for a bare name) with tag.
func Reference(prefix, image, tag string) (name.Tag, error) {
	s := image + ":" + tag
	if prefix != "" {
		s = strings.TrimSuffix(prefix, "/") + "/" + s
	}
	t, err := name.NewTag(s, name.WithDefaultRegistry("docker.io"))
	if err != nil {
		return name.Tag{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	return t, nil
}

// Push writes each index to prefix/<name>:tag. Loopback registries are
// spoken to over plain HTTP, as go-containerregistry does for 127.0.0.0/8
// and localhost; others over HTTPS with the default keychain-less transport.
func Push(ctx context.Context, prefix, tag string, built []Built) error {
	for _, b := range built {
		ref, err := Reference(prefix, b.Spec.Name, tag)
		if err != nil {
			return err
		}
		if err := remote.WriteIndex(ref, b.Index, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
	}
	return nil
}

// WriteArchive writes every index into one OCI image layout, tarred at path:
// what `ctr import`, `kind load image-archive` and `docker load` take. Each
// index is named (io.containerd.image.name, org.opencontainers.image.ref.name)
// prefix/<name>:tag.
func WriteArchive(path, prefix, tag string, built []Built) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := WriteLayout(dir, prefix, tag, built); err != nil {
		return err
	}
	return tarDir(dir, path)
}

// WriteLayout writes every index into an OCI image layout directory.
func WriteLayout(dir, prefix, tag string, built []Built) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("oci layout %s: %w", dir, err)
	}
	for _, b := range built {
		ref, err := Reference(prefix, b.Spec.Name, tag)
		if err != nil {
			return err
		}
		err = p.AppendIndex(b.Index, layout.WithAnnotations(map[string]string{
			"io.containerd.image.name":          ref.Name(),
			"org.opencontainers.image.ref.name": tag,
		}))
		if err != nil {
			return fmt.Errorf("oci layout %s: %s: %w", dir, ref, err)
		}
	}
	return nil
}

func tarDir(dir, path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("archive %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
