// Package deploy holds Ballast's kustomize bases, embedded so that the
// binary can install what a user would apply: control/ (the control plane)
// and inject/ (the sidecar injector), each `kubectl apply -k` ready. They
// are charts/ballast rendered with values.yaml here (TestGeneratedFromChart
// keeps them so), for the dev cluster's images: edit the chart, not them.
package deploy

import "embed"

// FS holds control/ (with the Gateway API CRDs it reads, control/gateway-api)
// and inject/.
//
//go:embed control inject
var FS embed.FS
