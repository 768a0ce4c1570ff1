package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/ballast-dev/ballast/greeter"
)

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitStalled polls count until it is above zero and has not moved for
// half a second (a sender blocked on flow control), and returns it; it
// fails t if that takes longer than 30 seconds.
func waitStalled(t testing.TB, what string, count func() int64) int64 {
	t.Helper()
	const quiet = 500 * time.Millisecond
	deadline := time.Now().Add(30 * time.Second)
	last, since := count(), time.Now()
	for {
		switch now := count(); {
		case now != last:
			last, since = now, time.Now()
		case now > 0 && time.Since(since) >= quiet:
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s to stall (at %d)", what, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// startGreeters runs n greeters named pod-0..pod-n-1 on loopback and
// returns their addresses.
func startGreeters(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	for i := range n {
		lis := listen(t)
		addrs = append(addrs, lis.Addr().String())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			(&greeter.Server{Pod: fmt.Sprintf("pod-%d", i)}).Serve(ctx, lis)
		}()
		t.Cleanup(func() { cancel(); <-done })
	}
	return addrs
}

var schemes atomic.Int64

// staticTarget returns a target naming addrs and the resolver of it, a
// stand-in for the endpoint list xDS gives: the proxy takes it in
// Options.Resolvers, a grpc-go client with grpc.WithResolvers.
func staticTarget(addrs []string) (string, resolver.Builder) {
	scheme := fmt.Sprintf("ballast-test-%d", schemes.Add(1))
	r := manual.NewBuilderWithScheme(scheme)
	var state resolver.State
	for _, a := range addrs {
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	r.InitialState(state)
	return scheme + ":///" + strings.Join(addrs, ","), r
}

// runningProxy is a Proxy serving in the background.
type runningProxy struct {
	*Proxy
	cancel context.CancelFunc
	done   chan error
}

// start runs p until the test ends, and checks that Serve returned cleanly.
func start(t testing.TB, p *Proxy) *runningProxy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rp := &runningProxy{Proxy: p, cancel: cancel, done: make(chan error, 1)}
	go func() { rp.done <- p.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-rp.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	eventually(t, "proxy ready", p.Ready)
	return rp
}

// startOutbound runs a proxy with one explicit listener forwarding to
// target and returns the listener's address.
func startOutbound(t testing.TB, target string, opts Options) (*runningProxy, string) {
	t.Helper()
	lis := listen(t)
	opts.Outbound = append(opts.Outbound, Outbound{Listener: lis, Target: target})
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return start(t, p), lis.Addr().String()
}

func dial(t testing.TB, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// metricValue reads a counter or gauge.
func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// spread waits until calls over conn have reached pods distinct backends
// (round_robin only uses connected ones, and they connect in parallel),
// then makes calls calls and returns how many each pod answered. It fails
// the test if the backends are not all reached within the deadline.
func spread(t testing.TB, conn *grpc.ClientConn, pods, calls int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	eventually(t, fmt.Sprintf("calls reaching %d pods", pods), func() bool {
		tally := greeter.Call(context.Background(), conn, 1, 5*time.Second, nil)
		if tally.Errors > 0 {
			t.Fatalf("warm-up call: %v", tally.LastError)
		}
		for p := range tally.Pods {
			seen[p]++
		}
		return len(seen) >= pods
	})
	tally := greeter.Call(context.Background(), conn, calls, 5*time.Second, nil)
	if tally.Errors > 0 {
		t.Fatalf("%d of %d calls failed; last: %v", tally.Errors, tally.Calls, tally.LastError)
	}
	return tally.Pods
}

// even reports whether counts has n pods that each got total/n.
func even(counts map[string]int, n, total int) bool {
	if len(counts) != n {
		return false
	}
	for _, c := range counts {
		if c != total/n {
			return false
		}
	}
	return true
}

// hostsOf lists the balancer hosts of up: one per Cluster its route names,
// or the one of a target without routes.
func hostsOf(up *upstream) []*host {
	up.mu.Lock()
	defer up.mu.Unlock()
	var hosts []*host
	for _, h := range up.hosts {
		hosts = append(hosts, h)
	}
	return hosts
}

// hostOf is up's host of cluster ("" for a target without routes), once
// it exists.
func hostOf(t testing.TB, up *upstream, cluster string) *host {
	t.Helper()
	var h *host
	eventually(t, "a host for cluster "+cluster, func() bool {
		up.mu.Lock()
		defer up.mu.Unlock()
		h = up.hosts[cluster]
		return h != nil
	})
	return h
}

// onlyHost is up's one host.
func onlyHost(t testing.TB, up *upstream) *host {
	t.Helper()
	hosts := hostsOf(up)
	if len(hosts) != 1 {
		t.Fatalf("upstream %s has %d hosts, want 1", up.target, len(hosts))
	}
	return hosts[0]
}
