package kubernetes_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"

	_ "github.com/ballast-dev/ballast/balancer/p2c"
	_ "github.com/ballast-dev/ballast/balancer/peakewma"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

const target = "kubernetes:///greeter.default:50051"

var greeterKey = discovery.Key{Namespace: "default", Name: "greeter"}

// policies are the balancers a kubernetes:/// client may run, as service
// configs; "" is grpc-go's default, pick_first.
var policies = []struct{ name, lbConfig string }{
	{"round_robin", `{"round_robin":{}}`},
	{"ballast_p2c", `{"ballast_p2c":{}}`},
	{"ballast_peak_ewma", `{"ballast_peak_ewma":{"decay":"1s","defaultRtt":"1ms"}}`},
}

// pod is one endpoint of the greeter Service as the registry holds it.
type pod struct {
	*greetertest.Pod
	ready, serving, terminating bool
}

// greeterService is the Service "default/greeter" with port grpc=50051 (and
// metrics=9090, with no endpoints) served by pods.
func greeterService(pods ...pod) *discovery.Service {
	var eps []discovery.Endpoint
	for _, p := range pods {
		eps = append(eps, discovery.Endpoint{
			Address: p.Addr, Ready: p.ready, Serving: p.serving, Terminating: p.terminating,
			Zone: "zone-a", Pod: p.Name,
		})
	}
	return &discovery.Service{Key: greeterKey, Ports: []discovery.Port{
		{Name: "metrics", Port: 9090, Protocol: "TCP"},
		{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: eps},
	}}
}

func ready(p *greetertest.Pod) pod      { return pod{Pod: p, ready: true, serving: true} }
func notReady(p *greetertest.Pod) pod   { return pod{Pod: p} }
func draining(p *greetertest.Pod) pod   { return pod{Pod: p, serving: true, terminating: true} }
func terminated(p *greetertest.Pod) pod { return pod{Pod: p, terminating: true} }
func startPods(t *testing.T, n int) []*greetertest.Pod {
	pods := make([]*greetertest.Pod, n)
	for i := range pods {
		pods[i] = greetertest.Start(t, fmt.Sprintf("greeter-%d", i), greetertest.Options{})
	}
	return pods
}

