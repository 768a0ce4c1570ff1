package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/xds/internal/cases"
	"github.com/ballast-dev/ballast/xds/sidecar"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

var ep = cases.Endpoint

func TestTranslateGolden(t *testing.T) {
	for _, tt := range cases.Golden() {
		t.Run(tt.Name, func(t *testing.T) {
			res, err := Translate(tt.Services, Options{DefaultPolicy: tt.DefaultPolicy, ClusterDomain: tt.ClusterDomain, BareNameNamespace: tt.BareNameNamespace})
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if err := res.validate(); err != nil {
				t.Fatalf("invalid resource: %v", err)
			}
			checkGolden(t, filepath.Join("testdata", tt.Name+".golden"), dump(t, res))
		})
	}
}

func TestTranslateNames(t *testing.T) {
	tests := []struct {
		name string
		key  discovery.Key
		opts Options
		want []string
	}{
		{"default namespace gets bare name", discovery.Key{Namespace: "default", Name: "a"}, Options{},
			[]string{"a:80", "a.default:80", "a.default.svc:80", "a.default.svc.cluster.local:80"}},
		{"other namespace has no bare name", discovery.Key{Namespace: "x", Name: "a"}, Options{},
			[]string{"a.x:80", "a.x.svc:80", "a.x.svc.cluster.local:80"}},
		{"bare names for a chosen namespace", discovery.Key{Namespace: "x", Name: "a"}, Options{BareNameNamespace: "x", ClusterDomain: "c.io"},
			[]string{"a:80", "a.x:80", "a.x.svc:80", "a.x.svc.c.io:80"}},
		{"bare names off", discovery.Key{Namespace: "default", Name: "a"}, Options{BareNameNamespace: "-"},
			[]string{"a.default:80", "a.default.svc:80", "a.default.svc.cluster.local:80"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DialNames(tt.key, 80, tt.opts)
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("DialNames = %q, want %q", got, tt.want)
			}
			svc := &discovery.Service{Key: tt.key, Ports: []discovery.Port{{Port: 80, Protocol: "TCP"}}}
			res, err := TranslateService(svc, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Listeners) != len(tt.want) {
				t.Fatalf("%d listeners, want %d", len(res.Listeners), len(tt.want))
			}
			vh := res.Routes[0].VirtualHosts[0]
			for _, l := range res.Listeners {
				if !contains(vh.Domains, l.Name) {
					t.Errorf("listener %s is not a domain of virtual host %v", l.Name, vh.Domains)
				}
			}
		})
	}
}

