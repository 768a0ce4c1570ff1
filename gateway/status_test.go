package gateway_test

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
	"log/slog"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/discovery/kube"
	"github.com/ballast-dev/ballast/gateway"
	"github.com/ballast-dev/ballast/internal/freeport"
	"github.com/ballast-dev/ballast/internal/testapi"
)

var env *testapi.Env

func TestMain(m *testing.M) {
	testapi.Main(m, "gateway", &env)
}

const waitTimeout = 60 * time.Second

func ptr[T any](v T) *T { return &v }

// The gateway against a real API server: a GatewayClass of
// ballast.dev/gateway, a Gateway with a listener for each condition the
// spec asks for, GRPCRoutes for each route condition, and what the
// gateway writes to each object's status; the listeners that are valid
// serve calls (h2c and TLS with the Secret from the API) while the others
// say why they do not. Editing the Gateway moves observedGeneration.
func TestStatus(t *testing.T) {
	ctx := context.Background()
	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{
		Paths: []string{"../deploy/control/gateway-api", "../deploy/gateway/gateway-api"}}); err != nil {
		t.Fatal(err)
	}
	gc, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns, other := env.Namespace(t, "gateway"), env.Namespace(t, "gateway")
	caPool, certPEM, keyPEM := testCert(t, "grpc.example.com")

	// The greeters' endpoints are on loopback, which the API server
	// refuses: they come from a file, beside the cluster's objects.
	dir := t.TempDir()
	greetertest.WriteService(t, dir, ns, "greeter", greetertest.Serve(t, greetertest.Names("greeter", 2)...))

	secret := func(ns, name string, data map[string][]byte) {
		t.Helper()
		if _, err := env.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
			Type: corev1.SecretTypeTLS, Data: data}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	secret(ns, "good", map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM})
	secret(ns, "malformed", map[string][]byte{"tls.crt": []byte("not a certificate"), "tls.key": []byte("nor a key")})
	secret(other, "foreign", map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM})
	// A ReferenceGrant in other lets the Gateways of ns use its Secret
	// "granted" (and nothing else there: "foreign" stays refused).
	secret(other, "granted", map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM})
	if _, err := gc.GatewayV1().ReferenceGrants(other).Create(ctx, &gatewayv1.ReferenceGrant{ObjectMeta: metav1.ObjectMeta{Name: "gateways-to-granted"},
		Spec: gatewayv1.ReferenceGrantSpec{
			From: []gatewayv1.ReferenceGrantFrom{{Group: gatewayv1.GroupName, Kind: "Gateway", Namespace: gatewayv1.Namespace(ns)}},
			To:   []gatewayv1.ReferenceGrantTo{{Group: "", Kind: "Secret", Name: ptr(gatewayv1.ObjectName("granted"))}},
		}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	className := gatewayv1.ObjectName(ns) // classes are cluster-scoped: one per test
	class, err := gc.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: string(className)},
		Spec: gatewayv1.GatewayClassSpec{ControllerName: gateway.ControllerName}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		gc.GatewayV1().GatewayClasses().Delete(context.Background(), class.Name, metav1.DeleteOptions{})
	})

	ports := freePorts(t, 9)
	https := func(name string, port int, secretNS *gatewayv1.Namespace, secret string) gatewayv1.Listener {
		return gatewayv1.Listener{Name: gatewayv1.SectionName(name), Protocol: gatewayv1.HTTPSProtocolType, Port: gatewayv1.PortNumber(port),
			TLS: &gatewayv1.ListenerTLSConfig{CertificateRefs: []gatewayv1.SecretObjectReference{{Name: gatewayv1.ObjectName(secret), Namespace: secretNS}}}}
	}
	okTLS := https("https", ports[1], nil, "good")
	okTLS.Hostname = ptr(gatewayv1.Hostname("grpc.example.com"))
	httpRouteOnly := gatewayv1.Listener{Name: "kinds", Protocol: gatewayv1.HTTPProtocolType, Port: gatewayv1.PortNumber(ports[7]),
		AllowedRoutes: &gatewayv1.AllowedRoutes{Kinds: []gatewayv1.RouteGroupKind{{Kind: "HTTPRoute"}}}}
	gw, err := gc.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "edge"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: className, Listeners: []gatewayv1.Listener{
			{Name: "http", Protocol: gatewayv1.HTTPProtocolType, Port: gatewayv1.PortNumber(ports[0])},
			okTLS,
			https("missing", ports[2], nil, "no-such-secret"),
			https("malformed", ports[3], nil, "malformed"),
			https("foreign", ports[4], ptr(gatewayv1.Namespace(other)), "foreign"),
			{Name: "conflict-http", Protocol: gatewayv1.HTTPProtocolType, Port: gatewayv1.PortNumber(ports[5])},
			https("conflict-https", ports[5], nil, "good"),
			{Name: "tcp", Protocol: gatewayv1.TCPProtocolType, Port: gatewayv1.PortNumber(ports[6])},
			httpRouteOnly,
			https("granted", ports[8], ptr(gatewayv1.Namespace(other)), "granted"),
		}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	route := func(ns, name string, hostnames []gatewayv1.Hostname, section string, backend string) {
		t.Helper()
		parent := gatewayv1.ParentReference{Name: "edge", Namespace: ptr(gatewayv1.Namespace(gw.Namespace))}
		if section != "" {
			parent.SectionName = ptr(gatewayv1.SectionName(section))
		}
		_, err := gc.GatewayV1().GRPCRoutes(ns).Create(ctx, &gatewayv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: gatewayv1.GRPCRouteSpec{
				CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{parent}},
				Hostnames:       hostnames,
				Rules: []gatewayv1.GRPCRouteRule{{BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
					BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(backend), Port: ptr(gatewayv1.PortNumber(50051))}}}}}},
			}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	route(ns, "greeter", nil, "", "greeter")
	route(ns, "no-section", nil, "nope", "greeter")
	route(other, "other-namespace", nil, "http", "greeter")
	route(ns, "other-host", []gatewayv1.Hostname{"grpc.example.org"}, "https", "greeter")
	route(ns, "no-backend", nil, "http", "no-such-service")

	runGateway(t, dir, ns)

	t.Run("GatewayClass Accepted", func(t *testing.T) {
		eventually(t, "the class is accepted", func() string {
			c, err := gc.GatewayV1().GatewayClasses().Get(ctx, class.Name, metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			return checkCondition(c.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted", c.Generation)
		})
	})

	listener := func(name string) func() (*gatewayv1.ListenerStatus, int64, error) {
		return func() (*gatewayv1.ListenerStatus, int64, error) {
			g, err := gc.GatewayV1().Gateways(ns).Get(ctx, "edge", metav1.GetOptions{})
			if err != nil {
				return nil, 0, err
			}
			for i := range g.Status.Listeners {
				if string(g.Status.Listeners[i].Name) == name {
					return &g.Status.Listeners[i], g.Generation, nil
				}
			}
			return nil, 0, fmt.Errorf("no status of listener %s yet", name)
		}
	}
	type cond struct {
		typ    string
		status metav1.ConditionStatus
		reason string
	}
	listenerTests := []struct {
		listener string
		want     []cond
		attached int32
		kinds    int
	}{
		{"http", []cond{{"Accepted", "True", "Accepted"}, {"Programmed", "True", "Programmed"}, {"ResolvedRefs", "True", "ResolvedRefs"}, {"Conflicted", "False", "NoConflicts"}}, 2, 1},
		{"https", []cond{{"Programmed", "True", "Programmed"}, {"ResolvedRefs", "True", "ResolvedRefs"}}, 1, 1},
		{"missing", []cond{{"ResolvedRefs", "False", "InvalidCertificateRef"}, {"Programmed", "False", "Invalid"}}, 0, 1},
		{"malformed", []cond{{"ResolvedRefs", "False", "InvalidCertificateRef"}, {"Programmed", "False", "Invalid"}}, 0, 1},
		{"foreign", []cond{{"ResolvedRefs", "False", "RefNotPermitted"}, {"Programmed", "False", "Invalid"}}, 0, 1},
		{"granted", []cond{{"ResolvedRefs", "True", "ResolvedRefs"}, {"Programmed", "True", "Programmed"}}, 1, 1},
		{"conflict-http", []cond{{"Conflicted", "True", "ProtocolConflict"}, {"Programmed", "False", "Invalid"}}, 0, 1},
		{"conflict-https", []cond{{"Conflicted", "True", "ProtocolConflict"}, {"Programmed", "False", "Invalid"}}, 0, 1},
		{"tcp", []cond{{"Accepted", "False", "UnsupportedProtocol"}, {"Programmed", "False", "Invalid"}}, 0, 0},
		{"kinds", []cond{{"ResolvedRefs", "False", "InvalidRouteKinds"}, {"Programmed", "False", "Invalid"}}, 0, 0},
	}
	for _, tt := range listenerTests {
		t.Run("listener "+tt.listener, func(t *testing.T) {
			get := listener(tt.listener)
			eventually(t, "listener "+tt.listener+"'s status", func() string {
				l, gen, err := get()
				if err != nil {
					return err.Error()
				}
				for _, c := range tt.want {
					if msg := checkCondition(l.Conditions, c.typ, c.status, c.reason, gen); msg != "" {
						return msg
					}
				}
				if l.AttachedRoutes != tt.attached {
					return fmt.Sprintf("attachedRoutes %d, want %d", l.AttachedRoutes, tt.attached)
				}
				if len(l.SupportedKinds) != tt.kinds || (tt.kinds == 1 && l.SupportedKinds[0].Kind != "GRPCRoute") {
					return fmt.Sprintf("supportedKinds %v, want GRPCRoute %d times", l.SupportedKinds, tt.kinds)
				}
				return ""
			})
		})
	}

	t.Run("Gateway Accepted, Programmed, addresses", func(t *testing.T) {
		eventually(t, "the Gateway's status", func() string {
			g, err := gc.GatewayV1().Gateways(ns).Get(ctx, "edge", metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			if msg := checkCondition(g.Status.Conditions, "Accepted", "True", "ListenersNotValid", g.Generation); msg != "" {
				return msg
			}
			if msg := checkCondition(g.Status.Conditions, "Programmed", "True", "Programmed", g.Generation); msg != "" {
				return msg
			}
			if len(g.Status.Addresses) != 1 || g.Status.Addresses[0].Value != "127.0.0.1" {
				return fmt.Sprintf("addresses %v, want 127.0.0.1", g.Status.Addresses)
			}
			return ""
		})
	})

	routeTests := []struct {
		ns, name string
		want     []cond
	}{
		{ns, "greeter", []cond{{"Accepted", "True", "Accepted"}, {"ResolvedRefs", "True", "ResolvedRefs"}}},
		{ns, "no-section", []cond{{"Accepted", "False", "NoMatchingParent"}}},
		{other, "other-namespace", []cond{{"Accepted", "False", "NotAllowedByListeners"}}},
		{ns, "other-host", []cond{{"Accepted", "False", "NoMatchingListenerHostname"}}},
		{ns, "no-backend", []cond{{"Accepted", "True", "Accepted"}, {"ResolvedRefs", "False", "BackendNotFound"}}},
	}
	for _, tt := range routeTests {
		t.Run("route "+tt.name, func(t *testing.T) {
			eventually(t, "route "+tt.name+"'s parent status", func() string {
				rt, err := gc.GatewayV1().GRPCRoutes(tt.ns).Get(ctx, tt.name, metav1.GetOptions{})
				if err != nil {
					return err.Error()
				}
				i := slices.IndexFunc(rt.Status.Parents, func(p gatewayv1.RouteParentStatus) bool { return p.ControllerName == gateway.ControllerName })
				if i < 0 {
					return "no parent status of " + string(gateway.ControllerName)
				}
				for _, c := range tt.want {
					if msg := checkCondition(rt.Status.Parents[i].Conditions, c.typ, c.status, c.reason, rt.Generation); msg != "" {
						return msg
					}
				}
				return ""
			})
		})
	}

	t.Run("valid listeners serve", func(t *testing.T) {
		h2c, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", ports[0]), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer h2c.Close()
		creds := credentials.NewTLS(&tls.Config{RootCAs: caPool, ServerName: "grpc.example.com"})
		viaTLS, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", ports[1]), grpc.WithTransportCredentials(creds), grpc.WithAuthority("grpc.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		defer viaTLS.Close()
		for name, conn := range map[string]*grpc.ClientConn{"h2c": h2c, "tls": viaTLS} {
			eventually(t, name+" call through the gateway", func() string {
				c, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if _, err := pb.NewGreeterClient(conn).SayHello(c, &pb.HelloRequest{Name: "status"}); err != nil {
					return err.Error()
				}
				return ""
			})
		}
		for _, p := range []int{ports[2], ports[3], ports[4], ports[5]} {
			if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				c.Close()
				t.Errorf("port %d of an invalid listener accepts connections", p)
			}
		}
	})

	t.Run("a Secret turning malformed fails its listener alone", func(t *testing.T) {
		// The https listener's Secret is replaced by garbage: the listener
		// says so (ResolvedRefs False, Programmed False) while the h2c
		// listener keeps serving calls on a connection made before and on
		// a new one; the Secret put right serves TLS again.
		sec, err := env.Client.CoreV1().Secrets(ns).Get(ctx, "good", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		good := sec.DeepCopy()
		h2c, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", ports[0]), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer h2c.Close()
		call := func(conn *grpc.ClientConn) string {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if _, err := pb.NewGreeterClient(conn).SayHello(c, &pb.HelloRequest{Name: "status"}); err != nil {
				return err.Error()
			}
			return ""
		}
		eventually(t, "an h2c call before the Secret breaks", func() string { return call(h2c) })

		sec.Data = map[string][]byte{"tls.crt": []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"), "tls.key": []byte("no key")}
		if _, err := env.Client.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		get := listener("https")
		eventually(t, "the https listener says its Secret is malformed", func() string {
			l, gen, err := get()
			if err != nil {
				return err.Error()
			}
			if msg := checkCondition(l.Conditions, "ResolvedRefs", "False", "InvalidCertificateRef", gen); msg != "" {
				return msg
			}
			return checkCondition(l.Conditions, "Programmed", "False", "Invalid", gen)
		})
		if msg := call(h2c); msg != "" {
			t.Fatalf("the h2c listener's open connection: %s", msg)
		}
		fresh, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", ports[0]), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer fresh.Close()
		if msg := call(fresh); msg != "" {
			t.Fatalf("the h2c listener, a new connection: %s", msg)
		}
		eventually(t, "the http listener stays programmed", func() string {
			l, gen, err := listener("http")()
			if err != nil {
				return err.Error()
			}
			return checkCondition(l.Conditions, "Programmed", "True", "Programmed", gen)
		})

		cur, err := env.Client.CoreV1().Secrets(ns).Get(ctx, "good", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Data = good.Data
		if _, err := env.Client.CoreV1().Secrets(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		creds := credentials.NewTLS(&tls.Config{RootCAs: caPool, ServerName: "grpc.example.com"})
		viaTLS, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", ports[1]), grpc.WithTransportCredentials(creds), grpc.WithAuthority("grpc.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		defer viaTLS.Close()
		eventually(t, "TLS serves again once the Secret is put right", func() string { return call(viaTLS) })
	})

	t.Run("observedGeneration follows an edit", func(t *testing.T) {
		// The controller writes status meanwhile: an update may conflict.
		var g *gatewayv1.Gateway
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := gc.GatewayV1().Gateways(ns).Get(ctx, "edge", metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Spec.Listeners = slices.DeleteFunc(cur.Spec.Listeners, func(l gatewayv1.Listener) bool { return l.Name == "tcp" })
			g, err = gc.GatewayV1().Gateways(ns).Update(ctx, cur, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "status observes the new generation", func() string {
			cur, err := gc.GatewayV1().Gateways(ns).Get(ctx, "edge", metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			if len(cur.Status.Listeners) != len(g.Spec.Listeners) {
				return fmt.Sprintf("%d listener statuses, want %d", len(cur.Status.Listeners), len(g.Spec.Listeners))
			}
			return checkCondition(cur.Status.Conditions, "Programmed", "True", "Programmed", g.Generation)
		})
	})
}

// runGateway runs what `ballast gateway --kubeconfig --files DIR
// --gateway NS/edge --host 127.0.0.1` runs, until the test ends.
func runGateway(t *testing.T, dir, ns string) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	reg := discovery.NewRegistry()
	fsrc := files.New(dir, reg, files.Options{Logger: log})
	if err := fsrc.Load(); err != nil {
		t.Fatal(err)
	}
	ksrc := kube.New(env.Config, reg, kube.Options{Routes: true, Gateways: true, Logger: log})
	status := gateway.NewStatusWriter(env.Config, gateway.StatusWriterOptions{Log: log})
	ip := gatewayv1.IPAddressType
	gw, err := gateway.New(gateway.Options{Registry: reg, Gateway: &discovery.Key{Namespace: ns, Name: "edge"}, Host: "127.0.0.1",
		Addresses: []gatewayv1.GatewayStatusAddress{{Type: &ip, Value: "127.0.0.1"}}, DrainTimeout: time.Second,
		Status: status.Update, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		if err := ksrc.Run(ctx); err != nil {
			t.Errorf("kube source: %v", err)
		}
	})
	wg.Go(func() { status.Run(ctx) })
	wg.Go(func() {
		for !ksrc.HasSynced() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		gw.Run(ctx)
	})
}

// checkCondition is "" when conds has a condition of type typ with the
// given status and reason observing generation gen, else what differs.
func checkCondition(conds []metav1.Condition, typ string, status metav1.ConditionStatus, reason string, gen int64) string {
	c := meta.FindStatusCondition(conds, typ)
	switch {
	case c == nil:
		return fmt.Sprintf("no condition %s in %v", typ, conds)
	case c.Status != status || c.Reason != reason:
		return fmt.Sprintf("%s is %s (%s: %s), want %s (%s)", typ, c.Status, c.Reason, c.Message, status, reason)
	case c.ObservedGeneration != gen:
		return fmt.Sprintf("%s observes generation %d, want %d", typ, c.ObservedGeneration, gen)
	case c.LastTransitionTime.IsZero():
		return fmt.Sprintf("%s has no lastTransitionTime", typ)
	}
	return ""
}

// eventually polls check until it returns "", failing with its last
// answer after waitTimeout.
func eventually(t *testing.T, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s: %s", what, msg)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
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

// testCert is a CA pool and a certificate it signed for host, with its
// key, PEM encoded.
func testCert(t *testing.T, host string) (*x509.CertPool, []byte, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ballast test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host},
		DNSNames: []string{host}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}
