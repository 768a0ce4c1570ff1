package bench

// Ballast's own modes that run in a process of their own. Each is pending
// until its package lands on main; then its Path starts it in front of the
// pods like a peer.

// Proxyless is a grpc-go client dialling xds:/// targets served by
// `ballast control`.
func Proxyless() Path {
	return Pending("proxyless xDS", "the xDS control plane (issue 4) has not landed on main yet")
}

// Sidecar is `ballast proxy` in front of an unmodified client.
func Sidecar() Path {
	return Pending("sidecar", "the sidecar proxy (issue 5) has not landed on main yet")
}
