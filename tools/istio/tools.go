//go:build tools

// Tools module: pins the istio.io/istio that tools/build-istiod.sh builds
// istiod (pilot-discovery) from, which `ballast bench` compares Ballast's
// control plane with, and that tools/build-istio-echo.sh builds Istio's echo
// server and client from, the application the Gateway API conformance suite's
// mesh tests run. Built into ~/.cache/ballast, never imported.
package tools

import (
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
	_ "istio.io/istio/pkg/test/echo/cmd/client"
	_ "istio.io/istio/pkg/test/echo/cmd/server"
)
