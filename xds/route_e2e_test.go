package xds

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter/greetertest"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/greeter"
)

// routeYAML is GRPCRoute default/greeter on Service greeter: calls with
// x-canary: always, or to a Say* method with an x-user of tester-<n>, go
// to greeter-v2; calls to other.Service too; the rest are split by
// canary, backendRefs YAML.
func routeYAML(canary string) string {
	return `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: greeter, port: 50051}]
  rules:
  - name: canary
    backendRefs: ` + canary + `
  - name: always
    matches:
    - method: {service: helloworld.Greeter, method: SayHello}
      headers: [{name: x-canary, value: always}]
    backendRefs: [{name: greeter-v2, port: 50051}]
  - name: testers
    matches:
    - method: {type: RegularExpression, method: 'Say.*'}
      headers: [{name: x-user, type: RegularExpression, value: 'tester-[0-9]+'}]
    backendRefs: [{name: greeter-v2, port: 50051}]
  - name: other
    matches: [{method: {service: other.Service}}]
    backendRefs: [{name: greeter-v2, port: 50051}]
`
}

// tally is what a run of calls came to: answers by pod, failures by code.
type tally struct {
	pods  map[string]int
	codes map[codes.Code]int
	calls int
	last  error // the last failure
}

func (c tally) share(prefix string) float64 {
	n := 0
	for pod, k := range c.pods {
		if strings.HasPrefix(pod, prefix) {
			n += k
		}
	}
	return float64(n) / float64(c.calls)
}

