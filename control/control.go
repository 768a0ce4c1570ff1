// Package control is the control plane as a process serves it: an xDS
// server over a registry, on a gRPC listener tuned for thousands of
// long-lived streams, beside an HTTP listener for probes, metrics and
// debugging, drained on shutdown so clients move to another replica.
// `ballast control`, `ballast-control` and the demo serve through it.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/xds"
)

// Config is what Serve serves, and where.
type Config struct {
	// Registry is the source of Services. Required.
	Registry *discovery.Registry
	// Synced reports whether the registry's sources have listed everything
	// once (/readyz waits for it); nil means synced.
	Synced    func() bool
	Translate xds.Options
	// Authenticator, when set, admits only clients with a valid token and
	// sends each only what its namespace may read (xds.Config); nil serves
	// everyone (--insecure).
	Authenticator xds.Authenticator
	// ReadAllNamespaces are the namespaces whose clients read every
	// Service (xds.Config).
	ReadAllNamespaces []string

	// XDS serves ADS and CSDS. Required.
	XDS net.Listener
	// HTTP serves /healthz, /readyz, /metrics and /debug/clients; nil
	// means none.
	HTTP net.Listener
	// Pprof also serves Go's profiles under /debug/pprof/ on HTTP. Off by
	// default: the listener also serves probes and metrics, which are for
	// everyone; profiles are for whoever debugs the process.
	Pprof bool
	// DrainTimeout bounds how long a stopping server lets unary calls
	// finish before closing the xDS streams; clients reconnect to another
	// replica and keep their config meanwhile.
	DrainTimeout time.Duration

	// Log receives the server's logs; nil means slog.Default().
	Log *slog.Logger
}

// connBufferSize is the read and write buffer of each client connection.
// Every client holds a connection, and gRPC's default 32 KiB buffers per
// connection dominate the heap with many clients; xDS messages are small,
// and a large response is only written in more chunks.
const connBufferSize = 8 << 10

// Serve serves until ctx ends, then drains, and closes both listeners.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	srv, err := xds.NewServer(xds.Config{
		Registry: cfg.Registry, Translate: cfg.Translate, Synced: cfg.Synced, Log: cfg.Log,
		Authenticator: cfg.Authenticator, ReadAllNamespaces: cfg.ReadAllNamespaces,
	})
	if err != nil {
		return err
	}
	gs := grpc.NewServer(
		// xDS streams live as long as their clients; let clients keep them
		// alive through idle periods without being disconnected.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.ReadBufferSize(connBufferSize),
		grpc.WriteBufferSize(connBufferSize),
	)
	srv.Register(gs)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error {
		if err := gs.Serve(cfg.XDS); err != nil {
			return fmt.Errorf("xds server: %w", err)
		}
		return nil
	})
	var hs *http.Server
	if cfg.HTTP != nil {
		hs = &http.Server{Handler: handler(srv, cfg.Pprof), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(cfg.HTTP); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http server: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-ctx.Done()
		drain(gs, cfg.DrainTimeout)
		if hs == nil {
			return nil
		}
		sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		return hs.Shutdown(sctx)
	})
	return g.Wait()
}

// drain sends GOAWAY first, so clients open no new stream here, then
// closes the xDS streams, which never end on their own: clients reconnect
// to another replica and serve their last config meanwhile, so waiting
// longer would only delay their next update.
func drain(gs *grpc.Server, timeout time.Duration) {
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		gs.Stop()
		<-stopped
	}
}

// handler is the HTTP listener's: the xDS server's probes, metrics and
// client table, and with pprof Go's profiles.
func handler(srv *xds.Server, withPprof bool) http.Handler {
	if !withPprof {
		return srv.Handler()
	}
	mux := http.NewServeMux()
	mux.Handle("/", srv.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
