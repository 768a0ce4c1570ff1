package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docs/benchmarks.md measures the data path as it is: its stamp matches
// the checkout's non-test Go files under dataPathDirs. Any change to them
// (the sidecar's data path, a balancer) regenerates the report in the same
// change; until then this fails, naming the last commit that touched them.
func TestBenchmarksReportIsCurrent(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := checkoutRoot(wd)
	if root == "" {
		t.Fatalf("no checkout of %s above %s", module, wd)
	}
	md, err := os.ReadFile(filepath.Join(root, "docs", "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := dataPathStamp(root)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`\| data path \| (sha256:[0-9a-f]{16}) `).FindSubmatch(md)
	switch {
	case m == nil:
		t.Fatalf("docs/benchmarks.md has no data-path stamp; the data path is now %s (last changed by %s): "+
			"regenerate it with `go run ./cmd/ballast bench --quick` and commit it", want, lastDataPathCommit(root))
	case string(m[1]) != want:
		t.Fatalf("docs/benchmarks.md measured the data path at %s; it is now %s, last changed by %s: "+
			"regenerate the report with `go run ./cmd/ballast bench --quick` (as root, a few minutes) and commit it with that change",
			m[1], want, lastDataPathCommit(root))
	}
}

// lastDataPathCommit names the last commit that touched the data path's
// non-test Go files, for the message of a report that is out of date.
func lastDataPathCommit(root string) string {
	args := []string{"-C", root, "log", "-1", "--format=%h (%ad, %s)", "--date=short", "--"}
	args = append(args, dataPathDirs...)
	args = append(args, ":(exclude,glob)**/*_test.go", ":(exclude,glob)**/testdata/**")
	out, err := exec.Command("git", args...).Output()
	if c := strings.TrimSpace(string(out)); err == nil && c != "" {
		if len(c) > 160 {
			c = c[:160] + "…)"
		}
		return "commit " + c
	}
	return "a commit git cannot name here (no history in this checkout)"
}
