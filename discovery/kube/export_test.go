package kube

import (
	"context"
	"log/slog"

	"k8s.io/client-go/rest"
)

// RunElector runs an elector of identity on the Lease namespace/name
// until ctx ends, calling lead while it holds the Lease.
func RunElector(ctx context.Context, cfg *rest.Config, namespace, name, identity string, log *slog.Logger, lead func(context.Context)) error {
	c, err := newClient(cfg)
	if err != nil {
		return err
	}
	e := &elector{leases: c.leases, namespace: namespace, name: name, identity: identity, log: log}
	e.run(ctx, lead)
	return nil
}
