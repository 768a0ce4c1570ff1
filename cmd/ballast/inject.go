package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/ballast-dev/ballast/discovery/source"
	"github.com/ballast-dev/ballast/inject"
	"github.com/ballast-dev/ballast/internal/keypair"
)

func newInjectCmd() *cobra.Command {
	var (
		c                          inject.Config
		address, certs, webhookCfg string
		serviceDNS                 []string
	)
	cmd := &cobra.Command{
		Use:   "inject",
		Short: "Serve the mutating webhook that adds the sidecar to pods in labelled namespaces",
		Long: `Serves the admission webhook (TLS, POST /inject) that adds 'ballast proxy init' and
'ballast proxy' (as a native sidecar) to pods created in namespaces labelled
ballast-injection=enabled, unless the pod is annotated ballast.dev/inject: "false".
deploy/inject registers it with failurePolicy Ignore, so pods are created
without the sidecar when the webhook is down.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := c.Validate(); err != nil {
				return fmt.Errorf("--image: %w", err)
			}
			getCert, err := injectCertificate(cmd.Context(), certs, webhookCfg, serviceDNS)
			if err != nil {
				return err
			}
			lis, err := net.Listen("tcp", address)
			if err != nil {
				return fmt.Errorf("--address %s: %w", address, err)
			}
			mux := http.NewServeMux()
			mux.Handle("/inject", inject.Handler(c))
			mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
			srv := &http.Server{
				Handler:           mux,
				TLSConfig:         &tls.Config{GetCertificate: getCert, MinVersion: tls.VersionTLS12},
				ReadHeaderTimeout: 10 * time.Second,
			}
			done := make(chan error, 1)
			go func() { done <- srv.ServeTLS(lis, "", "") }()
			select {
			case err := <-done:
				return err
			case <-cmd.Context().Done():
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
			if err := <-done; !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&address, "address", ":9443", "address of the webhook's HTTPS listener")
	f.StringVar(&certs, "cert-dir", "", "folder with tls.crt and tls.key (from a certificate manager), read again when they change")
	f.StringVar(&webhookCfg, "self-signed", "", "without --cert-dir: make a certificate at start and put its CA in this MutatingWebhookConfiguration")
	f.StringSliceVar(&serviceDNS, "dns-names", []string{"ballast-inject.ballast-system.svc"}, "names the self-signed certificate is for (the webhook Service's)")
	f.StringVar(&c.Image, "image", "", "image of the injected containers (holds the sidecar binary, --proxy-command)")
	f.StringVar(&c.Command, "proxy-command", "ballast-proxy", "the sidecar binary in --image: ballast-proxy, or ballast (run as `ballast proxy`)")
	f.StringVar(&c.XDSAddress, "xds-address", "", "control plane host:port given to injected proxies")
	f.Int64Var(&c.ProxyUID, "proxy-uid", 1337, "uid of the injected proxy, excluded from the redirect")
	f.StringArrayVar(&c.InitArgs, "init-arg", nil, "extra argument for 'ballast proxy init' (repeatable), e.g. --init-arg=--include-cidrs=10.96.0.0/12")
	f.StringVar(&c.XDSCAConfigMap, "xds-ca-configmap", "", "ConfigMap (key ca.crt) in each pod's namespace with the CA of the control plane's TLS certificate, which it publishes with --tls-secret; empty: injected proxies dial the control plane in plaintext")
	f.StringVar(&c.XDSTokenAudience, "xds-token-audience", "ballast-control", "audience of the ServiceAccount token projected into injected pods for the control plane")
	f.StringArrayVar(&c.ProxyArgs, "proxy-arg", nil, "extra argument for 'ballast proxy' (repeatable), e.g. --proxy-arg=--kubernetes")
	return cmd
}

// certSource is a tls.Config's GetCertificate.
type certSource = func(*tls.ClientHelloInfo) (*tls.Certificate, error)

// injectCertificate serves the webhook's certificate from dir, read again
// whenever its files change (a certificate manager rotating the Secret
// needs no restart), or makes a self-signed one and publishes its CA in
// the named webhook configuration.
func injectCertificate(ctx context.Context, dir, webhookCfg string, dnsNames []string) (certSource, error) {
	switch {
	case dir != "":
		files, err := keypair.Load(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), nil)
		if err != nil {
			return nil, fmt.Errorf("--cert-dir %s: %w", dir, err)
		}
		return files.GetCertificate, nil
	case webhookCfg != "":
		cert, ca, err := inject.SelfSigned(dnsNames, 10*365*24*time.Hour)
		if err != nil {
			return nil, err
		}
		cfg, err := source.RESTConfig("")
		if err != nil {
			return nil, fmt.Errorf("--self-signed: %w", err)
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("--self-signed: %w", err)
		}
		if err := inject.PatchCABundle(ctx, client, webhookCfg, ca); err != nil {
			return nil, fmt.Errorf("--self-signed: %w", err)
		}
		return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, nil
	}
	return nil, errors.New("give --cert-dir or --self-signed")
}
