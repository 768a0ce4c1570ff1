package bench

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// dataPathDirs hold the code whose speed and memory docs/benchmarks.md
// reports: the sidecar's data path, the balancers and the xDS client every
// sidecar runs. A report is current while the
// non-test Go files under them are as they were when it was generated.
var dataPathDirs = []string{"proxy", "balancer", "internal/connset", "cmd/ballast-proxy", "xds/client"}

// module is the module whose checkout holds the data path.
const module = "github.com/ballast-dev/ballast"

// checkoutRoot is the directory, dir or one above it, whose go.mod
// declares this module; empty when there is none.
func checkoutRoot(dir string) string {
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			line, _ := bufio.NewReader(f).ReadString('\n')
			f.Close()
			if strings.TrimSpace(strings.TrimPrefix(line, "module")) == module {
				return dir
			}
		}
		up := filepath.Dir(dir)
		if up == dir {
			return ""
		}
		dir = up
	}
}

// dataPathStamp hashes the data path's non-test Go files in the checkout
// at root, names and contents, as the files are (committed or not), so a
// report generated before committing the change it measures still matches
// it, and a rebase that leaves the files alone keeps it.
func dataPathStamp(root string) (string, error) {
	var files []string
	for _, dir := range dataPathDirs {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			return "", fmt.Errorf("data path stamp: %w", err)
		}
	}
	slices.Sort(files)
	h := sha256.New()
	for _, path := range files {
		rel, _ := filepath.Rel(root, path)
		fmt.Fprintf(h, "%s\x00", filepath.ToSlash(rel))
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("data path stamp: %w", err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("data path stamp: %w", err)
		}
		h.Write([]byte{0})
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// gitHead is the commit checked out at root, with "+ uncommitted changes
// to the data path" when those files differ from it; empty when git
// cannot tell.
func gitHead(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return ""
	}
	head := strings.TrimSpace(string(out))
	if err := exec.Command("git", append([]string{"-C", root, "diff", "--quiet", "HEAD", "--"}, dataPathDirs...)...).Run(); err != nil {
		head += " + uncommitted changes to the data path"
	}
	return head
}

// stampOf is the report's record of the checkout it measured: the data
// path's stamp and the commit, from the working directory's checkout.
func stampOf() (stamp, commit string) {
	wd, err := os.Getwd()
	if err != nil {
		return "", ""
	}
	root := checkoutRoot(wd)
	if root == "" {
		return "", ""
	}
	stamp, err = dataPathStamp(root)
	if err != nil {
		return "", ""
	}
	return stamp, gitHead(root)
}
