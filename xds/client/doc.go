// Package client is Ballast's one xDS client: the ADS stream a sidecar,
// the gateway or the bench holds to a control plane, and what it reads
// from it in the policy model. It is layered as grpc-go's own xDS client
// is:
//
//   - stream.go: one state-of-the-world ADS stream, its subscriptions,
//     ACK/NACK, and reconnection on grpc-go's backoff capped at 30 s;
//   - lds.go, rds.go, cds.go, eds.go: one decoder per resource type,
//     from Envoy's protos into package policy (the inverse of package
//     xds's renderer, which the round-trip tests hold it to);
//   - watch.go: the dependency walk, Listener → RouteConfiguration →
//     Clusters → ClusterLoadAssignments, for each watched target, and the
//     sidecar listeners (a wildcard Listener subscription) that map an
//     intercepted destination to its route.
//
// One Client carries every subscription of a process on one stream. It
// links no Kubernetes client, so the sidecar stays small.
//
// grpc-go's own xDS client cannot serve here: it only drives grpc-go's
// internal balancer tree, whose pickers need grpc-go's ClientConn, while
// the sidecar runs the same balancers over its own HTTP/2 connections.
package client
