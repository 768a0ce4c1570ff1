package control_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/control"
	"github.com/ballast-dev/ballast/control/tokenreview"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/internal/kubeclient"
	"github.com/ballast-dev/ballast/internal/testapi"
	"github.com/ballast-dev/ballast/xds"
	"github.com/ballast-dev/ballast/xds/client"
)

var env *testapi.Env

func TestMain(m *testing.M) {
	if os.Getenv(helperTarget) != "" {
		// The client process of TestProxylessClientOverTLS needs no API server.
		os.Exit(m.Run())
	}
	testapi.Main(m, "control", &env)
}

// token is a real ServiceAccount token from the API server's TokenRequest,
// the kind the kubelet projects into a pod.
func token(t *testing.T, ns, audience string) string {
	t.Helper()
	ctx := context.Background()
	if _, err := env.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	exp := int64(600)
	tr, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "app", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of %s/app for %s: %v", ns, audience, err)
	}
	return tr.Status.Token
}

func service(ns, name, ip string, annotations map[string]string) *discovery.Service {
	return &discovery.Service{
		Key:         discovery.Key{Namespace: ns, Name: name},
		ClusterIPs:  []netip.Addr{netip.MustParseAddr(ip)},
		Ports:       []discovery.Port{{Name: "grpc", Port: 50051, Protocol: "TCP"}},
		Annotations: annotations,
	}
}

// apiClient is the control plane's own client of the test's API server.
func apiClient(t *testing.T) *kubeclient.Client {
	t.Helper()
	c, err := kubeclient.New(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// apiReviewer is the test API server's TokenReview.
func apiReviewer(t *testing.T) tokenreview.Reviewer {
	t.Helper()
	r, err := tokenreview.APIReviewer(apiClient(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// serveAuthenticated runs the control plane as `ballast control` runs it
// in a cluster: TokenReview against the API server, clients of
// ballast-system reading everything. It returns the xDS and HTTP addresses.
func serveAuthenticated(t *testing.T, reg *discovery.Registry) (string, string) {
	t.Helper()
	authn, err := tokenreview.New(tokenreview.Config{Client: apiReviewer(t)})
	if err != nil {
		t.Fatal(err)
	}
	xl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- control.Serve(ctx, control.Config{
			Registry: reg, Authenticator: authn, ReadAllNamespaces: []string{"ballast-system"},
			XDS: xl, HTTP: hl, DrainTimeout: time.Second,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control.Serve: %v", err)
		}
	})
	// A wildcard request is refused until the first translation is in.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get("http://" + hl.Addr().String() + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control plane not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return xl.Addr().String(), hl.Addr().String()
}

// ads opens a state-of-the-world ADS stream with the given bearer token
// ("" for none) and sends one Listener request.
func ads(t *testing.T, addr, tok, ns string, names ...string) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, context.CancelFunc) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if tok != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = stream.Send(&discoveryv3.DiscoveryRequest{
		Node:    &corev3.Node{Id: "ballast~client." + ns},
		TypeUrl: resourcev3.ListenerType, ResourceNames: names,
	})
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return stream, cancel
}

func listenerNames(t *testing.T, resp *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.Resources {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l.Name)
	}
	slices.Sort(out)
	return out
}

// TestAuthenticatedXDS is issue 14's promise for xDS, against a real
// kube-apiserver and real ServiceAccount tokens: no token and a token for
// another audience are refused with Unauthenticated and a message saying
// what is wanted; a client of namespace team-a reads its own Services and
// the ones exported to it, and never team-b's others, whether it names
// them or asks for every sidecar listener; the refusal of a named one is
// counted; a client of ballast-system reads everything.
func TestAuthenticatedXDS(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("team-a", "greeter", "10.96.0.10", nil))
	reg.Set(service("team-b", "ledger", "10.96.0.11", nil))
	reg.Set(service("team-b", "catalog", "10.96.0.12", map[string]string{xds.ExportAnnotation: "*"}))
	reg.Set(service("team-c", "audit", "10.96.0.13", map[string]string{xds.ExportAnnotation: "team-b, team-d"}))
	addr, httpAddr := serveAuthenticated(t, reg)

	refused := []struct {
		name, token, want string
	}{
		{"no token", "", "no credentials"},
		{"wrong audience", token(t, "team-a", "some-other-audience"), `audience "ballast-control"`},
		{"not a token", "not-a-jwt", "token refused"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			stream, cancel := ads(t, addr, tc.token, "team-a", "greeter.team-a:50051")
			defer cancel()
			_, err := stream.Recv()
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("Recv = %v; want Unauthenticated saying %q", err, tc.want)
			}
		})
	}

	good := token(t, "team-a", "ballast-control")
	reads := []struct {
		name  string
		token string
		ns    string
		ask   []string // nil: the wildcard a sidecar sends
		want  []string
	}{
		{"own namespace by name", good, "team-a", []string{"greeter.team-a:50051"}, []string{"greeter.team-a:50051"}},
		{"another namespace's by name", good, "team-a",
			[]string{"greeter.team-a:50051", "ledger.team-b:50051", "catalog.team-b:50051", "audit.team-c:50051"},
			[]string{"catalog.team-b:50051", "greeter.team-a:50051"}},
		{"sidecar listeners", good, "team-a", nil, []string{"10.96.0.10:50051", "10.96.0.12:50051"}},
		{"sidecar listeners exported to the list", token(t, "team-b", "ballast-control"), "team-b", nil,
			[]string{"10.96.0.11:50051", "10.96.0.12:50051", "10.96.0.13:50051"}},
		{"ballast-system reads all", token(t, "ballast-system", "ballast-control"), "ballast-system", nil,
			[]string{"10.96.0.10:50051", "10.96.0.11:50051", "10.96.0.12:50051", "10.96.0.13:50051"}},
	}
	for _, tc := range reads {
		t.Run(tc.name, func(t *testing.T) {
			stream, cancel := ads(t, addr, tc.token, tc.ns, tc.ask...)
			defer cancel()
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if got := listenerNames(t, resp); !slices.Equal(got, tc.want) {
				t.Fatalf("listeners %q; want %q", got, tc.want)
			}
		})
	}

	// The two names team-a asked for above and may not read were counted.
	body := scrape(t, httpAddr)
	if want := `ballast_xds_forbidden_requests_total{type="listener"} 2`; !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, grep(body, "ballast_xds_"))
	}
	for _, want := range []string{`ballast_xds_auth_failures_total{reason="no_token"} 1`, `ballast_xds_auth_failures_total{reason="refused"} 2`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(body, "ballast_xds_"))
		}
	}
}

