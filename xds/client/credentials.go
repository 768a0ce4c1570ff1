package client

import (
	"context"
	"fmt"
	"os"
	"strings"
)

// TokenFile is call credentials that send the token in a file as
// `authorization: Bearer <token>` on every stream. The file is read for
// each stream, not once: a projected ServiceAccount token is rewritten by
// the kubelet before it expires, and a stream opened after that must carry
// the new one.
//
// It does not require a secure transport, unlike grpc-go's own JWT call
// credentials: the sidecar reaches the control plane over the pod network
// in plaintext today, and the token's audience is the control plane's
// alone, so one read off the wire lets its holder see its namespace's
// Services and nothing else (not the Kubernetes API).
type TokenFile string

// GetRequestMetadata reads the token.
func (f TokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("xds token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("xds token: %s is empty", f)
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity is false: see TokenFile.
func (TokenFile) RequireTransportSecurity() bool { return false }
