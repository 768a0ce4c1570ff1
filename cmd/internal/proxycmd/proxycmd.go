// Package proxycmd is the `proxy` command, shared by the ballast binary
// (`ballast proxy`) and the slim sidecar binary (`ballast-proxy`). The slim
// one links no Kubernetes client: it learns Services' ClusterIPs from the
// control plane. The ballast binary adds Sources that read them from the
// Kubernetes API or from YAML files.
package proxycmd

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
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/probe"
	"github.com/ballast-dev/ballast/proxy"
	"github.com/ballast-dev/ballast/proxy/iptables"
	"github.com/ballast-dev/ballast/xds/client"
	"github.com/ballast-dev/ballast/xds/node"
)

// proxyConfig is `ballast proxy`'s flags, validated into one value.
type proxyConfig struct {
	transparent  string
	inbound      string
	outbound     []string
	services     []string
	xdsAddress   string
	xdsTokenFile string
	xdsCAFile    string
	xdsCertFile  string
	xdsKeyFile   string
	nodeID       string
	zone         string
	admin        string
	maxMessage   int
	sniffTimeout time.Duration
	drainTimeout time.Duration
	procs        int
}

// A Source is a further way for transparent mode to learn which Service
// is behind each ClusterIP:port, turned on by its own flags.
type Source interface {
	AddFlags(f *pflag.FlagSet)
	// Known returns nil when the source's flags were not given. withXDS
	// says whether a control plane resolves xds:/// targets; without one
	// the source must bring resolvers for the targets it names.
	Known(withXDS bool) (*Known, error)
}

// Known is what a Source knows of Services.
type Known struct {
	Destinations proxy.Destinations
	// Run keeps Destinations current; it blocks until ctx ends.
	Run func(ctx context.Context) error
	// Synced reports whether the source has listed everything once (nil:
	// nothing to wait for).
	Synced func() bool
	// Resolvers resolve the targets Destinations names, when they are not
	// xds:/// ones.
	Resolvers []resolver.Builder

	// xds is the process's xDS client, when it follows a control plane.
	xds *client.Client
}