func dial(t *testing.T, reg *discovery.Registry, target, lbConfig string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{kubernetes.WithRegistry(reg), grpc.WithTransportCredentials(insecure.NewCredentials())}
	if lbConfig != "" {
		opts = append(opts, grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[%s]}`, lbConfig)))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatalf("NewClient(%s): %v", target, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func sayHello(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: "test"})
	return err
}

// TestSpread: calls over one ClientConn reach every ready pod, evenly, one
// at a time (the article's client) and concurrently.
func TestSpread(t *testing.T) {
	const calls = 600
	// Bounds on the busiest pod's share over the mean, one call at a time
	// (workers=1) and concurrently. round_robin is exact. p2c one call at a
	// time sees no call outstanding and breaks the tie at random, so it
	// spreads like dice (about 1.15 at this count). Concurrently, and for
	// peak-EWMA always, the spread follows the pods' speed, which on a shared
	// machine differs; the bound left is P2C's own: a pod wins at most the
	// pairs it is drawn in, 2 of 3 on average (max/mean 2, plus 4 standard
	// deviations of the draw at this count: 2.3). Peak-EWMA may leave a pod
	// without a call in a run this short.
	const p2cBound = 2.3
	bounds := map[string][2]float64{
		"round_robin":       {1.05, 1.05},
		"ballast_p2c":       {1.3, p2cBound},
		"ballast_peak_ewma": {p2cBound, p2cBound},
	}
	for _, pol := range policies {
		for _, workers := range []int{1, 4} {
			t.Run(fmt.Sprintf("%s/workers=%d", pol.name, workers), func(t *testing.T) {
				pods := startPods(t, 3)
				reg := discovery.NewRegistry()
				reg.Set(greeterService(ready(pods[0]), ready(pods[1]), ready(pods[2])))
				conn := dial(t, reg, target, pol.lbConfig)
				conn.Connect()
				// Wait until every pod is connected, so the spread is the
				// policy's and not the order connections came up in.
				greetertest.Eventually(t, 10*time.Second, func() bool {
					return pods[0].OpenConns() > 0 && pods[1].OpenConns() > 0 && pods[2].OpenConns() > 0
				}, "the client did not connect to every pod")
				if pol.name != "ballast_peak_ewma" {
					// A pod that answered is READY in the client too.
					greetertest.Eventually(t, 10*time.Second, func() bool {
						return sayHello(conn) == nil && pods[0].Calls() > 0 && pods[1].Calls() > 0 && pods[2].Calls() > 0
					}, "not every pod got a call")
				}
				counts := greetertest.Spread(t, conn, calls, workers)
				ratio := greetertest.MaxOverMean(counts, 3)
				t.Logf("%v max/mean %.3f", counts, ratio)
				bound := bounds[pol.name][min(workers-1, 1)]
				if ratio > bound || (pol.name != "ballast_peak_ewma" && len(counts) != 3) {
					t.Fatalf("calls by pod %v: max/mean %.3f; want at most %.2f (and every pod, but for peak-EWMA)", counts, ratio, bound)
				}
			})
		}
	}
}

// TestEndpointLeavesAndReturns flips one pod out of the ready set (not
// ready, or terminating while still serving), checks it gets no new call,
// then flips it back and checks it gets calls again.
func TestEndpointLeavesAndReturns(t *testing.T) {
	for _, pol := range policies {
		for _, flip := range []struct {
			name string
			out  func(*greetertest.Pod) pod
		}{
			{"not ready", notReady},
			{"terminating", draining},
		} {
			t.Run(pol.name+"/"+flip.name, func(t *testing.T) {
				pods := startPods(t, 3)
				gone := pods[2]
				reg := discovery.NewRegistry()
				reg.Set(greeterService(ready(pods[0]), ready(pods[1]), ready(gone)))
				conn := dial(t, reg, target, pol.lbConfig)
				greetertest.Eventually(t, 10*time.Second, func() bool {
					return sayHello(conn) == nil && gone.Calls() > 0
				}, "the pod that will leave never got a call")

				reg.Set(greeterService(ready(pods[0]), ready(pods[1]), flip.out(gone)))
				// The client closes its connection once the endpoint is
				// gone from its state: no call can reach the pod after that.
				greetertest.Eventually(t, 10*time.Second, func() bool { return gone.OpenConns() == 0 },
					"the client kept its connection to the pod that left")
				before := gone.Calls()
				counts := greetertest.Spread(t, conn, 200, 4)
				if after := gone.Calls(); after != before || counts[gone.Name] != 0 {
					t.Fatalf("pod %s got %d new calls after it left (calls by pod %v)", gone.Name, after-before, counts)
				}

				reg.Set(greeterService(ready(pods[0]), ready(pods[1]), ready(gone)))
				greetertest.Eventually(t, 10*time.Second, func() bool {
					return sayHello(conn) == nil && gone.Calls() > before
				}, "the pod got no call after it became ready again")
			})
		}
	}
}

// TestPanicRouting: when every endpoint is marked not ready at once (as the
// node controller does when the Nodes' leases go stale after an API server
// outage), calls go on to the ones that are not terminating; once one is
// ready again, it alone takes the calls.
func TestPanicRouting(t *testing.T) {
	for _, pol := range policies {
		t.Run(pol.name, func(t *testing.T) {
			pods := startPods(t, 3)
			reg := discovery.NewRegistry()
			reg.Set(greeterService(ready(pods[0]), ready(pods[1]), ready(pods[2])))
			conn := dial(t, reg, target, pol.lbConfig)
			greetertest.Eventually(t, 10*time.Second, func() bool { return sayHello(conn) == nil },
				"the client never reached a pod")

			reg.Set(greeterService(notReady(pods[0]), notReady(pods[1]), terminated(pods[2])))
			greetertest.Eventually(t, 10*time.Second, func() bool { return pods[2].OpenConns() == 0 },
				"the client kept its connection to the terminating pod")
			counts := greetertest.Spread(t, conn, 200, 4)
			if counts[pods[0].Name]+counts[pods[1].Name] != 200 {
				t.Fatalf("with no pod ready, the not-ready ones got %v of 200 calls; want all", counts)
			}

			reg.Set(greeterService(ready(pods[0]), notReady(pods[1]), terminated(pods[2])))
			greetertest.Eventually(t, 10*time.Second, func() bool { return pods[1].OpenConns() == 0 },
				"the client kept its connection to the not-ready pod once another was ready")
			if counts := greetertest.Spread(t, conn, 100, 4); counts[pods[0].Name] != 100 {
				t.Fatalf("with one pod ready, calls by pod %v; want all 100 on %s", counts, pods[0].Name)
			}
		})
	}
}

// TestFailFast: a target that cannot be served fails calls at once with
// codes.Unavailable and a message that says what is missing.
func TestFailFast(t *testing.T) {
	pods := startPods(t, 1)
	for _, tc := range []struct {
		name, target string
		svc          *discovery.Service
		want         string
	}{
		{name: "unknown service", target: "kubernetes:///nope.default:50051", svc: greeterService(ready(pods[0])),
			want: "service default/nope not found"},
		{name: "unknown port", target: "kubernetes:///greeter.default:http", svc: greeterService(ready(pods[0])),
			want: `service default/greeter has no port "http" (ports: metrics=9090, grpc=50051)`},
		{name: "port left out of a multi-port service", target: "kubernetes:///greeter.default", svc: greeterService(ready(pods[0])),
			want: "service default/greeter has 2 ports; name one (metrics=9090, grpc=50051)"},
		{name: "only terminating endpoints", target: target, svc: greeterService(terminated(pods[0])),
			want: "no ready endpoints for greeter.default:50051"},
		{name: "only draining endpoints", target: "kubernetes:///greeter.default:grpc", svc: greeterService(draining(pods[0])),
			want: "no ready endpoints for greeter.default:grpc"},
		{name: "bad target", target: "kubernetes:///greeter.default.cluster:50051", svc: greeterService(ready(pods[0])),
			want: `kubernetes target "kubernetes:///greeter.default.cluster:50051": "greeter.default.cluster" is not <name>.<namespace>`},
	} {
		for _, pol := range append([]struct{ name, lbConfig string }{{"pick_first", ""}}, policies...) {
			t.Run(tc.name+"/"+pol.name, func(t *testing.T) {
				reg := discovery.NewRegistry()
				reg.Set(tc.svc)
				conn := dial(t, reg, tc.target, pol.lbConfig)
				err := sayHello(conn)
				if status.Code(err) != codes.Unavailable {
					t.Fatalf("call: %v; want code Unavailable", err)
				}
				// grpc-go's round_robin (endpointsharding) replaces the
				// resolver's message with "no children to pick from".
				if pol.name != "round_robin" && !strings.Contains(status.Convert(err).Message(), tc.want) {
					t.Fatalf("call: %v; want a message containing %q", err, tc.want)
				}
			})
		}
	}
}

// TestErrorsAfterGoodState: a Service that loses its endpoints, then
// disappears, then comes back, moves a working ClientConn through the same
// precise errors and back to serving.
func TestErrorsAfterGoodState(t *testing.T) {
	for _, pol := range append([]struct{ name, lbConfig string }{{"pick_first", ""}}, policies...) {
		t.Run(pol.name, func(t *testing.T) {
			pods := startPods(t, 2)
			reg := discovery.NewRegistry()
			reg.Set(greeterService(ready(pods[0]), ready(pods[1])))
			conn := dial(t, reg, target, pol.lbConfig)
			if err := sayHello(conn); err != nil {
				t.Fatal(err)
			}
			failsWith := func(want string) func() bool {
				return func() bool {
					err := sayHello(conn)
					return status.Code(err) == codes.Unavailable &&
						(pol.name == "round_robin" || strings.Contains(status.Convert(err).Message(), want))
				}
			}
			reg.Set(greeterService(terminated(pods[0]), draining(pods[1])))
			greetertest.Eventually(t, 10*time.Second, failsWith("no ready endpoints for greeter.default:50051"),
				"calls did not fail with the empty ready set")
			reg.Delete(greeterKey)
			greetertest.Eventually(t, 10*time.Second, failsWith("service default/greeter not found"),
				"calls did not fail with the deleted service")
			reg.Set(greeterService(ready(pods[1])))
			greetertest.Eventually(t, 10*time.Second, func() bool { return sayHello(conn) == nil },
				"calls did not recover when the service came back")
		})
	}
}