func TestSidecarListeners(t *testing.T) {
	tests := []struct {
		name       string
		clusterIPs []string
		protocol   string
		want       []string // listener addresses
	}{
		{"one ClusterIP", []string{"10.96.0.10"}, "TCP", []string{"10.96.0.10:50051"}},
		{"dual stack", []string{"10.96.0.10", "fd00:96::a"}, "TCP", []string{"10.96.0.10:50051", "[fd00:96::a]:50051"}},
		{"IPv4-mapped address is unmapped", []string{"::ffff:10.96.0.10"}, "TCP", []string{"10.96.0.10:50051"}},
		{"headless", nil, "TCP", nil},
		{"ClusterIP None parses as unspecified", []string{"0.0.0.0"}, "TCP", nil},
		{"UDP port", []string{"10.96.0.10"}, "UDP", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &discovery.Service{
				Key:   discovery.Key{Namespace: "shop", Name: "cart"},
				Ports: []discovery.Port{{Port: 50051, Protocol: tt.protocol}},
			}
			for _, ip := range tt.clusterIPs {
				svc.ClusterIPs = append(svc.ClusterIPs, netip.MustParseAddr(ip))
			}
			res, err := TranslateService(svc, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range res.SidecarListeners {
				addr, route, err := sidecar.Route(l)
				if err != nil {
					t.Fatalf("sidecar.Route(%s): %v", l.Name, err)
				}
				if l.Name != addr.String() {
					t.Errorf("listener %s has address %s; want them equal", l.Name, addr)
				}
				if route != "cart.shop.svc.cluster.local:50051" {
					t.Errorf("listener %s routes to %q, want the port's canonical route", l.Name, route)
				}
				got = append(got, addr.String())
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("sidecar listeners %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSidecarRouteRejects(t *testing.T) {
	hcm, err := connectionManager("a.b.svc.cluster.local:80", "a.b.svc.cluster.local:80", false)
	if err != nil {
		t.Fatal(err)
	}
	good := sidecar.Listener(netip.MustParseAddrPort("10.96.0.10:80"), hcm)
	noChain := proto.Clone(good).(*listenerv3.Listener)
	noChain.FilterChains = nil
	badAddr := proto.Clone(good).(*listenerv3.Listener)
	badAddr.Address.GetSocketAddress().Address = "cart.shop"
	api := apiListener("a.b:80", hcm)
	tests := []struct {
		name    string
		l       *listenerv3.Listener
		wantErr string
	}{
		{"no filter chain", noChain, "listener 10.96.0.10:80: want one filter chain with one filter"},
		{"hostname address", badAddr, "listener 10.96.0.10:80: address:"},
		{"api listener", api, "listener a.b:80: address:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := sidecar.Route(tt.l)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("SidecarRoute error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestTranslatePolicies(t *testing.T) {
	tests := []struct {
		annotation string
		opts       Options
		want       []string // policy type URLs, in order; nil means an error
		wantErr    string
	}{
		{"", Options{}, []string{"envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"}, ""},
		{"", Options{DefaultPolicy: policy.PeakEWMA}, []string{"xds.type.v3.TypedStruct", "xds.type.v3.TypedStruct", "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest", "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"}, ""},
		{"round_robin", Options{DefaultPolicy: policy.LeastRequest}, []string{"envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"}, ""},
		{"least_request", Options{}, []string{"xds.type.v3.TypedStruct", "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest", "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"}, ""},
		{"peak_ewma", Options{}, []string{"xds.type.v3.TypedStruct", "xds.type.v3.TypedStruct", "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest", "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"}, ""},
		{"p2c", Options{}, nil, `service default/s: annotation ballast.dev/lb-policy: unknown lb policy "p2c"`},
		{"", Options{DefaultPolicy: "random"}, nil, `service default/s: unknown lb policy "random"`},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.annotation, tt.opts.DefaultPolicy), func(t *testing.T) {
			svc := &discovery.Service{Key: discovery.Key{Namespace: "default", Name: "s"}, Ports: []discovery.Port{{Port: 1, Protocol: "TCP"}}}
			if tt.annotation != "" {
				svc.Annotations = map[string]string{policy.LBAnnotation: tt.annotation}
			}
			res, err := TranslateService(svc, tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range res.Clusters[0].GetLoadBalancingPolicy().GetPolicies() {
				got = append(got, strings.TrimPrefix(p.GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl(), "type.googleapis.com/"))
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("policies = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestTranslateKeepsGoodServices checks that one bad Service is reported by
// name while the others are still translated.
func TestTranslateKeepsGoodServices(t *testing.T) {
	good := &discovery.Service{Key: discovery.Key{Namespace: "default", Name: "good"}, Ports: []discovery.Port{{Port: 1, Protocol: "TCP"}}}
	bad := &discovery.Service{Key: discovery.Key{Namespace: "default", Name: "bad"}, Ports: []discovery.Port{{Port: 1, Protocol: "TCP"}},
		Annotations: map[string]string{policy.LBAnnotation: "fastest"}}
	res, err := Translate([]*discovery.Service{bad, good}, Options{})
	if err == nil || !strings.Contains(err.Error(), "service default/bad") {
		t.Fatalf("err = %v, want it to name default/bad", err)
	}
	if len(res.Clusters) != 1 || res.Clusters[0].Name != "good.default.svc.cluster.local:1" {
		t.Fatalf("clusters = %v, want only good's", res.Clusters)
	}
}

// TestTranslateValid checks every resource against go-control-plane's
// generated validation, including the HttpConnectionManager inside each
// Listener and a translation with no endpoints at all.
func TestTranslateValid(t *testing.T) {
	res, err := Translate(benchServices(20, 3), Options{DefaultPolicy: policy.PeakEWMA})
	if err != nil {
		t.Fatal(err)
	}
	if err := res.validate(); err != nil {
		t.Fatal(err)
	}
	if got, want := res.Len(), 20*(3+1+1+1); got != want {
		t.Fatalf("%d resources, want %d", got, want)
	}
	for _, cla := range res.Endpoints {
		n := 0
		for _, l := range cla.Endpoints {
			n += len(l.LbEndpoints)
			if l.GetLoadBalancingWeight().GetValue() == 0 {
				t.Errorf("%s: locality %v has weight 0 (gRPC would ignore it)", cla.ClusterName, l.Locality)
			}
		}
		if n != 3 {
			t.Errorf("%s: %d endpoints, want 3", cla.ClusterName, n)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// dump renders resources as indented JSON, one entry per resource, with
// whitespace normalised (protojson randomises it on purpose).
func dump(t *testing.T, r Resources) []byte {
	t.Helper()
	var msgs []proto.Message
	for _, m := range r.Listeners {
		msgs = append(msgs, m)
	}
	for _, m := range r.SidecarListeners {
		msgs = append(msgs, m)
	}
	for _, m := range r.Routes {
		msgs = append(msgs, m)
	}
	for _, m := range r.Clusters {
		msgs = append(msgs, m)
	}
	for _, m := range r.Endpoints {
		msgs = append(msgs, m)
	}
	var raw []json.RawMessage
	for _, m := range msgs {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, b)
	}
	b, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./xds -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the translation; diff it with -update and review:\ngot:\n%s", path, got)
	}
}

func benchServices(n, endpoints int) []*discovery.Service {
	out := make([]*discovery.Service, n)
	for i := range out {
		eps := make([]discovery.Endpoint, endpoints)
		for j := range eps {
			eps[j] = discovery.Endpoint{
				Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(j)}), 8080),
				Ready:   true, Serving: true,
				Zone: fmt.Sprintf("zone-%d", j%3), Pod: fmt.Sprintf("svc-%d-%d", i, j),
			}
		}
		out[i] = &discovery.Service{
			Key:   discovery.Key{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i)},
			Ports: []discovery.Port{{Name: "grpc", Port: 50051, Protocol: "TCP", Endpoints: eps}},
		}
	}
	return out
}

func BenchmarkTranslate(b *testing.B) {
	services := benchServices(1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Translate(services, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTranslateService is the cost of one Service change, the common
// case: the server retranslates only the Services that changed.
func BenchmarkTranslateService(b *testing.B) {
	svc := benchServices(1, 10)[0]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := TranslateService(svc, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