// calls makes n SayHello calls on 8 goroutines with the given metadata.
func calls(conn *grpc.ClientConn, n int, md ...string) tally {
	out := tally{pods: map[string]int{}, codes: map[codes.Code]int{}, calls: n}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	client := pb.NewGreeterClient(conn)
	for range 8 {
		wg.Go(func() {
			for range next {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				ctx = metadata.AppendToOutgoingContext(ctx, md...)
				r, err := client.SayHello(ctx, &pb.HelloRequest{Name: "route"})
				cancel()
				mu.Lock()
				if err != nil {
					out.codes[status.Code(err)]++
					out.last = err
				} else {
					out.pods[greeter.PodOf(r.GetMessage())]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// TestProxylessGRPCRoute: a GRPCRoute read by --files, served by the
// control plane and applied by grpc-go's own xDS client: a 90/10 canary
// lands within ±2% over 10,000 calls; method and header matches route
// where they say; an edit reaches the client; a missing backend's share
// fails UNAVAILABLE while the rest succeed; a rule of weight 0 fails its
// calls; an invalid route keeps the last good one; the client NACKs
// nothing.
func TestProxylessGRPCRoute(t *testing.T) {
	p := startPlane(t)
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("greeter.yaml", string(greetertest.ServiceYAML(t, "default", "greeter", greetertest.Serve(t, "greeter-v1-0", "greeter-v1-1"))))
	write("greeter-v2.yaml", string(greetertest.ServiceYAML(t, "default", "greeter-v2", greetertest.Serve(t, "greeter-v2-0"))))
	write("route.yaml", routeYAML("[{name: greeter, port: 50051, weight: 90}, {name: greeter-v2, port: 50051, weight: 10}]"))
	src := files.New(dir, p.reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	conn := dialXDS(t, p, "xds:///greeter.default:50051")

	t.Run("canary 90/10 within 2% over 10,000 calls", func(t *testing.T) {
		c := calls(conn, 10000)
		if len(c.codes) > 0 {
			t.Fatalf("failed calls: %v; last: %v", c.codes, c.last)
		}
		if v2 := c.share("greeter-v2"); v2 < 0.08 || v2 > 0.12 {
			t.Errorf("greeter-v2 took %.2f%% of calls, want 10%% ± 2%%: %v", 100*v2, c.pods)
		}
		t.Logf("greeter-v2 share %.2f%% of %d calls", 100*c.share("greeter-v2"), c.calls)
	})
	t.Run("method and header matches route where they say", func(t *testing.T) {
		for _, tt := range []struct {
			md    []string
			allV2 bool
		}{
			{[]string{"x-canary", "always"}, true},
			{[]string{"x-user", "tester-42"}, true},
			{[]string{"x-user", "tester-"}, false},     // the regex wants a digit
			{[]string{"x-canary", "sometimes"}, false}, // exact value only
		} {
			c := calls(conn, 300, tt.md...)
			if len(c.codes) > 0 {
				t.Fatalf("%v: failed calls: %v", tt.md, c.codes)
			}
			if v2 := c.share("greeter-v2"); tt.allV2 && v2 != 1 || !tt.allV2 && v2 > 0.5 {
				t.Errorf("%v: greeter-v2 took %.0f%%, want all: %v, canary share otherwise", tt.md, 100*v2, tt.allV2)
			}
		}
	})
	t.Run("an edit reaches the client", func(t *testing.T) {
		write("route.yaml", routeYAML("[{name: greeter, port: 50051, weight: 0}, {name: greeter-v2, port: 50051, weight: 1}]"))
		start := time.Now()
		if err := src.Load(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "every call goes to greeter-v2", func() bool { return calls(conn, 50).share("greeter-v2") == 1 })
		t.Logf("the edit reached the client within %v of the folder's load", time.Since(start))
	})
	t.Run("a missing backend's share fails UNAVAILABLE, the rest succeed", func(t *testing.T) {
		write("route.yaml", routeYAML("[{name: greeter, port: 50051, weight: 1}, {name: greeter-v3, port: 50051, weight: 1}]"))
		if err := src.Load(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "greeter-v1 answers and greeter-v2 does not", func() bool {
			c := calls(conn, 50)
			return c.share("greeter-v1") > 0 && c.pods["greeter-v2-0"] == 0
		})
		c := calls(conn, 2000)
		failed := float64(c.codes[codes.Unavailable]) / float64(c.calls)
		if len(c.codes) != 1 || failed < 0.45 || failed > 0.55 || c.share("greeter-v1")+failed != 1 {
			t.Errorf("failures %v (%.1f%% UNAVAILABLE), answers %v: want half UNAVAILABLE, half greeter-v1", c.codes, 100*failed, c.pods)
		}
	})
	t.Run("a rule whose weights sum to 0 fails its calls", func(t *testing.T) {
		write("route.yaml", routeYAML("[{name: greeter, port: 50051, weight: 0}]"))
		if err := src.Load(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "calls without headers fail", func() bool { return calls(conn, 20).codes[codes.Unavailable] == 20 })
		if c := calls(conn, 20, "x-canary", "always"); c.pods["greeter-v2-0"] != 20 {
			t.Errorf("the other rules stopped working: %v %v", c.pods, c.codes)
		}
	})
	t.Run("an invalid route keeps the last good one", func(t *testing.T) {
		write("route.yaml", routeYAML("[{name: greeter, port: 50051}]"))
		if err := src.Load(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "greeter-v1 answers again", func() bool { return calls(conn, 20).share("greeter-v1") == 1 })
		write("route.yaml", strings.Replace(routeYAML("[{name: greeter-v2, port: 50051}]"), "tester-[0-9]+", "tester-[0-9", 1))
		err := src.Load()
		if err == nil || !strings.Contains(err.Error(), "route.yaml:17: document 1: grpcroute default/greeter: rule 2 (testers)") {
			t.Fatalf("Load error %v, want one at route.yaml:17 naming rule 2 (testers)", err)
		}
		if c := calls(conn, 200); c.share("greeter-v1") != 1 {
			t.Errorf("calls went %v %v after an invalid edit, want greeter-v1 as before", c.pods, c.codes)
		}
	})
	for _, typ := range []string{"listener", "route", "cluster", "endpoints"} {
		if n := counterValue(t, p.metrics, "ballast_xds_nacks_total", typ); n != 0 {
			t.Errorf("the client NACKed %v %s responses", n, typ)
		}
	}
}
