package control_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // the xds:/// resolver the helper process dials with

	"github.com/ballast-dev/ballast/control"
	"github.com/ballast-dev/ballast/control/tokenreview"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/internal/keypair"
	"github.com/ballast-dev/ballast/xds"
	"github.com/ballast-dev/ballast/xds/client"
)

// helperTarget, in the environment, makes this test binary the proxyless
// grpc-go client of TestProxylessClientOverTLS (TestHelperProxyless): grpc-go
// reads GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS once, when its package
// initialises, so a client that uses its bootstrap's call credentials is a
// process started with it, as an application pod is.
const helperTarget = "BALLAST_TEST_XDS_TARGET"

// pki is a CA and the files a control plane and its clients read.
type pki struct {
	dir string
	ca  *keypair.CA
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := keypair.NewCA("ballast-control-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: t.TempDir(), ca: ca}
	p.write(t, "ca.crt", ca.CertPEM)
	return p
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// write replaces a file as the kubelet updates a Secret or ConfigMap
// volume: a new file renamed over the old.
func (p *pki) write(t *testing.T, name string, data []byte) {
	t.Helper()
	tmp := p.path("." + name + ".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p.path(name)); err != nil {
		t.Fatal(err)
	}
}

// issue writes a key pair of leaf as <name>.crt and <name>.key.
func (p *pki) issue(t *testing.T, ca *keypair.CA, name string, leaf keypair.Leaf) {
	t.Helper()
	leaf.ValidFor = time.Hour
	cert, key, err := ca.Issue(leaf)
	if err != nil {
		t.Fatal(err)
	}
	p.write(t, name+".crt", cert)
	p.write(t, name+".key", key)
}

func spiffe(ns string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/app" }

// tracked is a listener whose accepted connections can be cut, as a
// network partition or a control-plane node going away would, so a test
// can make clients reconnect to the same running server.
type tracked struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *tracked) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *tracked) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

type tlsPlane struct {
	addr, http, debug string
	xds               *tracked
}

// serveTLS runs the control plane as `ballast control --tls-cert-file
// --tls-key-file --client-ca-file` does in a cluster: TLS with the
// serving pair server.crt/key of p, client certificates verified against
// p's ca.crt, tokens checked by TokenReview.
func serveTLS(t *testing.T, reg *discovery.Registry, p *pki) tlsPlane {
	t.Helper()
	authn, err := tokenreview.New(tokenreview.Config{Client: apiReviewer(t)})
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := control.ServerTLS(control.TLSFiles{Cert: p.path("server.crt"), Key: p.path("server.key"), ClientCA: p.path("ca.crt")}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	xl := &tracked{Listener: listen()}
	hl, dl := listen(), listen()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- control.Serve(ctx, control.Config{
			Registry: reg, Authenticator: authn, TrustDomain: "cluster.local", ReadAllNamespaces: []string{"ballast-system"},
			XDS: xl, TLS: tlsCfg, HTTP: hl, Debug: dl, DrainTimeout: time.Second, Log: quiet(),
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control.Serve: %v", err)
		}
	})
	waitReady(t, hl.Addr().String())
	return tlsPlane{addr: xl.Addr().String(), http: hl.Addr().String(), debug: dl.Addr().String(), xds: xl}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func waitReady(t *testing.T, httpAddr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control plane not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsADS opens an ADS stream over TLS, trusting roots, presenting the
// key pair <cert>.crt/.key of p when cert is set and sending tok when
// set, and sends one Listener request.
func tlsADS(t *testing.T, addr string, roots *x509.CertPool, p *pki, cert, tok, ns string, names ...string) (recv func() (*discoveryv3.DiscoveryResponse, error)) {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(p.path(cert+".crt"), p.path(cert+".key"))
		if err != nil {
			t.Fatal(err)
		}
		// Sent whichever CAs the server asks for, so a certificate of
		// another CA reaches the server's verification.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if tok != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		// A failed handshake fails the stream's opening.
		return func() (*discoveryv3.DiscoveryResponse, error) { return nil, err }
	}
	err = stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "ballast~client." + ns}, TypeUrl: resourcev3.ListenerType, ResourceNames: names})
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return stream.Recv
}

func pool(pems ...[]byte) *x509.CertPool {
	p := x509.NewCertPool()
	for _, b := range pems {
		p.AppendCertsFromPEM(b)
	}
	return p
}

