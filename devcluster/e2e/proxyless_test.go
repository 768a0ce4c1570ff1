package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/policy"
)

const (
	// controlNS is where deploy/control installs the control plane.
	controlNS = "ballast-system"
	// xdsTarget is what the proxyless clients dial: the article's Service
	// by name and namespace, through the control plane.
	xdsTarget = "xds:///native-tools-2.default:50051"
	// xdsClients is the Deployment of greeter clients with an xDS bootstrap.
	xdsClients = "native-tools-xds"
	// maxOverMean bounds the busiest greeter's share of a run of calls
	// through one client: round_robin over ready pods gives exactly n/pods
	// each, and a picker rebuilt mid-run (an EDS update) may shift one call.
	maxOverMean = 1.1
)

// Load limits: each client makes at most one call per loadPace, at most
// loadMaxCalls, for at most loadFor; a phase that needs more fails.
const (
	loadPace     = 25 * time.Millisecond
	loadMaxCalls = 6000
	loadFor      = 3 * time.Minute
)

// proxylessClients is a Deployment of the article's greeter client that
// dials xdsTarget. An init container writes each pod's GRPC_XDS_BOOTSTRAP
// with `ballast bootstrap` (its default server:
// ballast-control.ballast-system.svc:15010, resolved by cluster DNS). Pods
// here are processes, so the file lives in a host folder (a hostPath
// volume), one file per pod.
func proxylessClients(image string, replicas int, bootstrapDir string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[4]s
  namespace: default
spec:
  replicas: %[2]d
  selector:
    matchLabels: {app: %[4]s}
  template:
    metadata:
      labels: {app: %[4]s}
    spec:
      terminationGracePeriodSeconds: 5
      initContainers:
      - name: xds-bootstrap
        image: %[1]s
        command: ["ballast", "bootstrap", "--out", "$(GRPC_XDS_BOOTSTRAP)"]
        env: &env
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: GRPC_XDS_BOOTSTRAP
          value: %[3]s/$(POD_NAME).json
        volumeMounts: &mounts
        - {name: bootstrap, mountPath: %[3]s}
      containers:
      - name: client
        image: %[1]s
        command: ["ballast", "greeter", "client", "--listen", ":8081", "--target", %[5]q]
        env: *env
        volumeMounts: *mounts
        ports:
        - {name: http, containerPort: 8081}
        readinessProbe:
          tcpSocket: {port: 8081}
          periodSeconds: 1
      volumes:
      - name: bootstrap
        hostPath: {path: %[3]s}
`, image, replicas, bootstrapDir, xdsClients, xdsTarget)
}

// TestProxylessOnKubernetes is issue #4's promise on real Kubernetes:
// the control plane installed from deploy/control (its RBAC, two replicas),
// greeter clients with a bootstrap from `ballast bootstrap` dialling
// xds:///native-tools-2.default:50051 spread every call over the pods,
// follow a scale-up, lose no call when a pod or the control plane goes
// away, and a NACK is counted and shown by the deployed control plane.
func TestProxylessOnKubernetes(t *testing.T) {
	ctx := ctxFor(t, 15*time.Minute)
	bootstrapDir := hostDir(t, "ballast-xds-bootstrap-")
	deployControlPlane(t, ctx)

	apply(t, ctx, devcluster.ArticleManifests(image, 3))
	apply(t, ctx, proxylessClients(image, 2, bootstrapDir))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		del := devcluster.ArticleManifests(image, 3) + "---\n" + proxylessClients(image, 2, bootstrapDir)
		if _, err := cluster.Kubectl(ctx, strings.NewReader(del), "delete", "--ignore-not-found", "--wait=true", "--timeout=2m", "-f", "-"); err != nil {
			t.Errorf("tear down the greeters and clients: %v", err)
		}
	})
	if err := cluster.WaitReadyEndpoints(ctx, "default", "native-tools-2", "grpc", 3, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	greeters := podNames(waitReadyPods(t, ctx, "default", "native-tools-2", 3))
	clients := podNames(waitReadyPods(t, ctx, "default", xdsClients, 2))
	// Each step starts from where the last one left the cluster.
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("bootstrap", func(t *testing.T) {
		for _, c := range clients {
			data, err := os.ReadFile(filepath.Join(bootstrapDir, c+".json"))
			if err != nil {
				t.Fatalf("bootstrap of %s: %v", c, err)
			}
			var b struct {
				XDSServers []struct {
					ServerURI string `json:"server_uri"`
				} `json:"xds_servers"`
				Node struct {
					ID string `json:"id"`
				} `json:"node"`
			}
			if err := json.Unmarshal(data, &b); err != nil {
				t.Fatalf("bootstrap of %s: %v: %s", c, err, data)
			}
			if len(b.XDSServers) != 1 || b.XDSServers[0].ServerURI != "ballast-control.ballast-system.svc:15010" || b.Node.ID != nodeID(c) {
				t.Fatalf("bootstrap of %s = %s", c, data)
			}
		}
	})

	step("spread over 3 pods", func(t *testing.T) {
		for _, c := range clients {
			// The channel connects to each pod on its own; count once
			// every pod has answered this client.
			warm := callUntilAnswered(t, ctx, "default", c, greeters)
			counts := calls(t, ctx, c, 30)
			t.Logf("client %s: every pod answered within %d calls; then 30 calls: %v", c, warm, counts)
			checkSpread(t, counts, greeters, 30)
		}
	})

	step("scale 3 to 5", func(t *testing.T) {
		began := time.Now()
		kubectl(t, ctx, "-n", "default", "scale", "deployment/native-tools-2", "--replicas=5")
		if err := cluster.WaitReadyEndpoints(ctx, "default", "native-tools-2", "grpc", 5, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		endpoints := time.Since(began)
		five := podNames(waitReadyPods(t, ctx, "default", "native-tools-2", 5))
		for _, c := range clients {
			callUntilAnswered(t, ctx, "default", c, five)
		}
		t.Logf("3 → 5: 5 ready endpoints after %s; both clients had calls answered by all 5 pods after %s",
			endpoints.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
		for _, c := range clients {
			counts := calls(t, ctx, c, 50)
			t.Logf("client %s: 50 calls: %v", c, counts)
			checkSpread(t, counts, five, 50)
		}
		greeters = five
	})

	step("greeter pod deleted under load", func(t *testing.T) {
		l := startLoad(t, ctx, clients)
		l.waitAnswered(t, ctx, greeters...)
		victim := greeters[0]
		began := time.Now()
		if err := cluster.Client.CoreV1().Pods("default").Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		replacement := newReadyGreeter(t, ctx, greeters)
		l.waitAnswered(t, ctx, replacement)
		t.Logf("deleted %s; its replacement %s answered every client after %s", victim, replacement, time.Since(began).Round(time.Millisecond))
		if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
			_, err := cluster.Client.CoreV1().Pods("default").Get(ctx, victim, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			t.Fatalf("pod %s still there: %v", victim, err)
		}
		t.Logf("%s gone after %s", victim, time.Since(began).Round(time.Millisecond))
		l.stopAndCheck(t)
		greeters = podNames(waitReadyPods(t, ctx, "default", "native-tools-2", 5))
	})

	step("control plane restart under load", func(t *testing.T) {
		l := startLoad(t, ctx, clients)
		l.waitAnswered(t, ctx, greeters...)
		serving := controlPodsServing(t, ctx, clients)
		began := time.Now()
		// Delete every control-plane pod a client is connected to: each
		// client loses its stream, keeps its config meanwhile, and
		// reconnects through the Service to a replica still up or new.
		for _, p := range serving {
			if err := cluster.Client.CoreV1().Pods(controlNS).Delete(ctx, p, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		err := devcluster.Poll(ctx, 3*time.Minute, func(ctx context.Context) (bool, error) {
			now := controlPodsServingNow(ctx, clients)
			for _, c := range clients {
				p, ok := now[c]
				if !ok || slices.Contains(serving, p) {
					return false, nil
				}
			}
			return len(readyControlPods(t, ctx)) == 2, nil
		})
		if err != nil {
			t.Fatalf("clients did not reconnect to a live control plane after %v were deleted: %v", serving, err)
		}
		t.Logf("deleted control-plane pods %v (all that served the clients); both clients on a live replica and 2 ready after %s",
			serving, time.Since(began).Round(time.Millisecond))
		// The replicas that now serve them push: a new pod gets calls.
		kubectl(t, ctx, "-n", "default", "scale", "deployment/native-tools-2", "--replicas=6")
		added := newReadyGreeter(t, ctx, greeters)
		l.waitAnswered(t, ctx, added)
		t.Logf("after the restart, a sixth greeter %s answered every client", added)
		l.stopAndCheck(t)
	})

	step("NACK", func(t *testing.T) {
		nackOnTheHarness(t, ctx, clients[0])
	})
}

// deployControlPlane installs deploy/control-insecure (deploy/control as
// written, with --insecure: grpc-go proxyless clients send no token over
// plaintext, see docs/security.md), as a user would: the control plane
// runs on its own ServiceAccount through client-go's in-cluster config,
// with the manifests' RBAC enforced. It waits for both
// replicas to be Ready and the Service to have them as endpoints, checks
// that the pods' identity is refused what the ClusterRole does not grant,
// and removes everything at cleanup.
func deployControlPlane(t *testing.T, ctx context.Context) {
	t.Helper()
	dir := deployDir(t, "control-insecure")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, err := cluster.Kubectl(ctx, nil, "delete", "--ignore-not-found", "--wait=true", "--timeout=2m", "-k", dir); err != nil {
			t.Errorf("remove the control plane: %v", err)
		}
		// Its namespace held the injector of any mesh an earlier test set
		// up: the next setupMesh installs it again.
		meshReady = false
	})
	kubectl(t, ctx, "apply", "-k", dir)
	kubectl(t, ctx, "-n", controlNS, "rollout", "status", "deployment/ballast-control", "--timeout=2m")
	if err := cluster.WaitReadyEndpoints(ctx, controlNS, "ballast-control", "grpc-xds", 2, time.Minute); err != nil {
		t.Fatal(err)
	}
	checkControlRBAC(t, ctx)
}

// checkControlRBAC: from inside a control-plane pod, with its mounted
// token and in-cluster config (kubectl reads them as client-go does), the
// API server knows the pod as its ServiceAccount, lets it read what
// discovery reads and refuses the rest.
func checkControlRBAC(t *testing.T, ctx context.Context) {
	t.Helper()
	pods := readyControlPods(t, ctx)
	if len(pods) == 0 {
		t.Fatal("no ready control-plane pod")
	}
	// The pod's own credentials: the token mounted in its container (its
	// image has no kubectl to run there).
	token, err := cluster.ContainerFile(controlNS, pods[0], "control", "/var/run/secrets/kubernetes.io/serviceaccount/token")
	if err != nil {
		t.Fatal(err)
	}
	inPod := func(args ...string) (string, error) {
		var stderr strings.Builder
		// The API server on 127.0.0.1 with the harness's own certificate,
		// as the admin kubeconfig reaches it.
		cmd := exec.CommandContext(ctx, filepath.Join(cluster.Bin, "kubectl"), append([]string{"--kubeconfig", os.DevNull,
			"--server", cluster.Config.Host, "--insecure-skip-tls-verify", "--token", strings.TrimSpace(string(token))}, args...)...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("kubectl %v: %w: %s", args, err, stderr.String())
		}
		return string(out), nil
	}
	who, err := inPod("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
	if err != nil || who != "system:serviceaccount:"+controlNS+":ballast-control" {
		t.Fatalf("in the control-plane pod, the API server knows %q (%v)", who, err)
	}
	if _, err := inPod("get", "endpointslices", "-A"); err != nil {
		t.Fatalf("the control plane may not list EndpointSlices: %v", err)
	}
	for _, denied := range [][]string{
		{"get", "secrets", "-n", controlNS},
		{"get", "configmaps", "-A"},
		{"delete", "service", "-n", controlNS, "ballast-control", "--dry-run=server"},
	} {
		out, err := inPod(denied...)
		if err == nil || !strings.Contains(err.Error(), "Forbidden") {
			t.Fatalf("kubectl %v as ballast-control: %q, %v; want Forbidden by RBAC", denied, out, err)
		}
	}
}

// hostDir is a folder on the host that pods (processes) read and write,
// removed at cleanup, after the pods that use it (cleanups run last first).
func hostDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Writable by the images' non-root user.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

func podNames(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	slices.Sort(out)
	return out
}

func nodeID(pod string) string { return "ballast~" + pod + ".default" }

// calls makes n calls through a client pod and counts the answering pods;
// any failed call fails the test.
func calls(t *testing.T, ctx context.Context, client string, n int) map[string]int {
	t.Helper()
	hc, err := cluster.PodHTTPClient("default", client)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for i := range n {
		pod, err := devcluster.Greet(ctx, hc)
		if err != nil {
			t.Fatalf("call %d through %s: %v", i+1, client, err)
		}
		counts[pod]++
	}
	return counts
}

// callUntilAnswered calls through client pod ns/client, at most 300 times
// in two minutes, until every one of pods has answered, and returns the
// number of calls it took. Calls fail while the client's channel waits for
// its first xDS config; those are retried.
func callUntilAnswered(t *testing.T, ctx context.Context, ns, client string, pods []string) int {
	t.Helper()
	hc, err := cluster.PodHTTPClient(ns, client)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	n := 0
	var last error
	err = devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		for range 30 {
			if n >= 300 {
				return false, fmt.Errorf("300 calls")
			}
			n++
			pod, err := devcluster.Greet(ctx, hc)
			if err != nil {
				last = err
				return false, nil
			}
			seen[pod] = true
			if !slices.ContainsFunc(pods, func(p string) bool { return !seen[p] }) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("client %s: not every one of %v answered (answered: %v; last error: %v): %v", client, pods, seen, last, err)
	}
	return n
}

// checkSpread asserts that every pod answered and that the busiest took at
// most maxOverMean times the mean.
func checkSpread(t *testing.T, counts map[string]int, pods []string, n int) {
	t.Helper()
	mean := float64(n) / float64(len(pods))
	busiest := 0
	for _, p := range pods {
		if counts[p] == 0 {
			t.Errorf("pod %s answered none of %d calls: %v", p, n, counts)
		}
		busiest = max(busiest, counts[p])
	}
	for p := range counts {
		if !slices.Contains(pods, p) {
			t.Errorf("pod %s answered but is not one of %v", p, pods)
		}
	}
	if r := float64(busiest) / mean; r > maxOverMean {
		t.Errorf("max/mean = %.2f > %.2f over %d calls: %v", r, maxOverMean, n, counts)
	}
}

// load calls through every client pod concurrently, paced and bounded (see
// loadPace, loadMaxCalls, loadFor), and records who answered and what failed.
type load struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	calls    map[string]int            // by client
	answered map[string]map[string]int // client → greeter → calls
	failures []string
	spent    []string // clients that hit a limit before stop
}

func startLoad(t *testing.T, ctx context.Context, clients []string) *load {
	t.Helper()
	return startLoadIn(t, ctx, "default", clients)
}

// startLoadIn is startLoad through client pods in namespace ns.
func startLoadIn(t *testing.T, ctx context.Context, ns string, clients []string) *load {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, loadFor)
	l := &load{cancel: cancel, done: make(chan struct{}), calls: map[string]int{}, answered: map[string]map[string]int{}}
	var wg sync.WaitGroup
	for _, c := range clients {
		hc, err := cluster.PodHTTPClient(ns, c)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		l.answered[c] = map[string]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(loadPace)
			defer tick.Stop()
			for range loadMaxCalls {
				select {
				case <-ctx.Done():
					if ctx.Err() == context.DeadlineExceeded {
						l.spend(c)
					}
					return
				case <-tick.C:
				}
				pod, err := devcluster.Greet(ctx, hc)
				if ctx.Err() != nil {
					continue // cut short by stop: not a failed call
				}
				l.record(c, pod, err)
			}
			l.spend(c)
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	t.Cleanup(func() { cancel(); <-l.done })
	return l
}

func (l *load) record(client, pod string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls[client]++
	if err != nil {
		l.failures = append(l.failures, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), client, err))
		return
	}
	l.answered[client][pod]++
}

func (l *load) spend(client string) {
	l.mu.Lock()
	l.spent = append(l.spent, client)
	l.mu.Unlock()
}

// waitAnswered waits until every client has had a call answered by each of
// pods.
func (l *load) waitAnswered(t *testing.T, ctx context.Context, pods ...string) {
	t.Helper()
	var missing []string
	err := devcluster.Poll(ctx, 2*time.Minute, func(context.Context) (bool, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		missing = missing[:0]
		for c, by := range l.answered {
			for _, p := range pods {
				if by[p] == 0 {
					missing = append(missing, c+"→"+p)
				}
			}
		}
		return len(missing) == 0 || len(l.spent) > 0, nil
	})
	l.mu.Lock()
	spent := len(l.spent) > 0
	l.mu.Unlock()
	if spent {
		t.Fatalf("the load reached its limits (%d calls or %s per client) first; still missing %v", loadMaxCalls, loadFor, missing)
	}
	if err != nil {
		t.Fatalf("no answer under load for %v: %v", missing, err)
	}
}

// stopAndCheck ends the load and asserts that no call failed and that it
// really ran (each client made calls throughout).
func (l *load) stopAndCheck(t *testing.T) {
	t.Helper()
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	for c, n := range l.calls {
		t.Logf("load through %s: %d calls, per pod %v", c, n, l.answered[c])
		if n < 50 {
			t.Errorf("only %d calls through %s: not much of a load", n, c)
		}
	}
	if len(l.failures) > 0 {
		t.Errorf("%d calls failed, first ones:\n%s", len(l.failures), strings.Join(l.failures[:min(len(l.failures), 10)], "\n"))
	}
}

// controlPodsServing lists the control-plane pods that have a stream from
// at least one of clients, once every client has one.
func controlPodsServing(t *testing.T, ctx context.Context, clients []string) []string {
	t.Helper()
	var now map[string]string
	err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		now = controlPodsServingNow(ctx, clients)
		return len(now) == len(clients), nil
	})
	if err != nil {
		t.Fatalf("not every client %v has a control-plane stream (have %v): %v", clients, now, err)
	}
	var out []string
	for _, p := range now {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// controlPodsServingNow maps each client pod to the ready control-plane pod
// whose /debug/clients shows its node id.
func controlPodsServingNow(ctx context.Context, clients []string) map[string]string {
	out := map[string]string{}
	list, err := cluster.Client.CoreV1().Pods(controlNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		return out
	}
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		var streams []struct {
			NodeID string `json:"nodeId"`
		}
		if err := controlGet(ctx, p.Name, "/debug/clients", &streams); err != nil {
			continue
		}
		for _, s := range streams {
			for _, c := range clients {
				if s.NodeID == nodeID(c) {
					out[c] = p.Name
				}
			}
		}
	}
	return out
}

// controlGet reads a control-plane pod's HTTP endpoint from inside its
// network namespace; into is JSON-decoded, or gets the text if a *string.
// /debug/ paths are on the debug listener, which listens on the pod's
// loopback only (as kubectl port-forward reaches it).
func controlGet(ctx context.Context, pod, path string, into any) error {
	hc, err := cluster.PodHTTPClient(controlNS, pod)
	if err != nil {
		return err
	}
	port := "15014"
	if strings.HasPrefix(path, "/debug/") {
		port = "15015"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+port+path, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", pod, path, resp.Status)
	}
	if s, ok := into.(*string); ok {
		var b strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
		}
		*s = b.String()
		return sc.Err()
	}
	return json.NewDecoder(resp.Body).Decode(into)
}

// nackOnTheHarness: a client that rejects an update from the deployed
// control plane is counted (ballast_xds_nacks_total), shown with its error
// in /debug/clients, and every client keeps being served. grpc-go's own
// rejection of a bad resource is covered in-process (xds TestProxylessGRPC):
// no Kubernetes object makes Translate emit a resource grpc-go rejects, so
// here the NACK comes from a raw ADS client, dialled from inside a client
// pod to a control-plane pod's address. It ACKs the Service's Cluster,
// then NACKs the update that an lb-policy annotation brings, as a client
// with no least_request support would.
func nackOnTheHarness(t *testing.T, ctx context.Context, from string) {
	ctrls := readyControlPods(t, ctx)
	if len(ctrls) == 0 {
		t.Fatal("no ready control-plane pod")
	}
	ctrl := ctrls[0]
	pod, err := cluster.Client.CoreV1().Pods(controlNS).Get(ctx, ctrl, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := nacks(t, ctx, ctrl)
	dial, err := cluster.PodDialer("default", from)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(pod.Status.PodIP, "15010"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	const probe = "nack-probe"
	clusterName := "native-tools-2.default.svc.cluster.local:50051"
	request := func(version, nonce string, reject *statuspb.Status) {
		t.Helper()
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: nodeID(probe)}, TypeUrl: resourcev3.ClusterType,
			ResourceNames: []string{clusterName}, VersionInfo: version, ResponseNonce: nonce, ErrorDetail: reject}); err != nil {
			t.Fatal(err)
		}
	}
	receive := func() *discoveryv3.DiscoveryResponse {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetResources()) != 1 {
			t.Fatalf("control plane sent %d clusters for %s, want 1", len(resp.GetResources()), clusterName)
		}
		return resp
	}
	probeState := func(ctx context.Context) (status, detail string) {
		var streams []struct {
			NodeID string `json:"nodeId"`
			Types  map[string]struct {
				Status string `json:"status"`
				Error  string `json:"error"`
			} `json:"types"`
		}
		if err := controlGet(ctx, ctrl, "/debug/clients", &streams); err != nil {
			return "", err.Error()
		}
		for _, s := range streams {
			if s.NodeID == nodeID(probe) {
				return s.Types["cluster"].Status, s.Types["cluster"].Error
			}
		}
		return "", ""
	}

	request("", "", nil)
	good := receive()
	request(good.GetVersionInfo(), good.GetNonce(), nil)
	if err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		st, _ := probeState(ctx)
		return st == "ACKED", nil
	}); err != nil {
		t.Fatalf("%s never saw the probe's ACK: %v", ctrl, err)
	}

	annotation := policy.LBAnnotation + "=" + string(policy.LeastRequest)
	kubectl(t, ctx, "-n", "default", "annotate", "--overwrite", "service/native-tools-2", annotation)
	defer kubectl(t, ctx, "-n", "default", "annotate", "service/native-tools-2", policy.LBAnnotation+"-")
	update := receive()
	const reason = "e2e: least_request is not supported here"
	request(good.GetVersionInfo(), update.GetNonce(), &statuspb.Status{Code: int32(codes.InvalidArgument), Message: reason})

	var st, detail string
	var after float64
	err = devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		st, detail = probeState(ctx)
		after = nacks(t, ctx, ctrl)
		return st == "NACKED" && after > before, nil
	})
	if err != nil {
		t.Fatalf("NACK not shown and counted by %s (debug state %q %q, nacks %v → %v): %v", ctrl, st, detail, before, after, err)
	}
	if detail != reason {
		t.Fatalf("/debug/clients error = %q, want the client's %q", detail, reason)
	}
	t.Logf("%s: NACK counted (ballast_xds_nacks_total{type=\"cluster\"} %v → %v) and shown with its error", ctrl, before, after)
	// The greeter clients took the same update and are still served by
	// every pod.
	greeters := podNames(readyPods(t, ctx, "default", "native-tools-2"))
	for _, c := range podNames(readyPods(t, ctx, "default", xdsClients)) {
		callUntilAnswered(t, ctx, "default", c, greeters)
	}
}

// nacks reads ballast_xds_nacks_total{type="cluster"} from a control-plane
// pod's /metrics.
func nacks(t *testing.T, ctx context.Context, pod string) float64 {
	t.Helper()
	var text string
	if err := controlGet(ctx, pod, "/metrics", &text); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, `ballast_xds_nacks_total{type="cluster"} `); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s /metrics: %q: %v", pod, line, err)
			}
			return f
		}
	}
	t.Fatalf("%s /metrics has no ballast_xds_nacks_total{type=\"cluster\"}", pod)
	return 0
}

// newReadyGreeter waits for a Ready greeter pod that is not one of known
// and returns its name.
func newReadyGreeter(t *testing.T, ctx context.Context, known []string) string {
	t.Helper()
	var added string
	if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		for _, p := range podNames(readyPods(t, ctx, "default", "native-tools-2")) {
			if !slices.Contains(known, p) {
				added = p
			}
		}
		return added != "", nil
	}); err != nil {
		t.Fatalf("no new ready greeter besides %v: %v", known, err)
	}
	return added
}

// readyControlPods lists the control-plane pods that are Ready and not
// terminating.
func readyControlPods(t *testing.T, ctx context.Context) []string {
	t.Helper()
	list, err := cluster.Client.CoreV1().Pods(controlNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=ballast-control"})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				out = append(out, p.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}
