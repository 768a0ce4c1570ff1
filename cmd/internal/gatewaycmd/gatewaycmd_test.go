package gatewaycmd

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
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/internal/freeport"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/greeter"
)

// The gateway from a folder of YAML, as `ballast gateway --files DIR` runs
// it: a Gateway with an HTTP listener (h2c), an HTTPS listener (TLS
// terminated with a certificate of a test CA) and an HTTPS listener whose
// Secret does not exist; one GRPCRoute attached to all three sends the
// calls to a Service of three greeters on loopback. Real grpc-go clients
// call through the HTTP and HTTPS listeners over one connection each, and
// the calls spread over the three greeters: balanced per call. The HTTPS
// listeners serve only their hostnames, TLS takes nothing below 1.2, a
// rotated Secret is served to new handshakes without dropping the
// connections made before, and the listener without its Secret is not
// served while the others are.
func TestGatewayFromFiles(t *testing.T) {
	backends := greeters(t, 3)
	ca, caPool := testCA(t)
	certPEM, keyPEM := ca.issue(t, "grpc.example.com", 2)
	ports := freePorts(t, 3)
	dir := t.TempDir()
	write := func(certPEM, keyPEM []byte) {
		writeTemplate(t, filepath.Join(dir, "gateway.yaml"), gatewayYAML, map[string]any{
			"HTTP": ports[0], "HTTPS": ports[1], "Broken": ports[2], "Backends": backends,
			"Cert": indent(certPEM), "Key": indent(keyPEM),
		})
	}
	write(certPEM, keyPEM)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Files: dir, Host: "127.0.0.1", AdminAddress: "127.0.0.1:0", DrainTimeout: time.Second},
			slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})

	h2c := dial(t, fmt.Sprintf("127.0.0.1:%d", ports[0]), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("grpc.example.com:443"))
	tlsCreds := credentials.NewTLS(&tls.Config{RootCAs: caPool, ServerName: "grpc.example.com"})
	var tlsDials atomic.Int32
	viaTLS := dial(t, fmt.Sprintf("127.0.0.1:%d", ports[1]), grpc.WithTransportCredentials(tlsCreds), grpc.WithAuthority("grpc.example.com"),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			tlsDials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}))
	for name, conn := range map[string]*grpc.ClientConn{"h2c": h2c, "tls": viaTLS} {
		// Counted once every greeter has answered: round robin picks
		// only among connected endpoints, and a loaded machine connects
		// the last one later.
		seen := map[string]bool{}
		eventually(t, name+" listener reaches every greeter", func() bool {
			if pod, err := call(conn); err == nil {
				seen[pod] = true
			}
			return len(seen) == len(backends)
		})
		tally := greeter.Call(context.Background(), conn, 300, 5*time.Second, nil)
		if tally.Errors > 0 {
			t.Fatalf("%s: %d of %d calls failed, last: %v", name, tally.Errors, tally.Calls, tally.LastError)
		}
		for i := range backends {
			pod := fmt.Sprintf("greeter-%d", i)
			if tally.Pods[pod] < 50 {
				t.Errorf("%s: %s took %d of 300 calls over one connection, want calls spread per call: %v", name, pod, tally.Pods[pod], tally.Pods)
			}
		}
	}

	// The h2c listener's hostname is *.example.com: a call for another
	// host matches no rule, which a Gateway answers UNIMPLEMENTED.
	for _, host := range []string{"example.com", "grpc.example.org", "127.0.0.1"} {
		other := dial(t, fmt.Sprintf("127.0.0.1:%d", ports[0]), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(host))
		if _, err := call(other); status.Code(err) != codes.Unimplemented {
			t.Errorf("call for %s through the listener of *.example.com: %v, want UNIMPLEMENTED", host, err)
		}
	}
	// TLS 1.1 is refused; ALPN says h2.
	if c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[1]), &tls.Config{RootCAs: caPool, ServerName: "grpc.example.com", MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("a TLS 1.1 handshake succeeded, want TLS 1.2 at least")
	}
	c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[1]), &tls.Config{RootCAs: caPool, ServerName: "grpc.example.com", NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("ALPN negotiated %q, want h2", p)
	}
	c.Close()
	// The Secret rotates: new handshakes get the new certificate, and the
	// connection made with the old one goes on taking calls.
	dialsBefore := tlsDials.Load() // dials refused before the gateway listened count too
	write(ca.issue(t, "grpc.example.com", 3))
	eventually(t, "the new certificate is served", func() bool {
		c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[1]), &tls.Config{RootCAs: caPool, ServerName: "grpc.example.com"})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64() == 3
	})
	if tally := greeter.Call(context.Background(), viaTLS, 30, 5*time.Second, nil); tally.Errors > 0 || tlsDials.Load() != dialsBefore {
		t.Errorf("after the rotation, over the connection made before it: %d of %d calls failed (last: %v), %d new connections made, want none",
			tally.Errors, tally.Calls, tally.LastError, tlsDials.Load()-dialsBefore)
	}
	// The listener whose Secret is missing is not served.
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[2])); err == nil {
		c.Close()
		t.Errorf("the listener without its Secret accepts connections")
	}
}

const gatewayYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: ballast
spec:
  controllerName: ballast.dev/gateway
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: default
spec:
  gatewayClassName: ballast
  listeners:
  - name: h2c
    protocol: HTTP
    port: {{.HTTP}}
    hostname: "*.example.com"
  - name: https
    protocol: HTTPS
    port: {{.HTTPS}}
    hostname: grpc.example.com
    tls:
      certificateRefs:
      - name: grpc-example-com
  - name: broken
    protocol: HTTPS
    port: {{.Broken}}
    tls:
      certificateRefs:
      - name: no-such-secret
---
apiVersion: v1
kind: Secret
metadata:
  name: grpc-example-com
  namespace: default
type: kubernetes.io/tls
stringData:
  tls.crt: |
{{.Cert}}
  tls.key: |
{{.Key}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: greeter
  namespace: default
spec:
  parentRefs:
  - name: edge
  rules:
  - matches:
    - method:
        service: helloworld.Greeter
    backendRefs:
    - name: greeter
      port: 50051
---
apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: default
spec:
  ports:
  - name: grpc
    port: 50051
{{range $i, $b := .Backends}}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: greeter-{{$i}}
  namespace: default
  labels:
    kubernetes.io/service-name: greeter
addressType: IPv4
ports:
- name: grpc
  port: {{$b.Port}}
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {ready: true}
{{end}}`

type backend struct{ Port int }

// greeters runs n greeter servers on loopback, named greeter-0..n-1.
func greeters(t *testing.T, n int) []backend {
	t.Helper()
	var out []backend
	for _, p := range greetertest.Serve(t, greetertest.Names("greeter", n)...) {
		out = append(out, backend{Port: int(p.Addr.Port())})
	}
	return out
}

// freePorts are loopback ports nothing listens on now, for listeners
// (which the gateway binds by number).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

func writeTemplate(t *testing.T, path, text string, data any) {
	t.Helper()
	var b strings.Builder
	if err := template.Must(template.New("").Parse(text)).Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func indent(pemText []byte) string {
	lines := strings.Split(strings.TrimSpace(string(pemText)), "\n")
	return "    " + strings.Join(lines, "\n    ")
}

func dial(t *testing.T, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func call(conn *grpc.ClientConn) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "gateway"})
	if err != nil {
		return "", err
	}
	return greeter.PodOf(r.GetMessage()), nil
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

// authority is a test certificate authority.
type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func testCA(t *testing.T) (*authority, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ballast test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &authority{cert: cert, key: key}, pool
}

// issue is a server certificate for host and its key, PEM encoded.
func (a *authority) issue(t *testing.T, host string, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}
