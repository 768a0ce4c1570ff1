//go:build tools

// Tools module: pins the istiod (pilot-discovery) that `ballast bench`
// compares Ballast's control plane with. Built by tools/build-istiod.sh into
// ~/.cache/ballast, never imported.
package tools

import _ "istio.io/istio/pilot/cmd/pilot-discovery"