// TestSidecarClientAuthenticates: the sidecar's xDS client sends the
// token in its token file, read again for every stream, and learns its
// namespace's sidecar listeners and not another's.
func TestSidecarClientAuthenticates(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("shop", "cart", "10.96.1.10", nil))
	reg.Set(service("bank", "vault", "10.96.1.11", nil))
	addr, _ := serveAuthenticated(t, reg)

	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token(t, "shop", "ballast-control")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{
		Server: addr, Node: client.Node{ID: "ballast~sidecar.shop"}, SidecarListeners: true, TokenFile: file,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for !c.SidecarListenersSynced() {
		if time.Now().After(deadline) {
			t.Fatal("the sidecar client never got its listeners")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok := c.Target(netip.MustParseAddrPort("10.96.1.10:50051")); !ok {
		t.Error("shop's own Service is not known to its sidecar")
	}
	if target, ok := c.Target(netip.MustParseAddrPort("10.96.1.11:50051")); ok {
		t.Errorf("bank's Service is known to shop's sidecar as %s", target)
	}
}

// scrape returns the control plane's /metrics page.
func scrape(t *testing.T, httpAddr string) string {
	t.Helper()
	res, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestExportReachesSubscribedClients: annotating a Service to export it
// sends it to the sidecars of the namespaces it now reaches, on the
// stream they already have, and removing the annotation takes it away,
// though no resource of the Service changed.
func TestExportReachesSubscribedClients(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(service("front", "web", "10.96.2.10", nil))
	reg.Set(service("back", "orders", "10.96.2.11", nil))
	addr, _ := serveAuthenticated(t, reg)
	stream, cancel := ads(t, addr, token(t, "front", "ballast-control"), "front")
	defer cancel()
	steps := []struct {
		name   string
		export map[string]string
		want   []string
	}{
		{"private", nil, []string{"10.96.2.10:50051"}},
		{"exported to front", map[string]string{xds.ExportAnnotation: "front"}, []string{"10.96.2.10:50051", "10.96.2.11:50051"}},
		{"private again", map[string]string{}, []string{"10.96.2.10:50051"}},
	}
	for i, s := range steps {
		if i > 0 {
			reg.Set(service("back", "orders", "10.96.2.11", s.export))
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := listenerNames(t, resp); !slices.Equal(got, s.want) {
			t.Fatalf("%s: listeners %q; want %q", s.name, got, s.want)
		}
		err = stream.Send(&discoveryv3.DiscoveryRequest{
			Node: &corev3.Node{Id: "ballast~client.front"}, TypeUrl: resourcev3.ListenerType,
			VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
