// Package interop proves proxyless mode in gRPC implementations other than
// grpc-go: its tests run real grpc-js (Node) and gRPC C-core (Python)
// xDS clients, the scripts under node/ and python/, against `ballast
// control --files`, beside grpc-go doing the same, and render what each
// honoured into docs/languages.md (`go test ./interop -update`).
package interop
