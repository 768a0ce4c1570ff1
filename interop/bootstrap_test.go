package interop

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	grpcxds "google.golang.org/grpc/xds"

	"github.com/ballast-dev/ballast/xds"
)

// TestBootstrapParsers hands `ballast bootstrap`'s file, with and without a
// zone, to each implementation's own bootstrap parser: grpc-go's,
// grpc-js-xds's validator, and C-core's (through a Python channel, which
// reports a file it refuses as "Failed to create XdsClient").
func TestBootstrapParsers(t *testing.T) {
	ran(t.Name())
	files := map[string]xds.Bootstrap{
		"no zone":  {Server: "127.0.0.1:1", Pod: "client", Namespace: "default"},
		"zone":     {Server: "127.0.0.1:1", Pod: "client", Namespace: "default", Zone: "zone-a"},
		"metadata": {Server: "127.0.0.1:1", Pod: "client", Namespace: "default", Zone: "zone-a", Metadata: map[string]string{"app": "web"}},
	}
	parsers := map[string]func(t *testing.T, path string) error{
		"grpc-go": func(t *testing.T, path string) error {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = grpcxds.NewXDSResolverWithConfigForTesting(data)
			return err
		},
		"node": func(t *testing.T, path string) error {
			cmd := exec.Command("node", filepath.Join(interopDir(), "node", "client.js"), "--check-bootstrap", path)
			cmd.Env = append(os.Environ(), "NODE_PATH="+nodeModules(t))
			if out, err := cmd.CombinedOutput(); err != nil {
				return &parseError{string(out)}
			}
			return nil
		},
		"python": func(t *testing.T, path string) error {
			checkPython(t)
			c, _ := startScript(t, path, nil, debianPython, filepath.Join(interopDir(), "python", "client.py"))
			// The server is a closed port: the call fails, but not on the file.
			b := c.calls(t, "xds:///greeter.default:50051", 1)
			if strings.Contains(b.FirstError, "XdsClient") || strings.Contains(b.FirstError, "bootstrap") {
				return &parseError{b.FirstError}
			}
			return nil
		},
	}
	for lang, parse := range parsers {
		t.Run(lang, func(t *testing.T) {
			for name, b := range files {
				data, err := b.JSON()
				if err != nil {
					t.Fatal(err)
				}
				path := filepath.Join(t.TempDir(), "bootstrap.json")
				if err := os.WriteFile(path, data, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := parse(t, path); err != nil {
					t.Fatalf("%s refuses the bootstrap (%s): %v\n%s", lang, name, err, data)
				}
			}
			pass(lang, "bootstrap")
		})
	}
}

type parseError struct{ msg string }

func (e *parseError) Error() string { return strings.TrimSpace(e.msg) }
