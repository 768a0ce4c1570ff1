package devcluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/ballast-dev/ballast/image"
)

// The images deploy/ and the article name, and the tag the cluster pushes
// Options.Images under.
const (
	BallastImage = "ballast:" + DevTag
	ProxyImage   = "ballast-proxy:" + DevTag // what deploy/inject injects
	ControlImage = "ballast-control:" + DevTag
	GatewayImage = "ballast-gateway:" + DevTag // what deploy/gateway and its provisioner run
	DevTag       = "dev"
)

// BuildImages builds Ballast's images (image.Ballast(): the control plane,
// the sidecar, the CLI that is also the webhook, the greeter) from the
// module the working directory is in, as `ballast image build` does, for
// this machine's platform only: what the cluster pulls and runs is what a
// user pulls.
//
// The binaries are linked into ~/.cache/ballast/images/<os>-<arch>, not a
// temporary directory: `go build -o` leaves a binary whose build ID says it
// is up to date alone, so the second test binary of a run (e2e, interop)
// or a rerun of an unchanged tree links nothing; linking the four binaries
// is most of an image build once the Go build cache is warm. A lock on the
// directory serializes builds and the reading of the binaries into layers,
// as test binaries run in parallel.
func BuildImages(ctx context.Context, progress io.Writer) ([]image.Built, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == "/dev/null" {
		return nil, fmt.Errorf("build images: not inside the Ballast module (go env GOMOD: %q, %v)", gomod, err)
	}
	p := image.HostPlatform()
	work, unlock, err := lockBuildDir(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	fmt.Fprintln(progress, "building the images of ballast, ballast-proxy and ballast-control for", p, "in", work)
	return image.Build(ctx, image.Options{Module: filepath.Dir(gomod), Platforms: []v1.Platform{p}, Local: true, Work: work})
}

// lockBuildDir makes and locks the directory images are built in;
// unlock releases it.
func lockBuildDir(ctx context.Context) (dir string, unlock func(), err error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", nil, fmt.Errorf("build images: %w", err)
	}
	dir = filepath.Join(cache, "ballast", "images") // image.Build adds <os>-<arch>/
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("build images: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", nil, fmt.Errorf("build images: %w", err)
	}
	// Blocking flock cannot watch ctx: poll a non-blocking one instead.
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return dir, func() { f.Close() }, nil
		}
		if err != unix.EWOULDBLOCK {
			f.Close()
			return "", nil, fmt.Errorf("build images: lock %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return "", nil, fmt.Errorf("build images: waiting for %s: %w", dir, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
