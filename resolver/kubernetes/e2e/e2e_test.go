// Package e2e_test runs the kubernetes:/// resolver end to end: a real
// kube-apiserver and etcd (internal/testapi), the discovery/kube source on
// them, a real grpc-go ClientConn, and greeter pods on 127.0.0.1 named by
// EndpointSlices.
package e2e_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	_ "github.com/ballast-dev/ballast/balancer/p2c"
	"github.com/ballast-dev/ballast/discovery/kube"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/internal/testapi"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

// env is the one API server shared by this package's tests; each test works
// in a namespace of its own.
var env *testapi.Env

func TestMain(m *testing.M) {
	testapi.Main(m, "resolver/kubernetes/e2e", &env)
}

const waitTimeout = 60 * time.Second

func ptr[T any](v T) *T { return &v }

// The API server refuses loopback addresses in EndpointSlices, so each pod
// is published under a TEST-NET-1 address (RFC 5737, never routed) with its
// real port, and the client's dialer maps those back to 127.0.0.1: calls
// leave only on loopback, and anything else is refused, not dialled.
var testNet = netip.MustParsePrefix("192.0.2.0/24")

func publicAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}) }

func loopbackDialer(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !testNet.Contains(ap.Addr()) {
		return nil, fmt.Errorf("test dialer: refusing %s: not a TEST-NET-1 pod address", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String())
}

// slice is the EndpointSlice of pod i: its own slice, because each greeter
// listens on a port of its own.
func slice(ns string, i int, p *greetertest.Pod, ready, serving, terminating bool) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: "greeter-" + p.Name,
			Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{publicAddr(i).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: ptr(int32(p.Addr.Port())), Protocol: ptr(corev1.ProtocolTCP)}},
	}
}

func sayHello(conn *grpc.ClientConn) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "e2e"})
	return r.GetMessage(), err
}

// TestResolverFollowsEndpointSlices walks one Service through the changes
// a rollout makes and checks where calls go at each step.
func TestResolverFollowsEndpointSlices(t *testing.T) {
	// Registered first, so it runs last: after the pods have stopped. The
	// shared API client's HTTP/2 connection may be opened during the test;
	// it belongs to the package, not to the code under test.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, ignore, goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"))
	})
	ctx := context.Background()
	ns := env.Namespace(t, "resolver")
	api := env.Client
	pods := []*greetertest.Pod{
		greetertest.Start(t, "a", greetertest.Options{}),
		greetertest.Start(t, "b", greetertest.Options{}),
		greetertest.Start(t, "c", greetertest.Options{}),
	}
	if _, err := api.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "greeter"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "grpc", Port: 50051, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, p := range pods {
		if _, err := api.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(ns, i, p, true, true, false), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	runCtx, stop := context.WithCancel(ctx)
	cluster, err := kubernetes.StartCluster(runCtx, env.Config, kube.Options{Namespace: ns})
	if err != nil {
		stop()
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("kubernetes:///greeter."+ns+":grpc", cluster.DialOption(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(loopbackDialer),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"ballast_p2c":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	// Teardown order: the connection, then the source (and its goroutines).
	defer func() {
		conn.Close()
		stop()
		if err := cluster.Wait(); err != nil {
			t.Errorf("discovery source: %v", err)
		}
	}()

	t.Run("every ready pod gets calls", func(t *testing.T) {
		greetertest.Eventually(t, waitTimeout, func() bool {
			_, err := sayHello(conn)
			return err == nil && pods[0].Calls() > 0 && pods[1].Calls() > 0 && pods[2].Calls() > 0
		}, "not every pod got a call")
	})

	t.Run("a terminating pod gets no new calls", func(t *testing.T) {
		if _, err := api.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(ns, 2, pods[2], false, true, true), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		greetertest.Eventually(t, waitTimeout, func() bool { return pods[2].OpenConns() == 0 },
			"the client kept its connection to the terminating pod")
		before := pods[2].Calls()
		counts := greetertest.Spread(t, conn, 100, 2)
		if pods[2].Calls() != before {
			t.Fatalf("the terminating pod got %d new calls (%v)", pods[2].Calls()-before, counts)
		}
	})

	t.Run("no routable endpoint fails fast and says so", func(t *testing.T) {
		for i, p := range pods {
			if _, err := api.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(ns, i, p, false, false, true), metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		want := "no ready endpoints for greeter." + ns + ":grpc"
		greetertest.Eventually(t, waitTimeout, func() bool {
			_, err := sayHello(conn)
			return status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), want)
		}, "calls did not fail with "+want)
	})

	t.Run("ready again", func(t *testing.T) {
		if _, err := api.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(ns, 1, pods[1], true, true, false), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		greetertest.Eventually(t, waitTimeout, func() bool {
			msg, err := sayHello(conn)
			return err == nil && strings.Contains(msg, "hostname:b,")
		}, "calls did not reach the pod that became ready")
	})

	t.Run("unknown service", func(t *testing.T) {
		other, err := grpc.NewClient("kubernetes:///nope."+ns+":grpc", cluster.DialOption(),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(loopbackDialer))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		_, err = sayHello(other)
		if want := "service " + ns + "/nope not found"; status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) {
			t.Fatalf("call to an unknown service: %v; want Unavailable containing %q", err, want)
		}
	})
}
