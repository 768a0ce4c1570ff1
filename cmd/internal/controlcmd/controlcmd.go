// Package controlcmd is the `control` command, shared by the ballast binary
// (`ballast control`) and the control plane's own binary (`ballast-control`),
// which links only what the control plane runs: no sidecar, bench, dev
// cluster or demo, so its RSS is not spent on their code pages.
package controlcmd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/ballast-dev/ballast/control"
	"github.com/ballast-dev/ballast/control/servingcert"
	"github.com/ballast-dev/ballast/control/tokenreview"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
	"github.com/ballast-dev/ballast/discovery/source"
	"github.com/ballast-dev/ballast/internal/kubeclient"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds"
)

// Config is the control command's validated configuration.
type Config struct {
	// Kubeconfig is a kubeconfig path; empty with InCluster uses the pod's
	// service account.
	Kubeconfig string
	InCluster  bool
	// Files is a folder of Service and EndpointSlice YAML; empty means none.
	Files       string
	XDSAddress  string
	HTTPAddress string
	// DebugAddress serves /debug/clients and, with Pprof, Go's profiles;
	// loopback by default (see control.Config.Debug). Empty means none.
	DebugAddress string
	// TLS, when its Cert is set, serves xDS over TLS; with its ClientCA,
	// clients may prove who they are by certificate (TrustDomain).
	TLS         control.TLSFiles
	TrustDomain string
	// TLSSecret, instead of TLS's key pair, has the control plane keep its
	// own CA in this Secret of its namespace and issue itself certificates
	// for TLSHosts, publishing the CA in every namespace as the ConfigMap
	// CAConfigMap (control/servingcert).
	TLSSecret   string
	CAConfigMap string
	TLSHosts    []string
	Translate   xds.Options
	// DrainTimeout bounds how long a stopping server lets streams finish
	// before closing them; clients reconnect to another replica and keep
	// their config meanwhile.
	DrainTimeout time.Duration
	// Pprof serves Go's profiles under /debug/pprof/ on the debug address.
	Pprof bool
	// Insecure serves every client without asking who it is, in
	// plaintext (TLS settings are ignored), as the demo and a --files
	// control plane do. Otherwise a client must send a
	// projected ServiceAccount token for TokenAudience, which TokenReview
	// checks, and reads only its namespace's Services and those exported
	// to it, unless its namespace is one of ReadAllNamespaces.
	Insecure          bool
	TokenAudience     string
	ReadAllNamespaces []string

	// Serving, if set, is told the bound addresses (tests listen on port 0).
	Serving func(xdsAddr, httpAddr net.Addr)
	// ServingDebug, if set, is told the debug listener's address.
	ServingDebug func(net.Addr)
}