// TestMTLSIdentity: over TLS, a client certificate whose SPIFFE ID names
// namespace team-a is known as team-a, with no token: it reads team-a's
// Services and those exported to it, never team-b's others, by name or by
// the sidecar's wildcard; a client of ballast-system reads all. A
// certificate of another trust domain or without a SPIFFE ID, a
// certificate of another CA, and no credentials at all are refused with a
// status saying what is wanted. A token still works over TLS.
func TestMTLSIdentity(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("team-a", "greeter", "10.96.3.10", nil))
	reg.Set(service("team-b", "ledger", "10.96.3.11", nil))
	reg.Set(service("team-b", "catalog", "10.96.3.12", map[string]string{xds.ExportAnnotation: "team-a"}))
	p := newPKI(t)
	p.issue(t, p.ca, "server", keypair.Leaf{Hosts: []string{"127.0.0.1"}})
	p.issue(t, p.ca, "team-a", keypair.Leaf{URIs: []string{spiffe("team-a")}})
	p.issue(t, p.ca, "system", keypair.Leaf{URIs: []string{spiffe("ballast-system")}})
	p.issue(t, p.ca, "foreign", keypair.Leaf{URIs: []string{"spiffe://other.example/ns/team-b/sa/app"}})
	p.issue(t, p.ca, "plain", keypair.Leaf{Hosts: []string{"client.example"}})
	other, err := keypair.NewCA("someone-else", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p.issue(t, other, "forged", keypair.Leaf{URIs: []string{spiffe("team-b")}})
	plane := serveTLS(t, reg, p)
	roots := pool(p.ca.CertPEM)

	reads := []struct {
		name, cert, token, ns string
		ask, want             []string
	}{
		{"team-a by certificate, by name", "team-a", "", "team-a",
			[]string{"greeter.team-a:50051", "ledger.team-b:50051", "catalog.team-b:50051"},
			[]string{"catalog.team-b:50051", "greeter.team-a:50051"}},
		{"team-a by certificate, sidecar wildcard", "team-a", "", "team-a", nil, []string{"10.96.3.10:50051", "10.96.3.12:50051"}},
		{"ballast-system by certificate", "system", "", "ballast-system", nil, []string{"10.96.3.10:50051", "10.96.3.11:50051", "10.96.3.12:50051"}},
		{"team-b by token over TLS", "", token(t, "team-b", "ballast-control"), "team-b", nil, []string{"10.96.3.11:50051", "10.96.3.12:50051"}},
	}
	for _, tc := range reads {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tlsADS(t, plane.addr, roots, p, tc.cert, tc.token, tc.ns, tc.ask...)()
			if err != nil {
				t.Fatal(err)
			}
			if got := listenerNames(t, resp); !slices.Equal(got, tc.want) {
				t.Fatalf("listeners %q; want %q", got, tc.want)
			}
		})
	}

	refused := []struct {
		name, cert string
		want       codes.Code
		says       string
	}{
		{"no credentials", "", codes.Unauthenticated, "no credentials: this control plane serves only clients that present a client certificate"},
		{"another trust domain", "foreign", codes.Unauthenticated, "is not spiffe://cluster.local/ns/<namespace>/sa/<serviceaccount>"},
		{"no SPIFFE ID", "plain", codes.Unauthenticated, "has no SPIFFE ID"},
		// Another CA's certificate fails the handshake: the stream never opens.
		// The handshake fails; the client sees it as a failed connection
		// (the message depends on which side of the race it reads).
		{"another CA", "forged", codes.Unavailable, ""},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tlsADS(t, plane.addr, roots, p, tc.cert, "", "team-b", "ledger.team-b:50051")()
			if status.Code(err) != tc.want || !strings.Contains(status.Convert(err).Message(), tc.says) {
				t.Fatalf("Recv = %v; want %v saying %q", err, tc.want, tc.says)
			}
		})
	}

	// Plaintext to the TLS port gets nowhere.
	conn, err := grpc.NewClient(plane.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx); err == nil {
		if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("plaintext client: Recv = %v; want Unavailable", err)
		}
	}
}

