package image

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// RootFS is img's root filesystem unpacked under cache, at
// cache/<manifest digest>/rootfs: unpacked once per digest (content), so
// pods of one image share it and a second cluster start unpacks nothing.
// It is what a container runtime would mount as the container's root.
func RootFS(cache string, img v1.Image) (string, error) {
	dg, err := img.Digest()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, dg.Algorithm+"-"+dg.Hex)
	root := filepath.Join(dir, "rootfs")
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, ".rootfs-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := Unpack(img, tmp); err != nil {
		return "", fmt.Errorf("image %s: %w", dg, err)
	}
	if err := os.Rename(tmp, root); err != nil && !os.IsExist(err) {
		if _, serr := os.Stat(root); serr != nil {
			return "", err
		}
	}
	return root, nil
}

// Unpack applies img's layers in order to dir, as the OCI image spec says:
// later layers replace earlier files, and .wh. whiteouts delete them.
// Entries that would leave dir are refused.
func Unpack(img v1.Image, dir string) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		err = applyLayer(rc, dir)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

func applyLayer(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		clean := filepath.Clean("/" + h.Name)
		if clean == "/" {
			continue
		}
		dst := filepath.Join(dir, clean)
		base := filepath.Base(clean)
		if base == ".wh..wh..opq" {
			entries, _ := os.ReadDir(filepath.Dir(dst))
			for _, e := range entries {
				os.RemoveAll(filepath.Join(filepath.Dir(dst), e.Name()))
			}
			continue
		}
		if strings.HasPrefix(base, ".wh.") {
			os.RemoveAll(filepath.Join(filepath.Dir(dst), strings.TrimPrefix(base, ".wh.")))
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(h.Mode) & os.ModePerm
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, mode); err != nil {
				return err
			}
			// Mode bits MkdirAll's umask drops (e.g. /tmp's 1777).
			if err := os.Chmod(dst, mode|tarSpecial(h.Mode)); err != nil {
				return err
			}
		case tar.TypeReg:
			os.RemoveAll(dst)
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Chmod(dst, mode); err != nil {
				return err
			}
		case tar.TypeSymlink:
			os.RemoveAll(dst)
			if err := os.Symlink(h.Linkname, dst); err != nil {
				return err
			}
		case tar.TypeLink:
			target := filepath.Join(dir, filepath.Clean("/"+h.Linkname))
			os.RemoveAll(dst)
			if err := os.Link(target, dst); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unsupported entry type %q", h.Name, h.Typeflag)
		}
	}
}

func tarSpecial(m int64) os.FileMode {
	var out os.FileMode
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	return out
}
