package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ballast-dev/ballast/image"
)

// imageRegistry is the OCI registry the cluster's nodes pull every image
// from: go-containerregistry's registry on 127.0.0.1, its blobs on disk in
// the run directory. It stands for every registry a manifest names
// (mirror), as a containerd mirror would: no other address is dialled.
type imageRegistry struct {
	addr string
	srv  *http.Server
	done chan struct{}
}

func startRegistry(dir string) (*imageRegistry, error) {
	blobs := filepath.Join(dir, "registry")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &imageRegistry{addr: ln.Addr().String(), done: make(chan struct{}),
		srv: &http.Server{Handler: registry.New(
			registry.Logger(log.New(io.Discard, "", 0)),
			registry.WithBlobHandler(registry.NewDiskBlobHandler(blobs)),
		)}}
	go func() {
		defer close(r.done)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "dev cluster registry:", err)
		}
	}()
	return r, nil
}

func (r *imageRegistry) close() {
	r.srv.Close()
	<-r.done
}

// mirror is where ref is pulled from: the same repository path (and tag or
// digest) in the cluster's registry, whatever registry ref names.
// "ballast:dev" is <registry>/ballast:dev; "registry.k8s.io/x/y:v1" is
// <registry>/x/y:v1.
func (r *imageRegistry) mirror(ref string) (name.Reference, error) {
	parsed, err := name.ParseReference(ref, name.WithDefaultRegistry(r.addr))
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	repo, err := name.NewRepository(r.addr + "/" + parsed.Context().RepositoryStr())
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	switch p := parsed.(type) {
	case name.Digest:
		return repo.Digest(p.DigestStr()), nil
	case name.Tag:
		return repo.Tag(p.TagStr()), nil
	}
	return nil, fmt.Errorf("image %q: neither a tag nor a digest", ref)
}

// Registry is the address (127.0.0.1:port) of the registry the nodes pull
// from. `docker push`-able as any registry on loopback (plain HTTP).
func (c *Cluster) Registry() string { return c.registry.addr }

// PushImages pushes built images to the cluster's registry as <name>:tag
// (what deploy/ and the chart name with image.registry ""), from where
// the nodes pull them: every platform of each index.
func (c *Cluster) PushImages(ctx context.Context, tag string, built []image.Built) error {
	return image.Push(ctx, c.registry.addr, tag, built)
}

// PushImage pushes one image to the cluster's registry under ref's
// repository path and tag, for pods that name ref.
func (c *Cluster) PushImage(ctx context.Context, ref string, img v1.Image) error {
	m, err := c.registry.mirror(ref)
	if err != nil {
		return err
	}
	if err := remote.Write(m, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", m, err)
	}
	return nil
}
