// Package toolcache finds the binaries that tools/*.sh build from pinned Go
// modules into ~/.cache/ballast: the Kubernetes control plane and CoreDNS.
package toolcache

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Path returns $env when it is set; otherwise it runs tools/<script> (which
// builds on first use and returns at once after) and returns what the
// script prints. The script is looked for next to this source file, then in
// the working directory's checkout, so both tests and a ballast binary run
// from the repository find it.
func Path(env, script string) (string, error) {
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	_, file, _, _ := runtime.Caller(0)
	for _, path := range []string{filepath.Join(filepath.Dir(file), "..", "..", "tools", script), filepath.Join("tools", script)} {
		if _, err := os.Stat(path); err != nil {
			continue
		}
		cmd := exec.Command("bash", path)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("build with %s: %w", path, err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	return "", errors.New("tools/" + script + " not found: set " + env + " to what it prints")
}
