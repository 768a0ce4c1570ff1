package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// iptablesPrograms are the programs `ballast-proxy init` runs
// (proxy/iptables): without them in the sidecar's image its init container
// cannot install the redirect.
var iptablesPrograms = []string{"iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"}

// HostPlatform is the platform of the machine building the images: the only
// one whose images can take programs from it.
func HostPlatform() v1.Platform {
	return v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
}

// iptablesLayer holds the build machine's iptables as the programs above
// name it (links to its multi-call binary), the xtables extensions it
// loads, and the shared libraries of both, at the paths the machine has
// them: the static binaries of the images need no libc, iptables does.
func iptablesLayer(ctx context.Context) (v1.Layer, error) {
	files := map[string]bool{} // host paths to copy
	links := map[string]string{}
	for _, name := range iptablesPrograms {
		p, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("iptables for the sidecar's image: %w (tools/deps.sh installs it)", err)
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, err
		}
		files[real] = true
		if filepath.Base(real) != name {
			links["/usr/sbin/"+name] = filepath.Base(real)
		}
		if filepath.Dir(real) != "/usr/sbin" {
			return nil, fmt.Errorf("iptables for the sidecar's image: %s is %s, want it in /usr/sbin", name, real)
		}
	}
	var elves []string
	for f := range files {
		elves = append(elves, f)
	}
	libs, err := sharedLibraries(ctx, elves)
	if err != nil {
		return nil, err
	}
	// The extensions live beside libxtables, in xtables/.
	for _, l := range libs {
		if strings.HasPrefix(filepath.Base(l), "libxtables.so") {
			// By its real path, the one iptables was built to look in
			// (/lib is a link to /usr/lib on merged-/usr systems, and ldd
			// names the library by the loader's search path).
			dir, err := filepath.EvalSymlinks(filepath.Join(filepath.Dir(l), "xtables"))
			if err != nil {
				return nil, fmt.Errorf("iptables extensions: %w", err)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				return nil, fmt.Errorf("iptables extensions: %w", err)
			}
			var exts []string
			for _, e := range entries {
				p := filepath.Join(dir, e.Name())
				switch {
				case !strings.HasSuffix(e.Name(), ".so"):
				case e.Type().IsRegular():
					exts = append(exts, p)
				case e.Type()&os.ModeSymlink != 0:
					// Aliases (libxt_REDIRECT.so → libxt_NAT.so).
					target, err := os.Readlink(p)
					if err != nil {
						return nil, err
					}
					if strings.Contains(target, "/") {
						return nil, fmt.Errorf("iptables extension %s links out of its directory, to %s", p, target)
					}
					links[p] = target
				}
			}
			more, err := sharedLibraries(ctx, exts)
			if err != nil {
				return nil, err
			}
			elves = append(elves, exts...)
			libs = append(libs, more...)
		}
	}
	for _, l := range libs {
		files[l] = true
	}
	for _, e := range elves {
		files[e] = true
	}
	return hostLayer(files, links)
}

// sharedLibraries lists what ldd says the programs load (every library,
// by the path the loader finds it at, and the loader itself).
func sharedLibraries(ctx context.Context, progs []string) ([]string, error) {
	seen := map[string]bool{}
	if len(progs) > 0 {
		out, err := exec.CommandContext(ctx, "ldd", progs...).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", strings.Join(progs, " "), err)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && strings.HasSuffix(f[0], ":"):
				// The heading of one file's list, when there are several.
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				seen[f[2]] = true
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				seen[f[0]] = true
			}
		}
	}
	var out []string
	for l := range seen {
		out = append(out, l)
	}
	sort.Strings(out)
	return out, nil
}

// hostLayer tars host files (contents followed through symlinks) at their
// own paths, and symlinks (path → target), with their parent directories,
// fixed times and owner root.
func hostLayer(files map[string]bool, links map[string]string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	var paths []string
	for f := range files {
		paths = append(paths, f)
	}
	for l := range links {
		paths = append(paths, l)
	}
	for _, p := range paths {
		for d := filepath.Dir(p); d != "/"; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	ds := make([]string, 0, len(dirs))
	for d := range dirs {
		ds = append(ds, d)
	}
	sort.Strings(ds)
	for _, d := range ds {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	slices.Sort(paths)
	for _, p := range paths {
		name := strings.TrimPrefix(p, "/")
		if target, ok := links[p]; ok {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		info, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(info.Mode().Perm()), Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// loaderLayer holds the host's dynamic loader and the libraries a
// dynamically linked binary loads, at their paths; nil for a static one
// (no PT_INTERP), which an empty base runs as it is.
func loaderLayer(ctx context.Context, bin string) (v1.Layer, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	defer f.Close()
	if !slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
		return nil, nil
	}
	libs, err := sharedLibraries(ctx, []string{bin})
	if err != nil {
		return nil, err
	}
	files := map[string]bool{}
	for _, l := range libs {
		files[l] = true
	}
	return hostLayer(files, nil)
}
