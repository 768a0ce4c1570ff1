// Package retryon names gRPC status codes as an xDS route's
// retry_policy.retry_on lists them: Envoy's gRPC names for the five that
// every xDS client retries on (cancelled, deadline-exceeded, internal,
// resource-exhausted, unavailable), and the other codes' names spelled
// the same way, which Ballast's clients read and gRPC's skip. The
// renderer (package xds) and the decoder (package xds/client) share it.
package retryon

import (
	"strings"

	"google.golang.org/grpc/codes"
)

var names = map[codes.Code]string{
	codes.Canceled: "cancelled", codes.Unknown: "unknown", codes.InvalidArgument: "invalid-argument",
	codes.DeadlineExceeded: "deadline-exceeded", codes.NotFound: "not-found", codes.AlreadyExists: "already-exists",
	codes.PermissionDenied: "permission-denied", codes.ResourceExhausted: "resource-exhausted",
	codes.FailedPrecondition: "failed-precondition", codes.Aborted: "aborted", codes.OutOfRange: "out-of-range",
	codes.Unimplemented: "unimplemented", codes.Internal: "internal", codes.Unavailable: "unavailable",
	codes.DataLoss: "data-loss", codes.Unauthenticated: "unauthenticated",
}

var byName = func() map[string]codes.Code {
	out := map[string]codes.Code{}
	for c, n := range names {
		out[n] = c
	}
	return out
}()

// Format is codes as a retry_on value, in the order given.
func Format(cs []codes.Code) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		if n, ok := names[c]; ok {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, ",")
}

// Parse is the codes a retry_on value names, in its order, each once.
// Conditions that are not gRPC codes (Envoy's HTTP ones, such as 5xx or
// connect-failure) are skipped, as gRPC's xDS clients skip them.
func Parse(s string) []codes.Code {
	var out []codes.Code
	seen := map[codes.Code]bool{}
	for _, part := range strings.Split(s, ",") {
		c, ok := byName[strings.ToLower(strings.TrimSpace(part))]
		if ok && !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}
