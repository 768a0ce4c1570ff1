package xds

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// TestHTTPEndpoints checks /healthz, /readyz before and after discovery
// syncs, and that /metrics serves the server's metrics.
func TestHTTPEndpoints(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(&discovery.Service{Key: discovery.Key{Namespace: "default", Name: "a"}, Ports: []discovery.Port{{Port: 80, Protocol: "TCP"}}})
	var synced atomic.Bool
	srv, err := NewServer(Config{Registry: reg, Synced: synced.Load, Metrics: prometheus.NewRegistry(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before Run = %d, want 503", code)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); srv.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	eventually(t, "the first translation is in the caches", func() bool { return srv.started.Load() })
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before discovery synced = %d, want 503", code)
	}
	// A source writes what it listed, then reports synced: ready must mean
	// those writes are served.
	reg.Set(&discovery.Service{Key: discovery.Key{Namespace: "default", Name: "b"}, Ports: []discovery.Port{{Port: 80, Protocol: "TCP"}}})
	synced.Store(true)
	eventually(t, "/readyz answers 200 once discovery synced", func() bool {
		code, _ := get("/readyz")
		return code == http.StatusOK
	})
	if n := srv.caches[resourcev3.ClusterType].NumResources(); n != 2 {
		t.Fatalf("ready with %d clusters served, want 2", n)
	}
	_, metrics := get("/metrics")
	for _, want := range []string{
		// Each port's Listener of its fully qualified name: aliases are
		// built when asked for.
		`ballast_xds_resources{type="listener"} 2`,
		`ballast_xds_resources{type="cluster"} 2`,
		`ballast_xds_resources{type="endpoints"} 2`,
		`ballast_xds_translate_errors_total 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestServerKeepsLastGoodOnBadInput checks that a Service update that cannot
// be translated leaves the Service's served resources as they were, counts
// the error, and that the next good update is applied.
func TestServerKeepsLastGoodOnBadInput(t *testing.T) {
	reg := discovery.NewRegistry()
	metrics := prometheus.NewRegistry()
	srv, err := NewServer(Config{Registry: reg, Metrics: metrics, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	key := discovery.Key{Namespace: "default", Name: "a"}
	name := "a.default.svc.cluster.local:80"
	set := func(lb string) {
		reg.Set(&discovery.Service{Key: key, Annotations: map[string]string{policy.LBAnnotation: lb},
			Ports: []discovery.Port{{Port: 80, Protocol: "TCP"}}})
		srv.apply([]discovery.Key{key}, time.Now())
	}
	firstPolicy := func() string {
		packed, ok := srv.caches[resourcev3.ClusterType].GetResources()[name]
		if !ok {
			return "none"
		}
		// The cache holds the Cluster's encoding (see pack).
		raw, err := proto.Marshal(packed)
		if err != nil {
			t.Fatal(err)
		}
		c := &clusterv3.Cluster{}
		if err := proto.Unmarshal(raw, c); err != nil {
			t.Fatal(err)
		}
		return c.GetLoadBalancingPolicy().GetPolicies()[0].GetTypedExtensionConfig().GetName()
	}
	errorsCounted := func() float64 {
		mfs, err := metrics.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "ballast_xds_translate_errors_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return -1
	}

	set("least_request")
	// least_request's list starts with Ballast's own least-request balancer.
	if got := firstPolicy(); got != "ballast.load_balancing_policies.p2c" {
		t.Fatalf("policy = %s, want least_request", got)
	}
	set("fastest")
	if got := firstPolicy(); got != "ballast.load_balancing_policies.p2c" {
		t.Fatalf("after a bad annotation, policy = %s, want the last good least_request", got)
	}
	if n := errorsCounted(); n != 1 {
		t.Fatalf("translate errors = %v, want 1", n)
	}
	set("round_robin")
	if got := firstPolicy(); got != "envoy.load_balancing_policies.round_robin" {
		t.Fatalf("policy = %s, want round_robin", got)
	}
	reg.Delete(key)
	srv.apply([]discovery.Key{key}, time.Now())
	if got := firstPolicy(); got != "none" {
		t.Fatalf("after delete, cluster policy = %s, want no cluster", got)
	}
	for _, typ := range typeURLs {
		if n := srv.caches[typ].NumResources(); n != 0 {
			t.Errorf("%d %s resources left after the Service was deleted", n, typeName(typ))
		}
	}
}
