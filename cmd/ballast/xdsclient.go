package main

// The xDS resolver and balancers, so every gRPC client this binary makes
// (the greeter client, the demo) can dial xds:///<name>.<namespace>:<port>
// with GRPC_XDS_BOOTSTRAP pointing at a file from `ballast bootstrap`.
import _ "google.golang.org/grpc/xds"
