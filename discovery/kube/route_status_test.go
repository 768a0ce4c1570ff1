package kube_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/control"
	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/discovery/kube"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/xds"
)

// routeSpec is GRPCRoute greeter's spec on Service greeter, with one rule
// "canary" of the given backendRefs and one "testers" sending x-user
// matching re to greeter-v2.
func routeSpec(t *testing.T, backendRefs, re string) gatewayv1.GRPCRouteSpec {
	t.Helper()
	var spec gatewayv1.GRPCRouteSpec
	y := `parentRefs: [{group: "", kind: Service, name: greeter, port: 50051}]
rules:
- name: canary
  backendRefs: ` + backendRefs + `
- name: testers
  matches: [{headers: [{name: x-user, type: RegularExpression, value: '` + re + `'}]}]
  backendRefs: [{name: greeter-v2, port: 50051}]
`
	if err := yaml.UnmarshalStrict([]byte(y), &spec); err != nil {
		t.Fatal(err)
	}
	return spec
}

// TestRouteStatusAndProxyless runs the control plane as `ballast control`
// assembles it (the Kubernetes source with routes, control.Serve, the
// status writer) against a real kube-apiserver with the Gateway API CRDs
// deploy/ installs, and a real grpc-go xDS client: the route's status is
// written under ballast.dev/mesh with the spec's reasons and
// observedGeneration; a canary edit reaches the client; a missing backend
// is ResolvedRefs False naming its rule, and its share fails UNAVAILABLE;
// an invalid edit is Accepted False naming rule and field while the
// client keeps the last good route.
func TestRouteStatusAndProxyless(t *testing.T) {
	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{Paths: []string{"../../deploy/control/gateway-api"}}); err != nil {
		t.Fatalf("install the Gateway API CRDs of deploy/: %v", err)
	}
	ns := env.Namespace(t, "discovery")
	dir := t.TempDir()
	greetertest.WriteService(t, dir, ns, "greeter", greetertest.Serve(t, "greeter-v1-0"))
	greetertest.WriteService(t, dir, ns, "greeter-v2", greetertest.Serve(t, "greeter-v2-0"))
	gc, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	routes := gc.GatewayV1().GRPCRoutes(ns)
	_, err = routes.Create(context.Background(), &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Name: "greeter", Namespace: ns},
		Spec:       routeSpec(t, "[{name: greeter, port: 50051, weight: 1}, {name: greeter-v2, port: 50051, weight: 1}]", "tester-[0-9]+"),
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// The control plane, as controlcmd assembles it.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := discovery.NewRegistry()
	if err := files.New(dir, reg, files.Options{Logger: log}).Load(); err != nil {
		t.Fatal(err)
	}
	src := kube.New(env.Config, reg, kube.Options{Namespace: ns, Logger: log, Routes: true})
	writer := kube.NewStatusWriter(env.Config, reg, kube.StatusOptions{LeaseNamespace: ns, Identity: "test", Synced: src.HasSynced, Logger: log})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { src.Run(ctx) })
	wg.Go(func() { writer.Run(ctx) })
	wg.Go(func() {
		control.Serve(ctx, control.Config{Registry: reg, Synced: src.HasSynced, XDS: lis, Log: log, DrainTimeout: time.Second})
	})

	bs, err := xds.Bootstrap{Server: lis.Addr().String(), Pod: "client-0", Namespace: ns, Zone: "zone-a"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bs)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(fmt.Sprintf("xds:///greeter.%s:50051", ns), grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	// conditions waits until the route's Ballast parent status is at
	// generation gen and check passes.
	conditions := func(what string, gen int64, check func(accepted, resolved metav1.Condition) error) {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for {
			err := fmt.Errorf("no status under %s", discovery.ControllerName)
			got, gerr := routes.Get(context.Background(), "greeter", metav1.GetOptions{})
			if gerr != nil {
				t.Fatal(gerr)
			}
			for _, p := range got.Status.Parents {
				if p.ControllerName != discovery.ControllerName || string(p.ParentRef.Name) != "greeter" || len(p.Conditions) != 2 {
					continue
				}
				acc, res := p.Conditions[0], p.Conditions[1]
				if acc.ObservedGeneration != gen || res.ObservedGeneration != gen {
					err = fmt.Errorf("observedGeneration %d, want %d", acc.ObservedGeneration, gen)
					break
				}
				err = check(acc, res)
			}
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
		}
	}
	is := func(c metav1.Condition, typ string, st metav1.ConditionStatus, reason, msg string) error {
		if c.Type != typ || c.Status != st || c.Reason != reason || !strings.Contains(c.Message, msg) || c.LastTransitionTime.IsZero() {
			return fmt.Errorf("%s: %+v, want %s %s with %q", typ, c, st, reason, msg)
		}
		return nil
	}
	// share is greeter-v2's share of n calls, and the calls that failed by code.
	share := func(n int, md ...string) (float64, map[codes.Code]int) {
		v2, failed := 0, map[codes.Code]int{}
		for range n {
			cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
			r, err := pb.NewGreeterClient(conn).SayHello(cctx, &pb.HelloRequest{Name: "status"})
			ccancel()
			switch {
			case err != nil:
				failed[status.Code(err)]++
			case strings.HasPrefix(greeter.PodOf(r.GetMessage()), "greeter-v2"):
				v2++
			}
		}
		return float64(v2) / float64(n), failed
	}

	conditions("accepted, resolved", 1, func(acc, res metav1.Condition) error {
		if err := is(acc, "Accepted", "True", "Accepted", "accepted"); err != nil {
			return err
		}
		return is(res, "ResolvedRefs", "True", "ResolvedRefs", "")
	})
	if v2, failed := share(400); len(failed) > 0 || v2 < 0.35 || v2 > 0.65 {
		t.Fatalf("50/50: greeter-v2 took %.0f%%, failed %v", 100*v2, failed)
	}

	update := func(spec gatewayv1.GRPCRouteSpec) int64 {
		t.Helper()
		cur, err := routes.Get(context.Background(), "greeter", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Spec = spec
		next, err := routes.Update(context.Background(), cur, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return next.Generation
	}
	// A canary edit reaches the client.
	gen := update(routeSpec(t, "[{name: greeter, port: 50051, weight: 0}, {name: greeter-v2, port: 50051, weight: 1}]", "tester-[0-9]+"))
	poll(t, "every call to greeter-v2", func() error {
		if v2, failed := share(20); v2 != 1 {
			return fmt.Errorf("%.0f%% of calls to greeter-v2, failed %v", 100*v2, failed)
		}
		return nil
	})
	conditions("edit accepted", gen, func(acc, res metav1.Condition) error { return is(acc, "Accepted", "True", "Accepted", "") })

	// A missing backend: ResolvedRefs False, BackendNotFound, naming the
	// rule; its share fails UNAVAILABLE, the rest succeed.
	gen = update(routeSpec(t, "[{name: greeter-v2, port: 50051, weight: 1}, {name: greeter-v3, port: 50051, weight: 1}]", "tester-[0-9]+"))
	conditions("missing backend", gen, func(acc, res metav1.Condition) error {
		return is(res, "ResolvedRefs", "False", "BackendNotFound", "rule 0 (canary): backendRefs[1]: Service "+ns+"/greeter-v3 does not exist")
	})
	poll(t, "some calls UNAVAILABLE", func() error {
		if _, failed := share(20); failed[codes.Unavailable] == 0 {
			return fmt.Errorf("failed %v", failed)
		}
		return nil
	})
	if v2, failed := share(400); len(failed) != 1 || failed[codes.Unavailable] < 120 || failed[codes.Unavailable] > 280 || v2 == 0 {
		t.Errorf("half to a missing backend: greeter-v2 took %.0f%%, failed %v; want the rest UNAVAILABLE", 100*v2, failed)
	}

	// An invalid edit: Accepted False naming rule and field; the client
	// keeps the last good route.
	last := gen
	gen = update(routeSpec(t, "[{name: greeter, port: 50051}]", "tester-[0-9"))
	conditions("invalid regex", gen, func(acc, res metav1.Condition) error {
		return is(acc, "Accepted", "False", "UnsupportedValue",
			fmt.Sprintf("rule 1 (testers): spec.rules[1].matches[0].headers[0].value: invalid regular expression: error parsing regexp: missing closing ]: `[0-9`; clients keep generation %d", last))
	})
	if v2, failed := share(100); failed[codes.Unavailable] == 0 || v2 == 0 {
		t.Errorf("after an invalid edit calls went %.0f%% to greeter-v2, failed %v: want the last good route (half UNAVAILABLE)", 100*v2, failed)
	}
}