// New is the control command.
func New() *cobra.Command {
	var cfg Config
	cmd := &cobra.Command{
		Use:   "control",
		Short: "Serve xDS to proxyless gRPC clients from Kubernetes (or a folder of YAML)",
		Long: `Serves ADS (state-of-the-world and delta) on --xds-address: for every Service port,
the Listeners, RouteConfiguration, Cluster and ClusterLoadAssignment that gRPC's xDS
client needs to balance each call over the Service's pods. Clients dial
xds:///<name>.<namespace>:<port> with a bootstrap file from 'ballast bootstrap'.

Discovery comes from the Kubernetes API (--kubeconfig, or the in-cluster service
account when neither --kubeconfig nor --files is given) and/or --files DIR.

The LB policy is round_robin unless --default-lb-policy or the Service annotation
ballast.dev/lb-policy (round_robin, least_request, peak_ewma) says otherwise.

--http-address serves /healthz, /readyz (once discovery has synced) and /metrics.
--debug-address (loopback by default: reach it with kubectl port-forward)
serves /debug/clients (what each client was last sent; ?resources=1 for
content) and with --pprof Go's profiles under /debug/pprof/; bound elsewhere,
it asks for the token of a --read-all-namespaces client, as CSDS does. CSDS
(envoy.service.status.v3) is served on the xDS port.

--tls-cert-file and --tls-key-file serve xDS over TLS (the files are read again
when they change: a rotated Secret needs no restart). Or --tls-secret NAME: the
control plane keeps a CA in that Secret of its namespace (the first replica
makes it), issues itself a certificate for --tls-hosts renewed in place, and
publishes the CA as the ConfigMap --ca-configmap (ca.crt) in every namespace,
for clients to mount (ballast bootstrap --ca-file). With --client-ca-file,
client certificates signed by it are verified, and a certificate whose URI SAN
is spiffe://<--trust-domain>/ns/<namespace>/sa/<serviceaccount> proves the
client's identity, as a token does (mTLS).

With a cluster, clients must authenticate: each stream carries a projected
ServiceAccount token for --token-audience as gRPC call credentials
(authorization: Bearer <token>), checked by TokenReview, or a client
certificate. A client reads the Services of its own namespace and those
annotated ballast.dev/export-to ("*" or a list of namespaces); clients of
--read-all-namespaces read everything and may use CSDS. --insecure serves
everyone everything in plaintext, as a --files control plane without
--client-ca-file does.
See docs/security.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.InCluster = cfg.Kubeconfig == "" && cfg.Files == ""
			if !cfg.Pprof {
				// No heap profile can be read without --pprof, so none is
				// sampled: the sampled stacks' records (and the hash table
				// the first sample allocates) would only hold memory.
				runtime.MemProfileRate = 0
			}
			return Run(cmd.Context(), cfg, slog.Default())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig to read the cluster from (default: in-cluster, unless --files is given)")
	f.StringVar(&cfg.Files, "files", "", "folder of Service and EndpointSlice YAML to serve, watched for changes")
	f.StringVar(&cfg.XDSAddress, "xds-address", ":15010", "address to serve ADS and CSDS on")
	f.StringVar(&cfg.HTTPAddress, "http-address", ":15014", "address to serve /healthz, /readyz and /metrics on")
	f.StringVar(&cfg.DebugAddress, "debug-address", "127.0.0.1:15015", `address to serve /debug/clients (and with --pprof /debug/pprof/) on; "" for none`)
	f.StringVar(&cfg.TLS.Cert, "tls-cert-file", "", "serve xDS over TLS with this certificate (PEM), read again when it changes")
	f.StringVar(&cfg.TLS.Key, "tls-key-file", "", "the key of --tls-cert-file")
	f.StringVar(&cfg.TLSSecret, "tls-secret", "", "serve xDS over TLS with certificates the control plane issues itself from a CA it keeps in this Secret of its namespace (made if missing)")
	f.StringVar(&cfg.CAConfigMap, "ca-configmap", "ballast-control-ca.crt", "with --tls-secret: the ConfigMap (key ca.crt) the CA is published as in every namespace, for clients to mount")
	f.StringSliceVar(&cfg.TLSHosts, "tls-hosts", nil, "with --tls-secret: names the certificate is for (default the Service ballast-control's DNS names in $POD_NAMESPACE)")
	f.StringVar(&cfg.TLS.ClientCA, "client-ca-file", "", "verify client certificates against these CAs (PEM): a client may prove who it is by certificate (mTLS)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "trust domain of client certificates' SPIFFE IDs, spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>")
	cfg.Translate.DefaultPolicy = policy.RoundRobin
	f.Var(&cfg.Translate.DefaultPolicy, "default-lb-policy", "LB policy for Services without the ballast.dev/lb-policy annotation: round_robin, least_request or peak_ewma")
	f.StringVar(&cfg.Translate.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	f.StringVar(&cfg.Translate.BareNameNamespace, "bare-name-namespace", "default",
		`namespace whose Services are also served as <name>:<port> ("-" for none)`)
	f.BoolVar(&cfg.Pprof, "pprof", false, "also serve Go's profiles (heap, CPU, goroutines) under /debug/pprof/ on --debug-address")
	f.BoolVar(&cfg.Insecure, "insecure", false, "serve every xDS client without authentication, in plaintext (implied by --files without a cluster or --client-ca-file; TLS flags are ignored)")
	f.StringVar(&cfg.TokenAudience, "token-audience", tokenreview.DefaultAudience, "audience clients' ServiceAccount tokens must be for")
	f.StringSliceVar(&cfg.ReadAllNamespaces, "read-all-namespaces", []string{"ballast-system"}, "namespaces whose clients read every namespace's Services and may use CSDS")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", time.Second, "on shutdown, how long unary calls (CSDS) may finish before xDS streams are closed")
	return cmd
}

// Run serves until ctx ends: the sources cfg names fill a registry that
// the control plane serves.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.Insecure && (cfg.TLS != control.TLSFiles{} || cfg.TLSSecret != "") {
		// deploy/control-insecure is deploy/control plus --insecure: the
		// demo's mode, plaintext as its clients' bootstrap files are.
		log.Warn("--insecure: serving xDS in plaintext to every client; the TLS flags are ignored")
		cfg.TLS, cfg.TLSSecret = control.TLSFiles{}, ""
	}
	var tlsCfg *tls.Config
	switch {
	case (cfg.TLS.Cert == "") != (cfg.TLS.Key == ""):
		return fmt.Errorf("--tls-cert-file %q and --tls-key-file %q: give both or neither", cfg.TLS.Cert, cfg.TLS.Key)
	case cfg.TLS.ClientCA != "" && cfg.TLS.Cert == "" && cfg.TLSSecret == "":
		return errors.New("--client-ca-file verifies client certificates over TLS: give --tls-secret or --tls-cert-file and --tls-key-file too")
	case cfg.TLSSecret != "" && cfg.TLS.Cert != "":
		return errors.New("--tls-secret and --tls-cert-file are two sources of the serving certificate: choose one")
	case cfg.TLSSecret != "" && cfg.Kubeconfig == "" && !cfg.InCluster:
		return errors.New("--tls-secret keeps the CA in the cluster: give --kubeconfig, or run in a cluster")
	case cfg.TLS.Cert != "":
		var err error
		if tlsCfg, err = control.ServerTLS(cfg.TLS, log); err != nil {
			return fmt.Errorf("--tls-cert-file: %w", err)
		}
	}
	trustDomain := ""
	if cfg.TLS.ClientCA != "" {
		if cfg.TrustDomain == "" {
			return errors.New("--client-ca-file needs a --trust-domain to read client certificates' SPIFFE IDs in")
		}
		trustDomain = cfg.TrustDomain
	}
	reg := discovery.NewRegistry()
	sources, err := source.Open(source.Config{
		Kubernetes: cfg.Kubeconfig != "" || cfg.InCluster,
		Kubeconfig: cfg.Kubeconfig,
		Files:      cfg.Files,
		Routes:     true,
		Policies:   true,
		Log:        log,
	}, reg)
	if err != nil {
		return fmt.Errorf("%w (give --kubeconfig, or --files to run without a cluster)", err)
	}
	var (
		status *kube.StatusWriter
		authn  xds.Authenticator
		issuer *servingcert.Issuer
	)
	if cfg.Kubeconfig != "" || cfg.InCluster {
		// GRPCRoute status is the control plane's to write, from the
		// cluster's routes it serves (a file's have no object to write to).
		restCfg, err := source.RESTConfig(cfg.Kubeconfig)
		if err != nil {
			return err
		}
		status = kube.NewStatusWriter(restCfg, reg, kube.StatusOptions{Synced: sources.Synced, Logger: log})
		client, err := kubeclient.New(restCfg)
		if err != nil {
			return err
		}
		if !cfg.Insecure {
			reviews, err := tokenreview.APIReviewer(client)
			if err != nil {
				return err
			}
			if authn, err = tokenreview.New(tokenreview.Config{Client: reviews, Audience: cfg.TokenAudience}); err != nil {
				return err
			}
		}
		if cfg.TLSSecret != "" {
			ns := os.Getenv("POD_NAMESPACE")
			if ns == "" {
				return errors.New("--tls-secret: $POD_NAMESPACE (the namespace the Secret is in) is not set")
			}
			hosts := cfg.TLSHosts
			if len(hosts) == 0 {
				hosts = []string{"ballast-control." + ns + ".svc", "ballast-control." + ns, "ballast-control." + ns + ".svc." + cfg.Translate.ClusterDomain}
			}
			issuer, err = servingcert.New(ctx, servingcert.Config{Client: client, Namespace: ns, Secret: cfg.TLSSecret, ConfigMap: cfg.CAConfigMap, Hosts: hosts, Log: log})
			if err != nil {
				return fmt.Errorf("--tls-secret: %w", err)
			}
			if tlsCfg, err = control.ServerTLSFor(issuer.GetCertificate, cfg.TLS.ClientCA, log); err != nil {
				return fmt.Errorf("--client-ca-file: %w", err)
			}
		}
	}
	if authn == nil && trustDomain == "" {
		log.Info("serving xDS without authentication: every client reads every Service")
	}
	xdsLis, err := net.Listen("tcp", cfg.XDSAddress)
	if err != nil {
		return fmt.Errorf("--xds-address: %w", err)
	}
	httpLis, err := net.Listen("tcp", cfg.HTTPAddress)
	if err != nil {
		xdsLis.Close()
		return fmt.Errorf("--http-address: %w", err)
	}
	var debugLis net.Listener
	if cfg.DebugAddress != "" {
		if debugLis, err = net.Listen("tcp", cfg.DebugAddress); err != nil {
			xdsLis.Close()
			httpLis.Close()
			return fmt.Errorf("--debug-address: %w", err)
		}
		if cfg.ServingDebug != nil {
			cfg.ServingDebug(debugLis.Addr())
		}
	}
	log.Info("serving", "xds", xdsLis.Addr().String(), "tls", tlsCfg != nil, "mtls", trustDomain != "", "http", httpLis.Addr().String())
	if cfg.Serving != nil {
		cfg.Serving(xdsLis.Addr(), httpLis.Addr())
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return sources.Run(ctx) })
	if status != nil {
		g.Go(func() error { return status.Run(ctx) })
	}
	if issuer != nil {
		g.Go(func() error { return issuer.Run(ctx) })
	}
	g.Go(func() error {
		return control.Serve(ctx, control.Config{
			Registry:          reg,
			Synced:            sources.Synced,
			Translate:         cfg.Translate,
			Authenticator:     authn,
			TrustDomain:       trustDomain,
			ReadAllNamespaces: cfg.ReadAllNamespaces,
			XDS:               xdsLis,
			TLS:               tlsCfg,
			HTTP:              httpLis,
			Debug:             debugLis,
			Pprof:             cfg.Pprof,
			DrainTimeout:      cfg.DrainTimeout,
			Log:               log,
		})
	})
	return g.Wait()
}
