// Package control is the control plane as a process serves it: an xDS
// server over a registry, on a gRPC listener tuned for thousands of
// long-lived streams (TLS, and mTLS, with certificates rotated in place),
// beside an HTTP listener for probes and metrics and one for debugging,
// drained on shutdown so clients move to another replica.
// `ballast control`, `ballast-control` and the demo serve through it.
package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
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
	// TrustDomain, when set, admits clients by the SPIFFE ID of the
	// client certificate TLS verified (xds.Config); TLS must ask for one.
	TrustDomain string
	// ReadAllNamespaces are the namespaces whose clients read every
	// Service (xds.Config).
	ReadAllNamespaces []string

	// XDS serves ADS and CSDS. Required.
	XDS net.Listener
	// TLS, when set, is the xDS listener's TLS (ServerTLS makes one);
	// nil serves plaintext.
	TLS *tls.Config
	// HTTP serves /healthz, /readyz and /metrics; nil means none.
	HTTP net.Listener
	// Debug serves /debug/clients, and with Pprof Go's profiles under
	// /debug/pprof/: what every client was sent, and the process's
	// insides, guarded as CSDS is (xds.Server.Guard); nil means none.
	Debug net.Listener
	// Pprof also serves Go's profiles on Debug.
	Pprof bool
	// DrainTimeout bounds how long a stopping server lets unary calls
	// finish before closing the xDS streams; clients reconnect to another
	// replica and keep their config meanwhile.
	DrainTimeout time.Duration

	// Log receives the server's logs; nil means slog.Default().
	Log *slog.Logger
}

// connBufferSize is the write buffer of each client connection, which
// gRPC takes from a pool for each flush and gives back after. Every client
// holds a connection, and gRPC's default 32 KiB buffers per connection
// dominate the heap with many clients; xDS messages are small, and a large
// response is only written in more chunks. A connection reads with no
// buffer of its own (ReadBufferSize 0): a buffer would be held for as long
// as the client stays connected, mostly idle, while reading a frame's
// header and payload apart costs a system call more per request, and a
// client sends one request per response it acknowledges.
const connBufferSize = 8 << 10

// Serve serves until ctx ends, then drains, and closes both listeners.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	srv, err := xds.NewServer(xds.Config{
		Registry: cfg.Registry, Translate: cfg.Translate, Synced: cfg.Synced, Log: cfg.Log,
		Authenticator: cfg.Authenticator, TrustDomain: cfg.TrustDomain, ReadAllNamespaces: cfg.ReadAllNamespaces,
	})
	if err != nil {
		return err
	}
	var creds []grpc.ServerOption
	if cfg.TLS != nil {
		creds = append(creds, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	gs := grpc.NewServer(append(creds,
		// xDS streams live as long as their clients; let clients keep them
		// alive through idle periods without being disconnected.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(connBufferSize),
	)...)
	srv.Register(gs)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error {
		if err := gs.Serve(cfg.XDS); err != nil {
			return fmt.Errorf("xds server: %w", err)
		}
		return nil
	})
	var servers []*http.Server
	for _, l := range []struct {
		name string
		lis  net.Listener
		h    http.Handler
	}{
		{"http", cfg.HTTP, srv.Handler()},
		{"debug", cfg.Debug, debugHandler(srv, cfg.Pprof)},
	} {
		if l.lis == nil {
			continue
		}
		hs := &http.Server{Handler: l.h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		g.Go(func() error {
			if err := hs.Serve(l.lis); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s server: %w", l.name, err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-ctx.Done()
		drain(gs, cfg.DrainTimeout)
		sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		var errs []error
		for _, hs := range servers {
			errs = append(errs, hs.Shutdown(sctx))
		}
		return errors.Join(errs...)
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

// debugHandler is the debug listener's: the xDS server's client table,
// and with pprof Go's profiles, both behind the server's guard.
func debugHandler(srv *xds.Server, withPprof bool) http.Handler {
	if !withPprof {
		return srv.DebugHandler()
	}
	mux := http.NewServeMux()
	mux.Handle("/", srv.DebugHandler())
	pp := http.NewServeMux()
	pp.HandleFunc("/debug/pprof/", pprof.Index)
	pp.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
	pp.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/debug/pprof/", srv.Guard(pp))
	return mux
}
