// Package wire holds, in its subdirectories, the xDS messages the client
// reads and sends: copies of Envoy's, cut down to the fields the client's
// code names (gen says how), in proto packages of their own
// (ballast.wire.envoy...). The wire format is Envoy's, field for field.
//
// Every meshed pod runs the client, and linking go-control-plane's
// messages costs each pod what their registration and the first decode
// build: the descriptors and coders of every file a decoded message
// reaches (Listener alone reaches access logs, tracing and matchers), and
// the pages of the binary holding them. The cut keeps the messages the
// client reads and nothing they do not.
package wire

//go:generate go run ./gen
