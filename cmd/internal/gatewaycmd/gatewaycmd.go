// Package gatewaycmd is the `gateway` command, shared by the ballast binary
// (`ballast gateway`) and the gateway's own binary (`ballast-gateway`).
package gatewaycmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/source"
	"github.com/ballast-dev/ballast/gateway"
	"github.com/ballast-dev/ballast/proxy"
	"github.com/ballast-dev/ballast/xds"
)

// Config is the gateway command's validated configuration.
type Config struct {
	// Kubeconfig is a kubeconfig path; empty with InCluster uses the pod's
	// service account.
	Kubeconfig string
	InCluster  bool
	// Files is a folder of GatewayClass, Gateway, GRPCRoute, Service,
	// EndpointSlice, ReferenceGrant and Secret YAML; empty means none.
	Files string
	// Gateway, if set, is the one Gateway served (namespace/name).
	Gateway *discovery.Key
	// Host is the address the listeners bind, with their ports.
	Host string
	// Addresses are the Gateway's addresses in status; empty means Host
	// when it is an IP, else $POD_IP.
	Addresses    []string
	AdminAddress string
	DrainTimeout time.Duration
	Translate    xds.Options
}

// New is the gateway command.
func New() *cobra.Command {
	var cfg Config
	var gw string
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Serve Gateway API Gateways for gRPC: listeners, GRPCRoutes, TLS, per-call balancing",
		Long: `Serves the Gateways of every GatewayClass whose controllerName is
ballast.dev/gateway (or only --gateway NAMESPACE/NAME): each listener of
protocol HTTP takes gRPC over cleartext HTTP/2 (h2c), each HTTPS listener
terminates TLS (1.2 or later, h2 by ALPN) with the certificate of its
certificateRefs, chosen by SNI among a port's listeners. GRPCRoutes attach
by parentRef (sectionName, port), as the listener's allowedRoutes and
hostnames admit them; every call is routed by its route's rules and placed
by the backend Service's balancer on the sidecar's data path.

The objects come from the Kubernetes API (--kubeconfig, or in-cluster when
neither --kubeconfig nor --files is given) or from --files DIR, a folder of
their YAML, so that 'ballast gateway --files DIR' serves a Gateway on this
machine without a cluster. Listeners bind --host with their own ports.

--admin-address serves /ready once the listeners are configured.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.InCluster = cfg.Kubeconfig == "" && cfg.Files == ""
			if gw != "" {
				ns, name, ok := strings.Cut(gw, "/")
				if !ok || ns == "" || name == "" {
					return fmt.Errorf("--gateway %q: want NAMESPACE/NAME", gw)
				}
				cfg.Gateway = &discovery.Key{Namespace: ns, Name: name}
			}
			return Run(cmd.Context(), cfg, slog.Default())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig to read the cluster from (default: in-cluster, unless --files is given)")
	f.StringVar(&cfg.Files, "files", "", "folder of GatewayClass, Gateway, GRPCRoute, Service, EndpointSlice, ReferenceGrant and Secret YAML, watched for changes")
	f.StringVar(&gw, "gateway", "", "serve only this Gateway (NAMESPACE/NAME); default: every Gateway of the controller's classes")
	f.StringVar(&cfg.Host, "host", "", "address the listeners bind (their ports are the Gateway's); empty: every interface")
	f.StringSliceVar(&cfg.Addresses, "status-address", nil, "the Gateway's addresses to report in status (default: --host if it is an IP, else $POD_IP)")
	f.StringVar(&cfg.AdminAddress, "admin-address", ":15021", "address of /ready")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", proxy.DefaultDrainTimeout, "how long in-flight calls may run after SIGTERM")
	f.StringVar(&cfg.Translate.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	return cmd
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	reg := discovery.NewRegistry()
	kubernetes := cfg.Kubeconfig != "" || cfg.InCluster
	sources, err := source.Open(source.Config{
		Kubernetes: kubernetes,
		Kubeconfig: cfg.Kubeconfig,
		Files:      cfg.Files,
		Routes:     true,
		Gateways:   kubernetes,
		Log:        log,
	}, reg)
	if err != nil {
		return fmt.Errorf("%w (give --kubeconfig, or --files to run without a cluster)", err)
	}
	addrs, err := statusAddresses(cfg)
	if err != nil {
		return err
	}
	gwOpts := gateway.Options{
		Registry:     reg,
		Gateway:      cfg.Gateway,
		Host:         cfg.Host,
		Addresses:    addrs,
		XDS:          cfg.Translate,
		DrainTimeout: cfg.DrainTimeout,
		Log:          log,
	}
	var status *gateway.StatusWriter
	if kubernetes {
		// Status is written to the cluster's objects (a file's have none:
		// it is logged).
		restCfg, err := source.RESTConfig(cfg.Kubeconfig)
		if err != nil {
			return err
		}
		status = gateway.NewStatusWriter(restCfg, gateway.StatusWriterOptions{Log: log})
		gwOpts.Status = status.Update
	}
	gw, err := gateway.New(gwOpts)
	if err != nil {
		return err
	}
	adminLis, err := net.Listen("tcp", cfg.AdminAddress)
	if err != nil {
		return fmt.Errorf("--admin-address: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !sources.Synced() || !gw.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return sources.Run(ctx) })
	g.Go(func() error {
		// Serve once the sources have listed what there is, so that the
		// first status written is not of an empty registry.
		for !sources.Synced() {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
		return gw.Run(ctx)
	})
	if status != nil {
		g.Go(func() error { return status.Run(ctx) })
	}
	g.Go(func() error {
		if err := admin.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		return admin.Close()
	})
	return g.Wait()
}

// statusAddresses are the addresses the Gateway's status reports.
func statusAddresses(cfg Config) ([]gatewayv1.GatewayStatusAddress, error) {
	addrs := cfg.Addresses
	if len(addrs) == 0 {
		if _, err := netip.ParseAddr(cfg.Host); err == nil {
			addrs = []string{cfg.Host}
		} else if ip := os.Getenv("POD_IP"); ip != "" {
			addrs = []string{ip}
		}
	}
	var out []gatewayv1.GatewayStatusAddress
	for _, a := range addrs {
		t := gatewayv1.IPAddressType
		if _, err := netip.ParseAddr(a); err != nil {
			t = gatewayv1.HostnameAddressType
		}
		out = append(out, gatewayv1.GatewayStatusAddress{Type: &t, Value: a})
	}
	return out, nil
}
