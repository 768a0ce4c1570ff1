// Package version is what a ballast binary says it is: the version and VCS
// revision the image build links in with -ldflags -X, so a binary copied out
// of an image still names the commit it came from.
package version

import "runtime/debug"

// Set by `ballast image build` (-X). A plain `go build` leaves them empty and
// Get falls back to the module's build info.
var (
	version  string
	revision string
)

// Info is a binary's version and revision.
type Info struct {
	Version  string
	Revision string
}

// Get returns what the linker set, else what the Go toolchain recorded
// (module version, vcs.revision when built with -buildvcs), else "dev".
func Get() Info {
	i := Info{Version: version, Revision: revision}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && i.Revision == "" {
				i.Revision = s.Value
			}
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Revision == "" {
		i.Revision = "unknown"
	}
	return i
}