// TestDebugEndpointsGuarded: /debug/clients is not on the probes' port,
// and on the debug listener a caller from another host needs the token of
// a namespace that may read every client's config.
func TestDebugEndpointsGuarded(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("team-a", "greeter", "10.96.4.10", nil))
	p := newPKI(t)
	p.issue(t, p.ca, "server", keypair.Leaf{Hosts: []string{"127.0.0.1"}})
	plane := serveTLS(t, reg, p)

	res, err := http.Get("http://" + plane.http + "/debug/clients")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("/debug/clients on the probes' port: %s; want 404", res.Status)
	}
	// From loopback (kubectl port-forward, exec) the table is served.
	res, err = http.Get("http://" + plane.debug + "/debug/clients")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("/debug/clients from loopback: %s", res.Status)
	}
	// From another host (the listener bound to a pod address), the guard
	// asks for a token; shown through the same handler with a remote
	// address, since the test may dial only loopback.
	srv, err := xds.NewServer(xds.Config{Registry: reg, Authenticator: mustAuthn(t), ReadAllNamespaces: []string{"ballast-system"}, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	h := srv.DebugHandler()
	cases := []struct {
		name, token string
		want        int
		says        string
	}{
		{"no token", "", http.StatusUnauthorized, "no credentials"},
		{"another namespace", token(t, "team-a", "ballast-control"), http.StatusForbidden, "may not read it"},
		{"ballast-system", token(t, "ballast-system", "ballast-control"), http.StatusOK, "["},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "/debug/clients", nil)
			req.RemoteAddr = "10.244.0.7:41234"
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want || !strings.Contains(rec.Body.String(), tc.says) {
				t.Fatalf("%d %q; want %d saying %q", rec.Code, rec.Body.String(), tc.want, tc.says)
			}
		})
	}
}

func mustAuthn(t *testing.T) xds.Authenticator {
	t.Helper()
	a, err := tokenreview.New(tokenreview.Config{Client: apiReviewer(t)})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestHelperProxyless is the proxyless client TestProxylessClientOverTLS
// starts: grpc-go, its xDS resolver reading GRPC_XDS_BOOTSTRAP, one call.
// It prints the outcome for the parent to judge.
func TestHelperProxyless(t *testing.T) {
	target := os.Getenv(helperTarget)
	if target == "" {
		t.Skip("the client process of TestProxylessClientOverTLS")
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "tls"})
	if err != nil {
		fmt.Printf("RESULT %s %s\n", status.Code(err), status.Convert(err).Message())
		return
	}
	fmt.Printf("RESULT OK %s\n", r.GetMessage())
}

// TestProxylessClientOverTLS: an unmodified grpc-go xDS client, its
// bootstrap written by `ballast bootstrap --ca-file --token-file` (tls
// channel creds, gRFC A65; jwt_token_file call creds, gRFC A97, enabled
// by GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true), gets its config
// from the authenticated control plane over TLS and calls its greeter; so
// does one with a client certificate of its namespace instead (--cert-file,
// --key-file), and one of another namespace is not sent the Service.
// Without the token file the control plane refuses the stream
// (Unauthenticated) and the call fails saying so; with the token but
// plaintext grpc-go refuses to send the token at all.
func TestProxylessClientOverTLS(t *testing.T) {
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gctx, gcancel := context.WithCancel(context.Background())
	gdone := make(chan error, 1)
	go func() { gdone <- (&greeter.Server{Pod: "greeter-0", Log: quiet()}).Serve(gctx, gl) }()
	defer func() { gcancel(); <-gdone }()

	reg := discovery.NewRegistry()
	svc := service("team-a", "greeter", "10.96.6.10", nil)
	svc.Ports[0].Endpoints = []discovery.Endpoint{{Address: netip.MustParseAddrPort(gl.Addr().String()), Ready: true, Serving: true}}
	reg.Set(svc)
	p := newPKI(t)
	p.issue(t, p.ca, "server", keypair.Leaf{Hosts: []string{"127.0.0.1"}})
	p.issue(t, p.ca, "team-a", keypair.Leaf{URIs: []string{spiffe("team-a")}})
	p.issue(t, p.ca, "team-b", keypair.Leaf{URIs: []string{spiffe("team-b")}})
	plane := serveTLS(t, reg, p)
	p.write(t, "token", []byte(token(t, "team-a", "ballast-control")))

	cases := []struct {
		name      string
		b         xds.Bootstrap
		want      string   // the RESULT line's start
		wantInMsg []string // one of these, if any
	}{
		{"TLS and token", xds.Bootstrap{CAFile: p.path("ca.crt"), TokenFile: p.path("token")}, "RESULT OK hostname:greeter-0", nil},
		{"mTLS, no token", xds.Bootstrap{CAFile: p.path("ca.crt"), CertFile: p.path("team-a.crt"), KeyFile: p.path("team-a.key")},
			"RESULT OK hostname:greeter-0", nil},
		// team-b's certificate is good, but team-a's Service is not
		// exported: its Listener is left out of the response, which
		// grpc-go takes as the resource being removed; on a loaded
		// machine its resolver may report the empty result first.
		{"mTLS of another namespace", xds.Bootstrap{CAFile: p.path("ca.crt"), CertFile: p.path("team-b.crt"), KeyFile: p.path("team-b.key")},
			"RESULT Unavailable", []string{`resource "greeter.team-a:50051" of type "ListenerResource" has been removed`, "produced zero addresses"}},
		// The refusal ends the stream before any resource came, which
		// grpc-go also takes as the Listener missing: the call may report
		// that instead, so the plane's count of refusals is the judge.
		{"TLS without token", xds.Bootstrap{CAFile: p.path("ca.crt")}, "RESULT Unavailable", []string{"no credentials", "produced zero addresses"}},
		{"token without TLS", xds.Bootstrap{TokenFile: p.path("token")}, "RESULT Unavailable", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.b
			b.Server, b.Pod, b.Namespace = plane.addr, "client", "team-a"
			data, err := b.JSON()
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "bootstrap.json")
			if err := os.WriteFile(file, data, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProxyless$")
			cmd.Env = append(os.Environ(), xds.BootstrapEnv+"="+file, "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true",
				helperTarget+"=xds:///greeter.team-a:50051")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("client process: %v\n%s", err, out)
			}
			var result string
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "RESULT ") {
					result = l
				}
			}
			saysOne := len(tc.wantInMsg) == 0 || slices.ContainsFunc(tc.wantInMsg, func(m string) bool { return strings.Contains(result, m) })
			if !strings.HasPrefix(result, tc.want) || !saysOne {
				t.Fatalf("client: %q; want %q... saying %q\n%s", result, tc.want, tc.wantInMsg, out)
			}
			if tc.b.CertFile == "" && tc.b.TokenFile == "" {
				want := `ballast_xds_auth_failures_total{reason="no_token"}`
				if m := grep(scrape(t, plane.http), want); m == "" {
					t.Fatalf("the control plane counted no refusal (%s)", want)
				}
			}
		})
	}
}

