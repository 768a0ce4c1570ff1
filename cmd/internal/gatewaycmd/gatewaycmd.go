// Package gatewaycmd is the `gateway` command, shared by the ballast binary
// (`ballast gateway`) and the gateway's own binary (`ballast-gateway`).
package gatewaycmd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
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
	Addresses []string
	// StatusService, if set, is the Service (namespace/name) whose load
	// balancer addresses are the Gateway's in status, as they come.
	StatusService *discovery.Key
	// Provision runs the provisioner instead of listeners: a gateway
	// (Deployment and Service in ProvisionNamespace, image
	// ProvisionImage) for each Gateway of the controller's classes.
	Provision          bool
	ProvisionNamespace string
	ProvisionImage     string
	AdminAddress       string
	DrainTimeout       time.Duration
	// Procs is GOMAXPROCS for the listeners; 0 keeps Go's default.
	Procs     int
	Translate xds.Options
}

// New is the gateway command.
func New() *cobra.Command {
	var cfg Config
	var gw, statusSvc string
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

--admin-address serves /ready once the listeners are configured.

With --provision it serves no listener: it runs one gateway per Gateway of
the controller's classes, a Deployment of this image with --gateway and a
Service of type LoadBalancer with the Gateway's listener ports, whose
address each gateway reports in its Gateway's status (--status-service).`,
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
			if statusSvc != "" {
				ns, name, ok := strings.Cut(statusSvc, "/")
				if !ok || ns == "" || name == "" {
					return fmt.Errorf("--status-service %q: want NAMESPACE/NAME", statusSvc)
				}
				cfg.StatusService = &discovery.Key{Namespace: ns, Name: name}
			}
			if cfg.Provision {
				if cfg.Files != "" {
					return errors.New("--provision needs a cluster, not --files")
				}
				return RunProvisioner(cmd.Context(), cfg, slog.Default())
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
	f.StringVar(&statusSvc, "status-service", "", "report the load balancer addresses of this Service (NAMESPACE/NAME) as the Gateway's")
	f.BoolVar(&cfg.Provision, "provision", false, "run the provisioner: a gateway Deployment and LoadBalancer Service per Gateway, instead of listeners")
	f.StringVar(&cfg.ProvisionNamespace, "provision-namespace", "ballast-system", "namespace of the provisioned gateways")
	f.StringVar(&cfg.ProvisionImage, "provision-image", "ballast-gateway:dev", "image of the provisioned gateways")
	f.StringVar(&cfg.AdminAddress, "admin-address", ":15021", "address of /ready")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", proxy.DefaultDrainTimeout, "how long in-flight calls may run after SIGTERM")
	f.IntVar(&cfg.Procs, "procs", 1, "CPUs the listeners may use at once (GOMAXPROCS); 0 keeps Go's default, the container's CPU limit. Scale out with replicas, or raise it")
	f.StringVar(&cfg.Translate.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	return cmd
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.Procs < 0 {
		return fmt.Errorf("--procs %d: want 0 (Go's default) or more", cfg.Procs)
	}
	if cfg.Procs > 0 {
		// As the sidecar: one thread, like one nginx or haproxy worker,
		// which spares the scheduler's spinning between threads.
		runtime.GOMAXPROCS(cfg.Procs)
	}
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
	if cfg.StatusService != nil {
		// None until the Service's load balancer has one.
		addrs = nil
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
	if cfg.StatusService != nil {
		restCfg, err := source.RESTConfig(cfg.Kubeconfig)
		if err != nil {
			return err
		}
		g.Go(func() error { return watchAddresses(ctx, restCfg, *cfg.StatusService, gw.SetAddresses) })
	}
	serveAdmin(ctx, g, admin, adminLis)
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
	return toStatusAddresses(addrs), nil
}

// toStatusAddresses types each address: an IP, else a hostname.
func toStatusAddresses(addrs []string) []gatewayv1.GatewayStatusAddress {
	var out []gatewayv1.GatewayStatusAddress
	for _, a := range addrs {
		t := gatewayv1.IPAddressType
		if _, err := netip.ParseAddr(a); err != nil {
			t = gatewayv1.HostnameAddressType
		}
		out = append(out, gatewayv1.GatewayStatusAddress{Type: &t, Value: a})
	}
	return out
}

// watchAddresses gives set the addresses of the Service's load balancer
// (status.loadBalancer.ingress, IPs or hostnames) whenever they change;
// a Service of type ClusterIP gives its cluster IPs.
func watchAddresses(ctx context.Context, cfg *rest.Config, svc discovery.Key, set func([]gatewayv1.GatewayStatusAddress)) error {
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	f := informers.NewSharedInformerFactoryWithOptions(kc, 10*time.Minute, informers.WithNamespace(svc.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + svc.Name }))
	inf := f.Core().V1().Services().Informer()
	var last []gatewayv1.GatewayStatusAddress
	update := func(obj any) {
		s, ok := obj.(*corev1.Service)
		if !ok {
			return
		}
		var addrs []string
		for _, in := range s.Status.LoadBalancer.Ingress {
			addrs = append(addrs, cmp.Or(in.IP, in.Hostname))
		}
		if s.Spec.Type == corev1.ServiceTypeClusterIP {
			addrs = s.Spec.ClusterIPs
		}
		next := toStatusAddresses(addrs)
		if !slices.EqualFunc(next, last, func(a, b gatewayv1.GatewayStatusAddress) bool { return a.Value == b.Value }) || (last == nil) != (next == nil) {
			last = next
			set(next)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: func(any) { last = nil; set(nil) },
	}); err != nil {
		return err
	}
	inf.Run(ctx.Done())
	return nil
}

// RunProvisioner runs the provisioner and /ready until ctx ends.
func RunProvisioner(ctx context.Context, cfg Config, log *slog.Logger) error {
	restCfg, err := source.RESTConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	p, err := gateway.NewProvisioner(restCfg, gateway.ProvisionerOptions{Namespace: cfg.ProvisionNamespace, Image: cfg.ProvisionImage, Log: log})
	if err != nil {
		return err
	}
	adminLis, err := net.Listen("tcp", cfg.AdminAddress)
	if err != nil {
		return fmt.Errorf("--admin-address: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.Run(ctx) })
	serveAdmin(ctx, g, admin, adminLis)
	return g.Wait()
}

// serveAdmin serves admin on lis in g, until ctx ends.
func serveAdmin(ctx context.Context, g *errgroup.Group, admin *http.Server, lis net.Listener) {
	g.Go(func() error {
		if err := admin.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		return admin.Close()
	})
}
