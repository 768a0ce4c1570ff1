package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ballast-dev/ballast/xds"
)

func newBootstrapCmd() *cobra.Command {
	var (
		b        xds.Bootstrap
		out      string
		metadata []string
	)
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Write the GRPC_XDS_BOOTSTRAP file that points a pod's gRPC clients at ballast control",
		Long: `Writes the xDS bootstrap JSON for this pod: the control plane's address, a node id
ballast~<pod>.<namespace>, the pod's zone and metadata, in a form grpc-go, grpc-js
and C-core (Python, C++, …) all accept, with or without a zone (docs/languages.md).
Run it as an init container
writing to a shared volume, and set GRPC_XDS_BOOTSTRAP to that path in the app
container. --pod, --namespace and --zone default to $POD_NAME, $POD_NAMESPACE and
$ZONE (set them with the downward API).

--ca-file makes the channel to the control plane TLS (channel_creds "tls",
gRFC A65), verified against the CA in the file: the ballast-control-ca
ConfigMap every namespace holds, mounted. --cert-file and --key-file add a
client certificate (mTLS) whose SPIFFE ID the control plane knows the pod by.

--token-file names a projected ServiceAccount token (audience ballast-control)
that an authenticated control plane needs; it is written as the server's
call_creds (jwt_token_file, gRFC A97). grpc-go sends it only over TLS
(--ca-file) and reads it only with GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true.
See docs/security.md for which clients send what.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b.Metadata = map[string]string{}
			for _, kv := range metadata {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--metadata %q: want key=value", kv)
				}
				b.Metadata[k] = v
			}
			if len(b.Metadata) == 0 {
				b.Metadata = nil
			}
			data, err := b.JSON()
			if err != nil {
				return err
			}
			if out == "-" {
				_, err := cmd.OutOrStdout().Write(data)
				return err
			}
			return writeFileAtomic(out, data)
		},
	}
	f := cmd.Flags()
	f.StringVar(&b.Server, "server", "ballast-control.ballast-system.svc:15010", "control plane xDS address (host:port)")
	f.StringVar(&b.Pod, "pod", os.Getenv("POD_NAME"), "this pod's name")
	f.StringVar(&b.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "this pod's namespace")
	f.StringVar(&b.Zone, "zone", os.Getenv("ZONE"), "this pod's zone")
	f.StringVar(&b.TokenFile, "token-file", "", "projected ServiceAccount token file to send to the control plane as call credentials")
	f.StringVar(&b.CAFile, "ca-file", "", "CA (PEM) of the control plane's certificate: connect over TLS")
	f.StringVar(&b.CertFile, "cert-file", "", "client certificate (PEM) for mTLS, with --ca-file and --key-file")
	f.StringVar(&b.KeyFile, "key-file", "", "key of --cert-file")
	f.StringArrayVar(&metadata, "metadata", nil, "node metadata key=value (repeatable)")
	f.StringVar(&out, "out", "-", `file to write ("-" for stdout), e.g. /etc/ballast/bootstrap.json`)
	return cmd
}

// writeFileAtomic writes through a temporary file and a rename, so a reader
// never sees a half-written bootstrap.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := cmp.Or(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
