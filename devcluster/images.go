package devcluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// The images deploy/ and the article name.
const (
	BallastImage = "ballast:dev"
	ProxyImage   = "ballast-proxy:dev" // what deploy/inject injects
	ControlImage = "ballast-control:dev"
	GatewayImage = "ballast-gateway:dev" // what deploy/gateway and its provisioner run
)

// BuildImages builds Ballast's binaries from this module into dir, as
// their images hold them, and returns the Options.Images that maps each
// image deploy/ and the article name to its binary. dir is made
// world-readable: containers with a runAsUser (the injected proxy as 1337,
// the control plane as 65532) must reach their binary.
func BuildImages(ctx context.Context, dir string, progress io.Writer) (map[string]string, error) {
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	images := map[string]string{}
	for _, b := range []struct {
		image, name string
		env         []string
	}{
		{BallastImage, "ballast", nil},
		// Static and without x/net/trace, as the sidecar's and the control
		// plane's images hold them (see slimBuildTags in cmd/ballast).
		{ProxyImage, "ballast-proxy", []string{"CGO_ENABLED=0"}},
		{ControlImage, "ballast-control", []string{"CGO_ENABLED=0"}},
		{GatewayImage, "ballast-gateway", []string{"CGO_ENABLED=0"}},
	} {
		out := filepath.Join(dir, b.name)
		build := exec.CommandContext(ctx, "go", "build", "-tags", "grpcnotrace", "-o", out, "github.com/ballast-dev/ballast/cmd/"+b.name)
		build.Env = append(os.Environ(), b.env...)
		build.Stderr = progress
		if err := build.Run(); err != nil {
			return nil, fmt.Errorf("build %s: %w", b.name, err)
		}
		images[b.image] = out
	}
	return images, nil
}
