package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// The ingress paths are the way in from outside a cluster: TLS from the
// client, terminated at the ingress, and h2c to the pods. Ballast's
// gateway (`ballast gateway --files`, an HTTPS listener and a GRPCRoute
// to the Service) against nginx and haproxy configured the same way: one
// worker, TLS 1.2 or later with h2 by ALPN, the same certificate (ECDSA
// P-256) and the same client.

// ingressHost is the name the client asks for (SNI) and the certificate
// names.
const ingressHost = "greeter.bench.example"

// ingressCert is a CA and the certificate it signed for ingressHost, as
// files in a directory, and the client's credentials that trust the CA.
type ingressCert struct {
	certFile, keyFile string
	// pemFile is the certificate and its key in one file (haproxy's crt).
	pemFile         string
	certPEM, keyPEM []byte
	creds           credentials.TransportCredentials
}

func newIngressCert(dir string) (*ingressCert, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ballast bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ingressHost}, DNSNames: []string{ingressHost},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	c := &ingressCert{
		certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key"), pemFile: filepath.Join(dir, "tls.pem"),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	for name, data := range map[string][]byte{c.certFile: c.certPEM, c.keyFile: c.keyPEM, c.pemFile: append(append([]byte{}, c.certPEM...), c.keyPEM...)} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c.creds = credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: ingressHost, MinVersion: tls.VersionTLS12})
	return c, nil
}

// dialOptions are the client's: TLS to the ingress, asking for
// ingressHost.
func (c *ingressCert) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithTransportCredentials(c.creds), grpc.WithAuthority(ingressHost)}
}

// gatewayIngressName is the row of the gateway as a TLS ingress.
const gatewayIngressName = "gateway (TLS ingress)"

// gatewayIngress is ballast-gateway --files (Options.GatewayBinary), or
// else `ballast gateway --files`, with one HTTPS listener and a GRPCRoute
// to the pods' Service.
func gatewayIngress() path { return gatewayIngressPath{} }

type gatewayIngressPath struct{}

func (gatewayIngressPath) Name() string { return gatewayIngressName }

func (gatewayIngressPath) Open(ctx context.Context, b *Bench, pods []*pod) (*route, error) {
	bin, args, name := b.opts.GatewayBinary, []string(nil), "ballast-gateway"
	if bin == "" {
		if err := b.hasCommand("gateway", "the gateway (issue 16)"); err != nil {
			return nil, err
		}
		bin, args, name = b.opts.Binary, []string{"gateway"}, "ballast gateway"
	}
	dir, err := os.MkdirTemp(b.dir, "gateway-")
	if err != nil {
		return nil, err
	}
	cert, err := newIngressCert(dir)
	if err != nil {
		return nil, err
	}
	svc, err := serviceManifest(pods, defaultClusterIP)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "greeter.yaml"), svc, 0o644); err != nil {
		return nil, err
	}
	proc, ports, err := onFreePorts(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 2,
		func(ports []netip.AddrPort) (*process, error) {
			if err := os.WriteFile(filepath.Join(dir, "gateway.yaml"), gatewayManifest(ports[0].Port(), cert), 0o644); err != nil {
				return nil, err
			}
			return startProcess(exec.Command(bin, slices.Concat(args, []string{"--files", dir, "--host", "127.0.0.1",
				"--admin-address", ports[1].String()})...), name)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitServing(ctx, "passthrough:///"+ports[0].String(), proc, 15*time.Second, cert.dialOptions()...)
		})
	if err != nil {
		return nil, fmt.Errorf("start the gateway: %w", err)
	}
	return &route{Target: "passthrough:///" + ports[0].String(), DialOptions: cert.dialOptions(), Proxy: proc, Close: proc.stop}, nil
}

// gatewayManifest is a GatewayClass of Ballast's controller, a Gateway
// with one HTTPS listener on port for ingressHost, its Secret, and a
// GRPCRoute sending every call to greeter.bench.
func gatewayManifest(port uint16, cert *ingressCert) []byte {
	indent := func(b []byte) string {
		return "    " + strings.ReplaceAll(strings.TrimRight(string(b), "\n"), "\n", "\n    ") + "\n"
	}
	return []byte(fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ballast}
spec: {controllerName: ballast.dev/gateway}
---
apiVersion: v1
kind: Secret
metadata: {name: ingress-cert, namespace: %[1]s}
type: kubernetes.io/tls
stringData:
  tls.crt: |
%[4]s  tls.key: |
%[5]s---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: %[1]s}
spec:
  gatewayClassName: ballast
  listeners:
  - name: https
    protocol: HTTPS
    port: %[2]d
    hostname: %[6]s
    tls:
      mode: Terminate
      certificateRefs: [{name: ingress-cert}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: ingress, namespace: %[1]s}
spec:
  parentRefs: [{name: ingress}]
  rules:
  - backendRefs: [{name: %[3]s, port: %[7]d}]
`, benchNamespace, port, benchService, indent(cert.certPEM), indent(cert.keyPEM), ingressHost, benchPort))
}

// nginxTLS is nginx() terminating TLS.
func nginxTLS() path {
	p := nginx().(peerPath)
	p.name, p.tls = "nginx (TLS ingress)", true
	return p
}

// haproxyTLS is haproxy() terminating TLS.
func haproxyTLS() path {
	p := haproxy().(peerPath)
	p.name, p.tls = "haproxy (TLS ingress)", true
	return p
}

// secondHaproxyTLS is another haproxyTLS(), configured the same, run
// beside the first as a control: how far its p99 lands from the first's
// in the same run is how far two identical ingresses differ on this
// machine, the noise under every p99 ratio to haproxy.
func secondHaproxyTLS() path {
	p := haproxyTLS().(peerPath)
	p.name = "second haproxy (TLS ingress)"
	return p
}