// TestCertificateRotation: the control plane's serving certificate, its
// client CA and a client's certificate and CA file are all replaced on
// disk, as Secret and ConfigMap volumes are, with a new CA; nothing
// restarts. The sidecar's stream open across the rotation keeps getting
// updates; a new client trusting only the new CA is served the new
// certificate; and when its connection is cut the sidecar reconnects with
// its rotated files and is served again.
func TestCertificateRotation(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("team-a", "one", "10.96.5.10", nil))
	p := newPKI(t)
	p.issue(t, p.ca, "server", keypair.Leaf{Hosts: []string{"127.0.0.1"}})
	p.issue(t, p.ca, "team-a", keypair.Leaf{URIs: []string{spiffe("team-a")}})
	p.write(t, "client-ca.crt", p.ca.CertPEM)
	plane := serveTLS(t, reg, p)

	var streamEnds atomic.Int32
	c, err := client.New(client.Config{
		Server: plane.addr, Node: client.Node{ID: "ballast~sidecar.team-a"}, SidecarListeners: true,
		CAFile: p.path("client-ca.crt"), CertFile: p.path("team-a.crt"), KeyFile: p.path("team-a.key"),
		OnStreamEnd: func(error) { streamEnds.Add(1) },
		Log:         quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	knows := func(ip string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, ok := c.Target(netip.MustParseAddrPort(ip + ":50051")); ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the sidecar never learned %s", ip)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	knows("10.96.5.10")

	// Rotate to a new CA: both CAs trusted while certificates move over.
	next, err := keypair.NewCA("ballast-control-ca-2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	both := append(append([]byte{}, p.ca.CertPEM...), next.CertPEM...)
	p.write(t, "client-ca.crt", both)
	p.write(t, "ca.crt", both)
	p.issue(t, next, "server", keypair.Leaf{Hosts: []string{"127.0.0.1"}})
	p.issue(t, next, "team-a", keypair.Leaf{URIs: []string{spiffe("team-a")}})

	reg.Set(service("team-a", "two", "10.96.5.11", nil))
	knows("10.96.5.11")

	if _, err := tlsADS(t, plane.addr, pool(next.CertPEM), p, "team-a", "", "team-a")(); err != nil {
		t.Fatalf("a client trusting only the new CA: %v", err)
	}
	tc, err := tls.Dial("tcp", plane.addr, &tls.Config{RootCAs: pool(next.CertPEM), NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("handshake trusting only the new CA: %v", err)
	}
	issuer := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName
	tc.Close()
	if issuer != "ballast-control-ca-2" {
		t.Fatalf("served certificate issued by %q; want the new CA", issuer)
	}

	before := streamEnds.Load()
	plane.xds.cut()
	reg.Set(service("team-a", "three", "10.96.5.12", nil))
	knows("10.96.5.12")
	if streamEnds.Load() == before {
		t.Fatal("the sidecar's stream was not cut; the test shows no reconnection")
	}
}
