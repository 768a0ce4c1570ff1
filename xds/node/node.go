// Package node is the xDS node id Ballast gives its clients: proxyless gRPC
// apps (through `ballast bootstrap`) and the sidecar (`ballast proxy`) alike.
// It depends on nothing, so the sidecar binary, which links no Kubernetes
// client, can use it.
package node

// Prefix starts every node id Ballast writes.
const Prefix = "ballast~"

// ID is the node id of a client in pod, in namespace: ballast~<pod>.<namespace>.
//
// The control plane serves every node the same resources, so the id only
// names the pod for people reading CSDS, /debug/clients and logs. Istio's
// sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local also carries a proxy type,
// an IP and a DNS domain, because istiod serves each proxy type and each
// pod its own config; the control plane here learns the peer address from
// the stream and serves one cluster, so those fields would say nothing new.
// The <pod>.<namespace> part is Istio's own, so operators read it the same.
// A pod's app and its sidecar share the id; the client table tells their
// streams apart by their subscriptions (the sidecar's wildcard listeners).
// Without a namespace the id is ballast~<pod>.
func ID(pod, namespace string) string {
	if namespace == "" {
		return Prefix + pod
	}
	return Prefix + pod + "." + namespace
}
