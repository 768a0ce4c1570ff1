package devcluster

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

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
func BuildImages(ctx context.Context, progress io.Writer) ([]image.Built, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == "/dev/null" {
		return nil, fmt.Errorf("build images: not inside the Ballast module (go env GOMOD: %q, %v)", gomod, err)
	}
	fmt.Fprintln(progress, "building the images of ballast, ballast-proxy and ballast-control for", image.HostPlatform())
	return image.Build(ctx, image.Options{Module: filepath.Dir(gomod), Platforms: []v1.Platform{image.HostPlatform()}, Local: true})
}
