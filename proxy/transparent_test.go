package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/policy"
	k8sresolver "github.com/ballast-dev/ballast/resolver/kubernetes"
)

// serveTCP runs handle for each connection accepted on a loopback port and
// returns the port's address.
func serveTCP(t *testing.T, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	lis := listen(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	t.Cleanup(func() { lis.Close(); <-done })
	return lis.Addr().(*net.TCPAddr).AddrPort()
}

func serveHTTP(t *testing.T, body string) netip.AddrPort {
	t.Helper()
	lis := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return lis.Addr().(*net.TCPAddr).AddrPort()
}

// dialerFrom returns a dialer whose connections come from source, the key
// by which the test's OriginalDst knows where each was "going".
func dialerFrom(source string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
}

// TestTransparentDispatch drives the transparent listener with connections
// whose original destinations are given directly (iptables is what sets
// them in production; see the netns test), keyed by the client's source
// address on loopback.
func TestTransparentDispatch(t *testing.T) {
	balanced, resolve := staticTarget(startGreeters(t, 3))
	solo := netip.MustParseAddrPort(startGreeters(t, 1)[0])
	httpKnown := serveHTTP(t, "known http")
	httpUnknown := serveHTTP(t, "unknown http")
	echo := serveTCP(t, func(c net.Conn) { io.Copy(c, c) })
	banner := serveTCP(t, func(c net.Conn) { io.WriteString(c, "220 hello\r\n") })
	// A ClusterIP with nothing behind it: only the gRPC path can answer.
	clusterIP := netip.MustParseAddrPort("127.0.0.250:50051")

	destinations := StaticDestinations{
		clusterIP: balanced,
		httpKnown: balanced,
		banner:    balanced,
	}
	origin := map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.11"): clusterIP,
		netip.MustParseAddr("127.0.0.12"): solo,
		netip.MustParseAddr("127.0.0.13"): httpKnown,
		netip.MustParseAddr("127.0.0.14"): httpUnknown,
		netip.MustParseAddr("127.0.0.15"): echo,
		netip.MustParseAddr("127.0.0.16"): banner,
	}
	lis := listen(t)
	p, err := New(Options{
		Transparent:  lis,
		Destinations: destinations,
		OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
			src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
			if dst, ok := origin[src]; ok {
				return dst, nil
			}
			return netip.AddrPort{}, fmt.Errorf("connection from %s was not redirected", src)
		},
		Resolvers:    []resolver.Builder{resolve},
		SniffTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, p)
	proxyAddr := lis.Addr().String()

	dialFrom := func(t *testing.T, source string) *grpc.ClientConn {
		return dial(t, proxyAddr, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialerFrom(source).DialContext(ctx, "tcp", addr)
		}))
	}
	httpGet := func(t *testing.T, source string) string {
		client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dialerFrom(source).DialContext(ctx, "tcp", addr)
		}}}
		defer client.CloseIdleConnections()
		resp, err := client.Get("http://" + proxyAddr + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	rawConn := func(t *testing.T, source string) *net.TCPConn {
		c, err := dialerFrom(source).Dial("tcp", proxyAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c.(*net.TCPConn)
	}

	t.Run("gRPC to a known Service is balanced per call", func(t *testing.T) {
		if pods := spread(t, dialFrom(t, "127.0.0.11"), 3, 12); !even(pods, 3, 12) {
			t.Fatalf("12 calls reached %v, want 4 on each of 3 pods", pods)
		}
	})
	t.Run("gRPC to an unknown destination passes through", func(t *testing.T) {
		tally := greeter.Call(t.Context(), dialFrom(t, "127.0.0.12"), 12, 5*time.Second, nil)
		if tally.Errors > 0 || len(tally.Pods) != 1 || tally.Pods["pod-0"] != 12 {
			t.Fatalf("12 calls: %d errors (last %v), pods %v; want all on the one destination pod-0", tally.Errors, tally.LastError, tally.Pods)
		}
	})
	t.Run("HTTP/1 to a known Service passes through", func(t *testing.T) {
		if got := httpGet(t, "127.0.0.13"); got != "known http" {
			t.Fatalf("body %q", got)
		}
	})
	t.Run("HTTP/1 to an unknown destination passes through", func(t *testing.T) {
		if got := httpGet(t, "127.0.0.14"); got != "unknown http" {
			t.Fatalf("body %q", got)
		}
	})
	t.Run("raw TCP with half-close passes through", func(t *testing.T) {
		c := rawConn(t, "127.0.0.15")
		io.WriteString(c, "ping\x00\xff")
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "ping\x00\xff" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})
	t.Run("server-speaks-first to a known Service passes through", func(t *testing.T) {
		line, err := bufio.NewReader(rawConn(t, "127.0.0.16")).ReadString('\n')
		if err != nil || line != "220 hello\r\n" {
			t.Fatalf("banner %q, %v", line, err)
		}
	})
	t.Run("a connection that was not redirected is closed", func(t *testing.T) {
		c := rawConn(t, "127.0.0.17")
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read %d bytes, %v; want EOF", n, err)
		}
	})

	for reason, want := range map[string]float64{
		reasonUnknownDestination: 3, // gRPC, HTTP/1 and raw TCP to unknown destinations
		reasonNotHTTP2:           2, // HTTP/1 and the silent client to known ones
	} {
		if got := metricValue(p.metrics.passthrough.WithLabelValues(reason)); got != want {
			t.Errorf("ballast_proxy_passthrough_connections_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}

// TestRegistryResolved: without a control plane, Services known from a
// registry (Kubernetes or files) resolve through resolver/kubernetes from
// that registry, and calls to a ClusterIP are balanced per call.
func TestRegistryResolved(t *testing.T) {
	addrs := startGreeters(t, 3)
	reg := discovery.NewRegistry()
	clusterIP := netip.MustParseAddrPort("10.96.0.10:50051")
	svc := &discovery.Service{Key: keyOf("default", "greeter"), ClusterIPs: []netip.Addr{clusterIP.Addr()}, Ports: []discovery.Port{{Port: 50051, Protocol: "TCP"}}}
	for i, a := range addrs {
		svc.Ports[0].Endpoints = append(svc.Ports[0].Endpoints, discovery.Endpoint{Address: netip.MustParseAddrPort(a), Ready: true, Serving: true, Pod: fmt.Sprintf("pod-%d", i)})
	}
	reg.Set(svc)
	lis := listen(t)
	p, err := New(Options{
		Transparent:  lis,
		Destinations: StaticDestinations{clusterIP: KubernetesTarget("greeter", "default", 50051)},
		OriginalDst:  func(net.Conn) (netip.AddrPort, error) { return clusterIP, nil },
		Resolvers:    []resolver.Builder{k8sresolver.NewBuilder(reg)},
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, p)
	if pods := spread(t, dial(t, lis.Addr().String()), 3, 30); !even(pods, 3, 30) {
		t.Fatalf("30 calls reached %v, want 10 on each of 3 pods", pods)
	}
}

// TestRegistryPolicy: without a control plane the Service's lb-policy
// annotation still picks the balancer, through the service config the
// kubernetes:/// resolver sends, as it picks the xDS Cluster's policy
// (TestXDSPolicy). A value that names no policy keeps the last good one.
func TestRegistryPolicy(t *testing.T) {
	addrs := startGreeters(t, 3)
	tests := []struct {
		name         string
		annotations  []string // set one after the other; "" for none
		wantBalancer string
	}{
		{"none", []string{""}, "round_robin"},
		{"least_request", []string{"least_request"}, "ballast_p2c"},
		{"peak_ewma", []string{"peak_ewma"}, "ballast_peak_ewma"},
		{"a bad value keeps the last good", []string{"peak_ewma", "peak-ewma"}, "ballast_peak_ewma"},
		{"changed", []string{"peak_ewma", "round_robin"}, "round_robin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			service := func(lb string, pods int) *discovery.Service {
				svc := &discovery.Service{Key: keyOf("default", "greeter"), Ports: []discovery.Port{{Port: 50051, Protocol: "TCP"}}}
				if lb != "" {
					svc.Annotations = map[string]string{policy.LBAnnotation: lb}
				}
				for i, a := range addrs[:pods] {
					svc.Ports[0].Endpoints = append(svc.Ports[0].Endpoints, discovery.Endpoint{Address: netip.MustParseAddrPort(a), Ready: true, Serving: true, Pod: fmt.Sprintf("pod-%d", i)})
				}
				return svc
			}
			reg := discovery.NewRegistry()
			reg.Set(service(tc.annotations[0], 3))
			target := KubernetesTarget("greeter", "default", 50051)
			p, addr := startOutbound(t, target, Options{Resolvers: []resolver.Builder{k8sresolver.NewBuilder(reg)}})
			conn := dial(t, addr)
			spread(t, conn, 3, 30)
			for _, a := range tc.annotations[1:] {
				reg.Set(service(a, 3))
			}
			// The last change also drops a pod: once no call reaches it,
			// the balancer has the resolver's last state, policy and all.
			reg.Set(service(tc.annotations[len(tc.annotations)-1], 2))
			eventually(t, "calls stop reaching the dropped pod", func() bool {
				tally := greeter.Call(context.Background(), conn, 30, 5*time.Second, nil)
				if tally.Errors > 0 {
					t.Fatalf("%d calls failed; last: %v", tally.Errors, tally.LastError)
				}
				_, dropped := tally.Pods["pod-2"]
				return !dropped
			})
			up, _ := p.upstreams.get(target)
			got := make(chan string, 1)
			h := onlyHost(t, up)
			h.work.Schedule(func() { got <- h.balName })
			if b := <-got; b != tc.wantBalancer {
				t.Fatalf("the proxy runs balancer %q, want %q", b, tc.wantBalancer)
			}
		})
	}
}