// New is the proxy command, with init as its subcommand.
func New(sources ...Source) *cobra.Command {
	var c proxyConfig
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "The sidecar: balance every call of unmodified gRPC clients",
		Long: `Runs the sidecar's data path. Each destination Service is resolved as
xds:///<name>.<namespace>:<port> with the control plane, and every call
(HTTP/2 stream) is placed by the balancer its Cluster names, the same
implementation a proxyless client runs.

Transparent mode (the default): accepts connections redirected by
'ballast proxy init' on --transparent-address, reads their original
destination, and balances gRPC to known Services; everything else passes
through as plain TCP. Known Services are their ClusterIP:port pairs, given
one by one (--service) and, by default, from the control plane's sidecar
listeners (no Kubernetes API access needed). 'ballast proxy' can read them
instead from the Kubernetes API (--kubernetes: needs get/list/watch on
Services and EndpointSlices) or from a folder of Service YAML (--files).

Explicit mode: --outbound 127.0.0.1:15001=greeter.default:50051 listens on
the address and sends every call to the target (name.namespace:port means
xds:///name.namespace:port; any other grpc target, like dns:///host:port,
is used as is).

Inbound (--inbound-address, fed by 'ballast proxy init --inbound-ports'):
connections coming into the pod go on to the app at their original
destination; its calls are counted (ballast_proxy_inbound_* metrics) and
drained on shutdown. Anything but cleartext HTTP/2 passes through.

On SIGTERM it stops taking new calls (GOAWAY, on inbound connections too,
so callers move to other pods), lets in-flight calls finish for up to
--drain-timeout, then exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runProxy(cmd.Context(), c, sources)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.transparent, "transparent-address", "", "address of the transparent listener (default 127.0.0.1:15001 when no --outbound is given)")
	f.StringVar(&c.inbound, "inbound-address", "", "address of the inbound listener, for connections 'ballast proxy init --inbound-ports' redirects into the pod (say :15006); empty: none")
	f.StringArrayVar(&c.outbound, "outbound", nil, "explicit listener ADDR=TARGET (repeatable)")
	f.StringArrayVar(&c.services, "service", nil, "transparent mode: a Service's CLUSTERIP:PORT=name.namespace:port (repeatable)")
	f.StringVar(&c.xdsTokenFile, "xds-token-file", "", "projected ServiceAccount token (audience ballast-control) sent to the control plane on every stream, read again each time; overrides the bootstrap's call_creds")
	f.StringVar(&c.xdsCAFile, "xds-ca-file", "", "CA (PEM) of the control plane's certificate: connect to it over TLS; overrides the bootstrap's channel_creds")
	f.StringVar(&c.xdsCertFile, "xds-cert-file", "", "client certificate (PEM) presented to the control plane (mTLS), with --xds-ca-file")
	f.StringVar(&c.xdsKeyFile, "xds-key-file", "", "key of --xds-cert-file")
	f.StringVar(&c.xdsAddress, "xds-address", "", "control plane host:port that resolves xds:/// targets (name.namespace:port); without it, the one in $GRPC_XDS_BOOTSTRAP(_CONFIG)")
	f.StringVar(&c.nodeID, "node-id", "", "xDS node id (default ballast~$POD_NAME.$POD_NAMESPACE, as ballast bootstrap writes)")
	f.StringVar(&c.zone, "zone", "", "the pod's zone (its Node's topology.kubernetes.io/zone), sent as the xDS node's locality: Services with a trafficDistribution send its calls to endpoints in this zone while it has any (default $ZONE, else the bootstrap's node locality)")
	f.StringVar(&c.admin, "admin-address", ":15021", "address of /ready and /metrics")
	f.IntVar(&c.maxMessage, "max-message-bytes", proxy.DefaultMaxMessageBytes, "largest message forwarded in either direction")
	f.DurationVar(&c.sniffTimeout, "sniff-timeout", proxy.DefaultSniffTimeout, "how long to wait for an HTTP/2 preface before passing a connection through")
	f.DurationVar(&c.drainTimeout, "drain-timeout", proxy.DefaultDrainTimeout, "how long in-flight calls may run after SIGTERM")
	f.IntVar(&c.procs, "procs", 1, "CPUs the data path may use at once (GOMAXPROCS); 0 keeps Go's default, the container's CPU limit")
	for _, src := range sources {
		src.AddFlags(f)
	}
	cmd.AddCommand(newInitCmd())
	return cmd
}

// proxyTarget turns an --outbound or --service target into a grpc target.
func proxyTarget(s string) string {
	if strings.Contains(s, ":///") || strings.Contains(s, "://") {
		return s
	}
	return "xds:///" + s
}

func runProxy(ctx context.Context, c proxyConfig, sources []Source) error {
	if c.procs < 0 {
		return fmt.Errorf("--procs %d: want 0 (Go's default) or more", c.procs)
	}
	if c.procs > 0 {
		// A sidecar shares its pod's CPUs with the app: like one nginx or
		// haproxy worker, it runs its Go code on one thread by default,
		// which also spares the scheduler's spinning between threads.
		runtime.GOMAXPROCS(c.procs)
	}
	if c.transparent == "" && len(c.outbound) == 0 {
		c.transparent = "127.0.0.1:15001"
	}
	if c.nodeID == "" {
		c.nodeID = node.ID(cmp.Or(os.Getenv("POD_NAME"), hostname()), os.Getenv("POD_NAMESPACE"))
	}
	if c.zone == "" {
		c.zone = os.Getenv("ZONE")
	}
	services := proxy.StaticDestinations{}
	for _, s := range c.services {
		addr, target, ok := strings.Cut(s, "=")
		dst, err := netip.ParseAddrPort(addr)
		if !ok || err != nil || target == "" {
			return fmt.Errorf("--service %q: want CLUSTERIP:PORT=name.namespace:port", s)
		}
		services[dst] = proxyTarget(target)
	}
	// The Go runtime's series (go_goroutines, heap) beside the proxy's own:
	// what a leak shows in first (ballast bench --soak reads them).
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector())
	opts := proxy.Options{
		Metrics:         metrics,
		MaxMessageBytes: c.maxMessage,
		SniffTimeout:    c.sniffTimeout,
		DrainTimeout:    c.drainTimeout,
		Log:             slog.Default(),
	}
	xdsCfg, err := xdsConfig(c)
	if err != nil {
		return err
	}
	known, err := known(c.transparent != "", xdsCfg, services, sources)
	if err != nil {
		return err
	}
	opts.Destinations, opts.Synced, opts.Resolvers = known.Destinations, known.Synced, known.Resolvers
	if known.xds != nil {
		opts.XDS = known.xds
	}
	runDiscovery := known.Run
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	listen := func(flag, addr string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flag, addr, err)
		}
		listeners = append(listeners, l)
		return l, nil
	}
	for _, o := range c.outbound {
		addr, target, ok := strings.Cut(o, "=")
		if !ok || addr == "" || target == "" {
			return fmt.Errorf("--outbound %q: want ADDR=TARGET, e.g. 127.0.0.1:15001=greeter.default:50051", o)
		}
		l, err := listen("--outbound", addr)
		if err != nil {
			return err
		}
		opts.Outbound = append(opts.Outbound, proxy.Outbound{Listener: l, Target: proxyTarget(target)})
	}
	if c.transparent != "" {
		l, err := listen("--transparent-address", c.transparent)
		if err != nil {
			return err
		}
		opts.Transparent = l
	}
	if c.inbound != "" {
		l, err := listen("--inbound-address", c.inbound)
		if err != nil {
			return err
		}
		opts.Inbound = l
	}
	adminLis, err := listen("--admin-address", c.admin)
	if err != nil {
		return err
	}
	p, err := proxy.New(opts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	discoveryDone := make(chan error, 1)
	go func() { discoveryDone <- runDiscovery(ctx) }()
	defer func() { cancel(); <-discoveryDone }()
	// The app's probes the injector rewrote onto the admin port.
	appProbes, err := probe.Parse(os.Getenv(probe.EnvVar))
	if err != nil {
		return err
	}
	adminMux := http.NewServeMux()
	adminMux.Handle(probe.PathPrefix, probe.Handler(appProbes, metrics))
	adminMux.Handle("/", p.AdminHandler())
	admin := &http.Server{Handler: adminMux, ReadHeaderTimeout: 10 * time.Second}
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Serve(adminLis) }()
	err = p.Serve(ctx)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	admin.Shutdown(shutdownCtx)
	if aerr := <-adminDone; !errors.Is(aerr, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("admin server: %w", aerr)
	}
	return err
}

// xdsConfig is the control plane the proxy follows: --xds-address, else
// the one in the grpc-go bootstrap a proxyless client would use
// (GRPC_XDS_BOOTSTRAP names a file, GRPC_XDS_BOOTSTRAP_CONFIG holds the
// JSON); nil when neither is given.
func xdsConfig(c proxyConfig) (*client.Config, error) {
	if (c.xdsCertFile == "") != (c.xdsKeyFile == "") {
		return nil, fmt.Errorf("--xds-cert-file %q and --xds-key-file %q: give both or neither", c.xdsCertFile, c.xdsKeyFile)
	}
	if c.xdsCertFile != "" && c.xdsCAFile == "" {
		return nil, errors.New("--xds-cert-file is for TLS: give --xds-ca-file too")
	}
	if c.xdsAddress != "" {
		return &client.Config{Server: c.xdsAddress, Node: client.Node{ID: c.nodeID, UserAgent: "ballast-proxy", Zone: c.zone}, TokenFile: c.xdsTokenFile,
			CAFile: c.xdsCAFile, CertFile: c.xdsCertFile, KeyFile: c.xdsKeyFile}, nil
	}
	data := []byte(os.Getenv("GRPC_XDS_BOOTSTRAP_CONFIG"))
	if file := os.Getenv("GRPC_XDS_BOOTSTRAP"); file != "" {
		var err error
		if data, err = os.ReadFile(file); err != nil {
			return nil, fmt.Errorf("GRPC_XDS_BOOTSTRAP: %w", err)
		}
	}
	if len(data) == 0 {
		return nil, nil
	}
	cfg, err := client.ConfigFromBootstrap(data)
	if err != nil {
		return nil, fmt.Errorf("GRPC_XDS_BOOTSTRAP: %w", err)
	}
	cfg.Node.UserAgent = "ballast-proxy"
	if c.zone != "" {
		cfg.Node.Zone = c.zone
	}
	if c.xdsTokenFile != "" {
		cfg.TokenFile = c.xdsTokenFile
	}
	if c.xdsCAFile != "" {
		cfg.CAFile, cfg.CertFile, cfg.KeyFile = c.xdsCAFile, c.xdsCertFile, c.xdsKeyFile
	}
	return &cfg, nil
}

// known is what maps an intercepted connection's original destination to
// a Service target. Static --service entries come first; then the one
// Source whose flags were given or, by default, the control plane's sidecar
// listeners.
func known(transparent bool, xdsCfg *client.Config, static proxy.StaticDestinations, sources []Source) (*Known, error) {
	var chosen *Known
	for _, src := range sources {
		k, err := src.Known(xdsCfg != nil)
		if err != nil {
			return nil, err
		}
		if k == nil {
			continue
		}
		if chosen != nil {
			return nil, errors.New("more than one source of Services (--kubernetes, --files): choose one")
		}
		chosen = k
	}
	fromSource := chosen != nil
	if fromSource {
		chosen.Destinations = chained{static, chosen.Destinations}
	} else {
		chosen = &Known{Destinations: static, Run: func(ctx context.Context) error { <-ctx.Done(); return nil }}
	}
	if xdsCfg == nil {
		return chosen, nil
	}
	// One xDS client, one stream: the targets' chains and, when no other
	// source says which Service is behind a ClusterIP:port, the sidecar
	// listeners.
	cfg := *xdsCfg
	cfg.SidecarListeners = transparent && !fromSource
	cfg.Log = slog.Default()
	xc, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.SidecarListeners {
		chosen.Destinations = chained{static, xc}
		chosen.Synced = xc.SidecarListenersSynced
	}
	runSource := chosen.Run
	chosen.Run = func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		xdsDone := make(chan error, 1)
		go func() { xdsDone <- xc.Run(ctx) }()
		err := runSource(ctx)
		cancel()
		return errors.Join(err, <-xdsDone)
	}
	chosen.xds = xc
	return chosen, nil
}

type chained []proxy.Destinations

func (c chained) Target(dst netip.AddrPort) (string, bool) {
	for _, d := range c {
		if t, ok := d.Target(dst); ok {
			return t, true
		}
	}
	return "", false
}

func newInitCmd() *cobra.Command {
	var (
		c                          iptables.Config
		includeCIDRs, excludeCIDRs []string
		includePorts, excludePorts []string
		inboundPorts               string
		excludeInbound             []string
		remove                     bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install the iptables rules that redirect the pod's TCP to the proxy (init container)",
		Long: `Installs, in the pod's network namespace, the nat rules that redirect the
app's outbound TCP to the proxy's transparent listener (--proxy-port),
except the proxy's own connections (--proxy-uid) and loopback.

With --inbound-ports, connections coming into the pod on the app's ports
(a list, or * for every port) are redirected to the proxy's inbound
listener (--inbound-port), which forwards them to the app and counts and
drains its calls. The proxy's own ports and --exclude-inbound-ports are
never captured.

Applying again rewrites the rules in place; --remove deletes them all.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if remove {
				return iptables.Remove(cmd.Context(), c.IPv6, nil)
			}
			var err error
			if c.InboundAll, c.InboundPorts, err = parseInboundPorts(inboundPorts); err != nil {
				return err
			}
			if c.ExcludeInboundPorts, err = parsePorts("--exclude-inbound-ports", excludeInbound); err != nil {
				return err
			}
			if c.IncludePorts, err = parsePorts("--include-ports", includePorts); err != nil {
				return err
			}
			if c.ExcludePorts, err = parsePorts("--exclude-ports", excludePorts); err != nil {
				return err
			}
			if c.IncludeCIDRs, err = parseCIDRs("--include-cidrs", includeCIDRs); err != nil {
				return err
			}
			if c.ExcludeCIDRs, err = parseCIDRs("--exclude-cidrs", excludeCIDRs); err != nil {
				return err
			}
			return iptables.Apply(cmd.Context(), c, nil)
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.ProxyPort, "proxy-port", 15001, "the proxy's transparent listener port")
	f.IntVar(&c.ProxyUID, "proxy-uid", 1337, "uid the proxy runs as; its own connections are not redirected")
	f.StringSliceVar(&includePorts, "include-ports", nil, "redirect only these destination ports (default all)")
	f.StringSliceVar(&excludePorts, "exclude-ports", nil, "never redirect these destination ports")
	f.StringSliceVar(&includeCIDRs, "include-cidrs", nil, "redirect only these destinations, e.g. the Service CIDR (default all)")
	f.StringSliceVar(&excludeCIDRs, "exclude-cidrs", nil, "never redirect these destinations")
	f.BoolVar(&c.IPv6, "ipv6", false, "also install the rules with ip6tables")
	f.StringVar(&inboundPorts, "inbound-ports", "", "capture incoming connections to these app ports (comma-separated, or * for all); empty captures none")
	f.StringSliceVar(&excludeInbound, "exclude-inbound-ports", nil, "never capture incoming connections to these ports")
	f.IntVar(&c.InboundPort, "inbound-port", 15006, "the proxy's inbound listener port")
	f.IntVar(&c.AdminPort, "admin-port", 15021, "the proxy's admin port (readiness, metrics), never captured inbound; 0 for none")
	f.BoolVar(&remove, "remove", false, "delete every rule and chain init installs, and exit")
	return cmd
}

// parseInboundPorts reads --inbound-ports: "*" for every port, or a list.
func parseInboundPorts(s string) (all bool, ports []int, err error) {
	s = strings.TrimSpace(s)
	if s == "*" {
		return true, nil, nil
	}
	if s == "" {
		return false, nil, nil
	}
	ports, err = parsePorts("--inbound-ports", strings.Split(s, ","))
	return false, ports, err
}

func parsePorts(flag string, ss []string) ([]int, error) {
	var out []int
	for _, s := range ss {
		p, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%s: %q is not a port", flag, s)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseCIDRs(flag string, ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%s: %q is not a CIDR or address", flag, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p)
	}
	return out, nil
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
