package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestXDSAuthentication is issue 14's promise on the dev cluster: the
// control plane of deploy/control as written serves xDS over TLS with the
// certificate it issues itself, whose CA it has published in every
// namespace (the ConfigMap ballast-control-ca.crt, read here from the mesh
// namespace as a pod mounts it). Given real ServiceAccount tokens the API
// server issues, it refuses a stream without a token or with one for
// another audience (UNAUTHENTICATED, saying what it wants), and sends a
// namespace's client its own Services and not another namespace's: a
// client of the mesh namespace gets native-tools-2.mesh's listener and
// not default's kubernetes Service's, a client of default the reverse. A
// plaintext client gets nothing. The injected sidecars of the other tests
// are this control plane's authenticated TLS clients (meshArticle's pods
// are ready only once theirs has its config).
func TestXDSAuthentication(t *testing.T) {
	ctx := ctxFor(t, 5*time.Minute)
	meshArticle(t, ctx)
	addr, err := cluster.ExposeService(ctx, "ballast-system", "ballast-control", 15010)
	if err != nil {
		t.Fatal(err)
	}
	// Published before the injected pods could start: they mount it.
	ca, err := cluster.Client.CoreV1().ConfigMaps(meshNS).Get(ctx, "ballast-control-ca.crt", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the control plane's CA is not published in %s: %v", meshNS, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(ca.Data["ca.crt"])) {
		t.Fatalf("ConfigMap ballast-control-ca.crt holds no CA: %q", ca.Data)
	}
	// Dialled through the relay on loopback, verified as the name pods dial.
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "ballast-control.ballast-system.svc"})
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	plain, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	if s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(plain).StreamAggregatedResources(pctx); err == nil {
		if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("plaintext client: Recv = %v; want Unavailable", err)
		}
	}
	token := func(ns, audience string) string {
		t.Helper()
		exp := int64(600)
		tr, err := cluster.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "default", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("token of %s/default for %s: %v", ns, audience, err)
		}
		return tr.Status.Token
	}
	const own, other = "native-tools-2.mesh:50051", "kubernetes.default:443"
	tests := []struct {
		name, token, ns string
		wantCode        codes.Code
		wantMsg         string
		want            []string
	}{
		{"no token", "", meshNS, codes.Unauthenticated, "no credentials", nil},
		{"token for another audience", token(meshNS, "not-ballast"), meshNS, codes.Unauthenticated, `audience "ballast-control"`, nil},
		{"mesh client", token(meshNS, "ballast-control"), meshNS, codes.OK, "", []string{own}},
		{"default client", token("default", "ballast-control"), "default", codes.OK, "", []string{other}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if tc.token != "" {
				sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+tc.token)
			}
			stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
			if err != nil {
				t.Fatal(err)
			}
			stream.Send(&discoveryv3.DiscoveryRequest{
				Node: &corev3.Node{Id: "ballast~e2e." + tc.ns}, TypeUrl: resourcev3.ListenerType, ResourceNames: []string{own, other},
			})
			resp, err := stream.Recv()
			if status.Code(err) != tc.wantCode || !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Fatalf("Recv: %v; want %v saying %q", err, tc.wantCode, tc.wantMsg)
			}
			if err != nil {
				return
			}
			var got []string
			for _, a := range resp.Resources {
				l := &listenerv3.Listener{}
				if err := a.UnmarshalTo(l); err != nil {
					t.Fatal(err)
				}
				got = append(got, l.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("asked for %s and %s, was sent %q; want %q", own, other, got, tc.want)
			}
		})
	}
}
