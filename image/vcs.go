package image

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// DefaultSource is the repository images name when the checkout has no
// GitHub origin to say otherwise.
const DefaultSource = "https://github.com/ballast-dev/ballast"

// VCS is what the checkout says about itself.
type VCS struct {
	Source, Revision, Version string
	// Time is the commit's time: images are stamped with it, not with the
	// time of the build, so a rebuild of one commit is the same image.
	Time time.Time
}

// ReadVCS asks git; outside a git checkout it returns "unknown"/"dev".
func ReadVCS(ctx context.Context, dir string) VCS {
	git := func(args ...string) string {
		out, err := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...).Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	v := VCS{Source: DefaultSource, Revision: git("rev-parse", "HEAD"), Time: time.Unix(0, 0).UTC()}
	if v.Revision == "" {
		v.Revision = "unknown"
	}
	v.Version = git("describe", "--tags", "--always", "--dirty")
	if v.Version == "" {
		v.Version = "dev"
	}
	if s, err := strconv.ParseInt(git("log", "-1", "--format=%ct"), 10, 64); err == nil {
		v.Time = time.Unix(s, 0).UTC()
	}
	if u := git("remote", "get-url", "origin"); strings.HasPrefix(u, "https://github.com/") {
		v.Source = strings.TrimSuffix(u, ".git")
	}
	return v
}
