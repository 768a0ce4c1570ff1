package devcluster

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ImageDir is an image of more than one file, as the dev cluster runs it
// without an image store: a host directory laid out as the image's root
// filesystem, and the image's entrypoint there. E.g. the Gateway API
// conformance suite's echo image (tools/build-istio-echo.sh) holds
// usr/local/bin/server (its entrypoint), usr/local/bin/client (which the
// suite runs with exec) and cert.crt, cert.key.
//
// A program of the image (a file in one of imagePath's directories) runs
// from the host directory, by its path in the image or by name, as the
// entrypoint does. Every other file is bound read-only at its path in
// each of the image's containers (their own mount namespaces), over an
// empty file made on the host where the path is missing, as for a volume's
// mountPath.
type ImageDir struct {
	// Root is the host directory with the image's files.
	Root string
	// Entrypoint is the image's entrypoint, a path in the image such as
	// /usr/local/bin/server.
	Entrypoint string
}

// imagePath is the PATH of an image's containers: the directories whose
// files are the image's programs.
var imagePath = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// program maps name (a path in the image, or a bare name looked up in
// imagePath) to the host file of the image's program, if it has one.
func (d ImageDir) program(name string) (string, bool) {
	if d.Root == "" {
		return "", false
	}
	candidates := []string{name}
	if !strings.Contains(name, "/") {
		candidates = nil
		for _, dir := range imagePath {
			candidates = append(candidates, path.Join(dir, name))
		}
	} else if !path.IsAbs(name) || !isImagePathDir(path.Dir(path.Clean(name))) {
		return "", false
	}
	for _, c := range candidates {
		host := filepath.Join(d.Root, filepath.FromSlash(path.Clean(c)))
		if info, err := os.Stat(host); err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
			return host, true
		}
	}
	return "", false
}

func isImagePathDir(dir string) bool {
	for _, d := range imagePath {
		if d == dir {
			return true
		}
	}
	return false
}

// files are the image's files other than its programs: path in the image
// → host file, sorted by path.
func (d ImageDir) files() ([][2]string, error) {
	var out [][2]string
	err := filepath.WalkDir(d.Root, func(host string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(d.Root, host)
		if err != nil {
			return err
		}
		in := "/" + filepath.ToSlash(rel)
		if e.IsDir() {
			if isImagePathDir(in) {
				return fs.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() {
			return fmt.Errorf("image file %s: only regular files are supported", in)
		}
		out = append(out, [2]string{in, host})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out, err
}

// mountScript is the shell code that binds the image's files (not its
// programs) at their paths, read-only, inside a container's own mount
// namespace.
func (d ImageDir) mountScript() (string, error) {
	files, err := d.files()
	if err != nil {
		return "", fmt.Errorf("image directory %s: %w", d.Root, err)
	}
	var b strings.Builder
	for _, f := range files {
		if err := mountPoint(f[0], false); err != nil {
			return "", fmt.Errorf("image file %s: %w", f[0], err)
		}
		fmt.Fprintf(&b, "mount --bind %s %s && mount -o remount,bind,ro %s && ", shellQuote(f[1]), shellQuote(f[0]), shellQuote(f[0]))
	}
	return b.String(), nil
}
