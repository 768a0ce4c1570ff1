//go:build linux

package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/proxy/iptables"
)

// The inbound netns test needs a caller outside the pod, since only
// connections arriving from another host pass PREROUTING: the parent makes
// two network namespaces joined by a veth pair (a "pod" at 10.255.1.1 and
// a "caller" at 10.255.1.2, nothing else routable), runs this binary in
// the pod to install the rules and serve the app and the proxy, and that
// runs it once more in the caller's namespace to make calls.
const (
	envInboundInside = "BALLAST_INBOUND_NETNS_INSIDE"
	envInboundClient = "BALLAST_INBOUND_NETNS_CLIENT"
	envCallerNetns   = "BALLAST_INBOUND_NETNS_CALLER"

	inboundPodIP    = "10.255.1.1"
	inboundCallerIP = "10.255.1.2"
	inboundCalls    = 20
)

func TestInboundNetns(t *testing.T) {
	if os.Getenv(envInboundInside) != "" || os.Getenv(envInboundClient) != "" {
		t.Skip("runs in the parent only")
	}
	needNetns(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	run := commandRunner(ctx, t)
	id := fmt.Sprintf("%d-%d", os.Getpid(), rand.Uint32()%100000)
	pod, caller := "ballast-inpod-"+id, "ballast-incall-"+id
	addNetns(t, run, pod)
	addNetns(t, run, caller)
	// The veth pair lives only in the two namespaces (deleting them
	// deletes it) and its /30 is their only route.
	run("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", caller)
	run("ip", "-n", pod, "addr", "add", inboundPodIP+"/30", "dev", "eth0")
	run("ip", "-n", caller, "addr", "add", inboundCallerIP+"/30", "dev", "eth0")
	run("ip", "-n", pod, "link", "set", "eth0", "up")
	run("ip", "-n", caller, "link", "set", "eth0", "up")

	runInside(ctx, t, pod, "TestInboundNetnsInside", envInboundInside+"=1", envCallerNetns+"="+caller)
}

// TestInboundNetnsInside runs in the pod's namespace as root: it installs
// outbound and inbound rules, serves a greeter on the pod's address and
// the proxy, has the caller call, and checks the proxy saw every call.
func TestInboundNetnsInside(t *testing.T) {
	if os.Getenv(envInboundInside) == "" {
		t.Skip("run by TestInboundNetns")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cfg := iptables.Config{
		ProxyPort: 15001, ProxyUID: 0, // this process: root, the app's and the proxy's
		InboundPort: 15006, AdminPort: 15021, InboundPorts: []int{50051},
	}
	if err := iptables.Apply(ctx, cfg, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := iptables.Remove(context.Background(), false, nil); err != nil {
			t.Errorf("remove: %v", err)
		}
	})

	appLis, err := net.Listen("tcp", inboundPodIP+":50051")
	if err != nil {
		t.Fatal(err)
	}
	appCtx, stopApp := context.WithCancel(context.Background())
	appDone := make(chan struct{})
	go func() { defer close(appDone); (&greeter.Server{Pod: "the-pod"}).Serve(appCtx, appLis) }()
	t.Cleanup(func() { stopApp(); <-appDone })

	// All addresses: REDIRECT in PREROUTING sends to the address of the
	// interface the connection came in on.
	lis, err := net.Listen("tcp", ":15006")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Inbound: lis})
	if err != nil {
		t.Fatal(err)
	}
	start(t, p)

	client := exec.CommandContext(ctx, "ip", "netns", "exec", os.Getenv(envCallerNetns),
		os.Getenv(envBinary), "-test.run=^TestInboundNetnsClient$", "-test.v", "-test.count=1")
	client.Env = append(slicesDelete(os.Environ(), envInboundInside+"=1"), envInboundClient+"=1")
	out, err := client.CombinedOutput()
	t.Logf("caller:\n%s", out)
	if err != nil {
		t.Fatalf("caller: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestInboundNetnsClient") {
		t.Fatal("caller test did not pass")
	}
	if got := metricValue(p.inbound.metrics.requests.WithLabelValues("50051", "OK")); got != inboundCalls {
		t.Errorf("inbound requests{port=50051,code=OK} = %v, want %d: the calls did not all pass the proxy", got, inboundCalls)
	}

	// The pod calling its own address is not captured inbound: the
	// connection is tracked from OUTPUT, so PREROUTING's nat rules never
	// see it.
	self := dial(t, "passthrough:///"+inboundPodIP+":50051")
	before := metricValue(p.inbound.metrics.requests.WithLabelValues("50051", "OK"))
	if tally := greeter.Call(ctx, self, 3, 5*time.Second, nil); tally.Errors > 0 {
		t.Fatalf("the pod calling its own address: %v", tally.LastError)
	}
	if got := metricValue(p.inbound.metrics.requests.WithLabelValues("50051", "OK")); got != before {
		t.Errorf("the pod's calls to itself were captured inbound (%v → %v)", before, got)
	}
}

// TestInboundNetnsClient is the caller in the other namespace: it knows
// only the pod's address.
func TestInboundNetnsClient(t *testing.T) {
	if os.Getenv(envInboundClient) == "" {
		t.Skip("run by TestInboundNetnsInside")
	}
	conn := dial(t, "passthrough:///"+inboundPodIP+":50051")
	tally := greeter.Call(t.Context(), conn, inboundCalls, 5*time.Second, nil)
	if tally.Errors > 0 || tally.Pods["the-pod"] != inboundCalls {
		t.Fatalf("%d calls to the pod: %+v", inboundCalls, tally)
	}
}
