package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/inject"
)

// TestSidecarInbound (in a file that sorts after proxyless_test.go, whose
// cleanup removes the control plane that setupMesh then deploys once for
// the sidecar tests): the greeters in the injected namespace declare their
// gRPC port, so the injector captures it inbound by default. Calls still
// succeed, each greeter's sidecar counts the calls into its pod, and a
// greeter deleted under load loses no call: its sidecar refuses what its
// stopping app no longer takes (with GOAWAY, so callers retry elsewhere),
// then drains.
func TestSidecarInbound(t *testing.T) {
	ctx := ctxFor(t, 8*time.Minute)
	greeters := podNames(meshArticle(t, ctx))
	target := net.JoinHostPort(clusterIP(t, ctx, meshNS, "native-tools-2"), "50051")
	conn := podGRPC(t, meshNS, "native-tools", target)
	const (
		requests = "ballast_proxy_inbound_requests_total"
		duration = "ballast_proxy_inbound_request_duration_seconds_count"
		port     = `port="50051"`
	)
	inbound := func(t *testing.T, name string, match ...string) float64 {
		t.Helper()
		sum := 0.0
		for _, g := range greeters {
			sum += proxyMetrics(t, ctx, meshNS, g, name, match...)
		}
		return sum
	}

	t.Run("greeters capture their declared port", func(t *testing.T) {
		for _, g := range greeters {
			pod, err := cluster.Client.CoreV1().Pods(meshNS).Get(ctx, g, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var initArgs string
			for _, c := range pod.Spec.InitContainers {
				if c.Name == inject.InitContainerName {
					initArgs = strings.Join(c.Args, " ")
				}
			}
			if !strings.Contains(initArgs, "--inbound-ports 50051 ") {
				t.Errorf("%s: init args %q do not capture 50051 inbound", g, initArgs)
			}
			netns, err := cluster.PodNetns(meshNS, g)
			if err != nil {
				t.Fatal(err)
			}
			rules := output(ctx, "ip", "netns", "exec", netns, "iptables", "-t", "nat", "-S")
			for _, want := range []string{"-A PREROUTING -p tcp -j BALLAST_INBOUND", "-A BALLAST_INBOUND -p tcp -m tcp --dport 50051 -j BALLAST_IN_REDIRECT", "--to-ports 15006"} {
				if !strings.Contains(rules, want) {
					t.Errorf("%s: no %q in its nat rules:\n%s", g, want, rules)
				}
			}
		}
	})

	t.Run("calls succeed and the greeters' sidecars count them", func(t *testing.T) {
		// The kubelet's gRPC readiness probes are inbound calls too: count
		// at least the test's own.
		before := inbound(t, requests, port, `code="OK"`)
		beforeDuration := inbound(t, duration, port)
		tally := greeter.Call(ctx, conn, 30, 10*time.Second, nil)
		if tally.Errors > 0 {
			t.Fatalf("%d of 30 calls failed: %v", tally.Errors, tally.LastError)
		}
		for _, g := range greeters {
			if tally.Pods[g] == 0 {
				t.Errorf("greeter %s answered none of 30 calls: %v", g, tally.Pods)
			}
		}
		after := inbound(t, requests, port, `code="OK"`)
		if after < before+30 {
			t.Fatalf("the greeters' sidecars counted %v OK inbound calls during 30 calls, want ≥ 30", after-before)
		}
		if d := inbound(t, duration, port); d < beforeDuration+30 {
			t.Fatalf("the greeters' sidecars observed %v inbound call durations during 30 calls, want ≥ 30", d-beforeDuration)
		}
		t.Logf("inbound OK calls counted by the greeters' sidecars: %v → %v", before, after)
	})

	t.Run("a greeter deleted under load loses no call", func(t *testing.T) {
		l := startInboundLoad(t, ctx, pb.NewGreeterClient(conn))
		l.waitAnswered(t, ctx, greeters...)
		victim := greeters[0]
		began := time.Now()
		if err := cluster.Client.CoreV1().Pods(meshNS).Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		var replacement string
		if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
			for _, p := range podNames(readyPods(t, ctx, meshNS, "native-tools-2")) {
				if !slices.Contains(greeters, p) {
					replacement = p
				}
			}
			return replacement != "", nil
		}); err != nil {
			t.Fatalf("no replacement for %s: %v", victim, err)
		}
		l.waitAnswered(t, ctx, replacement)
		if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
			_, err := cluster.Client.CoreV1().Pods(meshNS).Get(ctx, victim, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			t.Fatalf("pod %s still there: %v", victim, err)
		}
		t.Logf("deleted %s; %s answered and %s was gone after %s", victim, replacement, victim, time.Since(began).Round(time.Millisecond))
		l.stopAndCheck(t)
	})
}

// inboundLoad is a few goroutines making calls over one connection from
// the client pod (through its sidecar to the greeters' sidecars), bounded
// in count and time, recording every failure.
type inboundLoad struct {
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	calls    int
	answered map[string]int
	failures []string
}

const (
	inboundLoadWorkers  = 4
	inboundLoadMaxCalls = 20000
	inboundLoadFor      = 3 * time.Minute
)

func startInboundLoad(t *testing.T, ctx context.Context, conn pb.GreeterClient) *inboundLoad {
	ctx, cancel := context.WithTimeout(ctx, inboundLoadFor)
	l := &inboundLoad{cancel: cancel, done: make(chan struct{}), answered: map[string]int{}}
	var wg sync.WaitGroup
	for range inboundLoadWorkers {
		wg.Go(func() {
			for n := 0; n < inboundLoadMaxCalls/inboundLoadWorkers && ctx.Err() == nil; n++ {
				callCtx, cancelCall := context.WithTimeout(ctx, 10*time.Second)
				reply, err := conn.SayHello(callCtx, &pb.HelloRequest{Name: "inbound"})
				cancelCall()
				if ctx.Err() != nil {
					return // cut short by stop: not a failed call
				}
				l.mu.Lock()
				l.calls++
				if err != nil {
					l.failures = append(l.failures, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
				} else {
					l.answered[greeter.PodOf(reply.GetMessage())]++
				}
				l.mu.Unlock()
			}
		})
	}
	go func() { wg.Wait(); close(l.done) }()
	t.Cleanup(func() { cancel(); <-l.done })
	return l
}

func (l *inboundLoad) waitAnswered(t *testing.T, ctx context.Context, pods ...string) {
	t.Helper()
	var missing []string
	if err := devcluster.Poll(ctx, 2*time.Minute, func(context.Context) (bool, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		missing = missing[:0]
		for _, p := range pods {
			if l.answered[p] == 0 {
				missing = append(missing, p)
			}
		}
		return len(missing) == 0, nil
	}); err != nil {
		t.Fatalf("no answer under load from %v: %v", missing, err)
	}
}

func (l *inboundLoad) stopAndCheck(t *testing.T) {
	t.Helper()
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("load: %d calls, per pod %v", l.calls, l.answered)
	if l.calls < 50 {
		t.Errorf("only %d calls: not much of a load", l.calls)
	}
	if len(l.failures) > 0 {
		t.Errorf("%d calls failed, first ones:\n%s", len(l.failures), strings.Join(l.failures[:min(len(l.failures), 10)], "\n"))
	}
}
