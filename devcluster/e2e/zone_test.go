package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/devcluster"
	"github.com/ballast-dev/ballast/inject"
)

const (
	// zoneNS holds the zone-preference test's objects. It is labelled for
	// injection; only the sidecar client is injected (the others opt out).
	zoneNS = "zone"
	// homeZone is the clients' zone; awayZone the other Node's.
	homeZone, awayZone = "zone-a", "zone-b"
	// inZoneCalls is how many calls each client makes under load before
	// its in-zone share is counted: at 99%, at most 1% of them may leave.
	inZoneCalls = 500
	// minInZone is issue 13's bound on the share of calls that stay in the
	// client's zone while it has ready pods.
	minInZone = 0.99
)

// zoneClients are the three modes' client pods, all in homeZone, each
// serving /grpc_client on 8081 with `ballast greeter client`.
var zoneClients = []string{"zone-library", "zone-proxyless", "zone-sidecar"}

// zoneApp is the Service greeter with trafficDistribution PreferSameZone,
// two greeters on each Node (a Deployment per zone, by nodeSelector), and
// one client per mode on homeZone's Node: the Go library
// (kubernetes:/// with the resolver's RBAC), proxyless (xds:/// with a
// bootstrap from `ballast bootstrap`) and the injected sidecar (the
// article's client, unchanged, dialling greeter:50051). Each learns its
// zone from the downward API: ZONE is the Pod's
// topology.kubernetes.io/zone label, which the API server copies from the
// Node when the scheduler binds the Pod (the PodTopologyLabels admission
// plugin, on by default since Kubernetes 1.35); the webhook gives the
// sidecar the same.
func zoneApp(image string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: %[1]s
spec:
  selector: {app: greeter}
  trafficDistribution: PreferSameZone
  ports:
  - {name: grpc, port: 50051}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: zone-resolver}
rules:
- {apiGroups: [""], resources: [services], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: zone-resolver}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: zone-resolver}
subjects:
- {kind: ServiceAccount, name: default, namespace: %[1]s}
`, zoneNS)
	for _, zone := range []string{homeZone, awayZone} {
		fmt.Fprintf(&b, `---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: greeter-%[2]s
  namespace: %[1]s
spec:
  replicas: 2
  selector:
    matchLabels: {app: greeter, deployment: greeter-%[2]s}
  template:
    metadata:
      labels: {app: greeter, deployment: greeter-%[2]s}
      annotations: {%[4]s: "false"}
    spec:
      terminationGracePeriodSeconds: 5
      nodeSelector: {%[5]s: %[2]s}
      containers:
      - name: greeter
        image: %[3]s
        command: ["ballast", "greeter", "serve", "--address", ":50051"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {name: grpc, containerPort: 50051}
        readinessProbe:
          grpc: {port: 50051}
          periodSeconds: 1
`, zoneNS, zone, image, inject.OptOutAnnotation, corev1.LabelTopologyZone)
	}
	env := fmt.Sprintf(`
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: ZONE
      valueFrom: {fieldRef: {fieldPath: "metadata.labels['%s']"}}`, corev1.LabelTopologyZone)
	for _, c := range []struct{ name, target, annotations, init, volumes, mounts, env string }{
		{name: "zone-library", target: "kubernetes:///greeter." + zoneNS + ":50051",
			annotations: fmt.Sprintf("{%s: \"false\"}", inject.OptOutAnnotation)},
		{name: "zone-proxyless", target: "xds:///greeter." + zoneNS + ":50051",
			annotations: fmt.Sprintf("{%s: \"false\"}", inject.OptOutAnnotation),
			init: fmt.Sprintf(`
  initContainers:
  - name: xds-bootstrap
    image: %s
    command: ["ballast", "bootstrap", "--out", "/etc/ballast/bootstrap.json"]
    env:%s
    volumeMounts: [{name: xds, mountPath: /etc/ballast}]`, image, env),
			env:     "\n    - {name: GRPC_XDS_BOOTSTRAP, value: /etc/ballast/bootstrap.json}",
			mounts:  "\n    volumeMounts: [{name: xds, mountPath: /etc/ballast}]",
			volumes: "\n  volumes: [{name: xds, emptyDir: {}}]"},
		{name: "zone-sidecar", target: "greeter:50051", annotations: "{}"},
	} {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: %[2]s
  namespace: %[1]s
  labels: {app: zone-client}
  annotations: %[4]s
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {%[5]s: %[6]s}%[7]s
  containers:
  - name: client
    image: %[3]s
    command: ["ballast", "greeter", "client", "--listen", ":8081", "--target", %[8]q]
    env:%[9]s%[10]s
    ports:
    - {name: http, containerPort: 8081}%[11]s
    readinessProbe:
      tcpSocket: {port: 8081}
      periodSeconds: 1%[12]s
`, zoneNS, c.name, image, c.annotations, corev1.LabelTopologyZone, homeZone, c.init, c.target, env, c.env, c.mounts, c.volumes)
	}
	return b.String()
}

// TestZonePreference is issue 13's zone preference on the dev cluster's two
// zoned Nodes, in all three modes at once (one setup): a client in zone-a
// calling a Service with trafficDistribution PreferSameZone, under bounded
// load, keeps at least 99% of its calls in zone-a while zone-a has ready
// greeters; when they are deleted under load, every client fails over to
// zone-b without a failed call, and returns to zone-a when greeters are
// back there.
func TestZonePreference(t *testing.T) {
	ctx := ctxFor(t, 10*time.Minute)
	t.Cleanup(func() {
		if t.Failed() {
			dumpState(t, zoneNS, devcluster.MeshNamespace)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, err := cluster.Kubectl(ctx, nil, "delete", "namespace", zoneNS, "--ignore-not-found", "--wait=true", "--timeout=2m"); err != nil {
			t.Errorf("remove namespace %s: %v", zoneNS, err)
		}
		if _, err := cluster.Kubectl(ctx, nil, "delete", "clusterrolebinding,clusterrole", "zone-resolver", "--ignore-not-found"); err != nil {
			t.Errorf("remove the resolver's RBAC: %v", err)
		}
		// The control plane now serves plaintext without authentication:
		// the next setupMesh installs the mesh as it wants it.
		meshReady = false
	})
	// Proxyless clients bootstrap without a token or a CA, so the control
	// plane serves plaintext; the sidecar then dials it that way too.
	if err := cluster.InstallMeshProxyless(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cluster.EnableInjection(ctx, zoneNS); err != nil {
		t.Fatal(err)
	}
	apply(t, ctx, zoneApp(image))
	if err := cluster.WaitReadyEndpoints(ctx, zoneNS, "greeter", "grpc", 4, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, c := range zoneClients {
		if err := cluster.WaitPodReady(ctx, zoneNS, c, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	zones := podZones(t, ctx)
	greetersIn := func(zone string) []string {
		var out []string
		for _, p := range podNames(readyPods(t, ctx, zoneNS, "greeter")) {
			if zones[p] == zone {
				out = append(out, p)
			}
		}
		return out
	}
	home, away := greetersIn(homeZone), greetersIn(awayZone)
	if len(home) != 2 || len(away) != 2 {
		t.Fatalf("ready greeters: %v in %s, %v in %s; want 2 in each", home, homeZone, away, awayZone)
	}
	for _, c := range zoneClients {
		if zones[c] != homeZone {
			t.Fatalf("client %s is in zone %q, want %s", c, zones[c], homeZone)
		}
		pod, err := cluster.Client.CoreV1().Pods(zoneNS).Get(ctx, c, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if want := c == "zone-sidecar"; devcluster.Injected(pod) != want {
			t.Fatalf("client %s injected = %v, want %v", c, !want, want)
		}
	}
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("in zone, then fail over under load", func(t *testing.T) {
		// Warm up: each client's first calls may fail while it learns the
		// endpoints (the proxyless and sidecar clients wait for xDS).
		for _, c := range zoneClients {
			n := callUntilAnswered(t, ctx, zoneNS, c, home)
			t.Logf("%s warmed up in %d calls", c, n)
		}
		l := startLoadIn(t, ctx, zoneNS, zoneClients)
		calls, answered := l.waitCalls(t, ctx, inZoneCalls)
		for _, c := range zoneClients {
			in := 0
			for _, p := range home {
				in += answered[c][p]
			}
			share := float64(in) / float64(calls[c])
			t.Logf("%s: %d of %d calls (%.2f%%) answered in %s: %v", c, in, calls[c], 100*share, homeZone, answered[c])
			if share < minInZone {
				t.Errorf("%s: %.2f%% of calls stayed in %s, want ≥ %.0f%%: %v", c, 100*share, homeZone, 100*minInZone, answered[c])
			}
		}
		if t.Failed() {
			l.stopAndCheck(t)
			return
		}
		began := time.Now()
		kubectl(t, ctx, "-n", zoneNS, "scale", "deployment/greeter-"+homeZone, "--replicas=0")
		l.waitAnswered(t, ctx, away...)
		failover := time.Since(began)
		if err := devcluster.Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
			list, err := cluster.Client.CoreV1().Pods(zoneNS).List(ctx, metav1.ListOptions{LabelSelector: "deployment=greeter-" + homeZone})
			return err == nil && len(list.Items) == 0, nil
		}); err != nil {
			t.Fatalf("the %s greeters are still there: %v", homeZone, err)
		}
		gone := time.Since(began)
		// Calls keep going to zone-b once zone-a has no pod at all.
		after, _ := l.waitCalls(t, ctx, 0)
		l.waitCalls(t, ctx, minCalls(after)+100)
		t.Logf("%s greeters deleted under load: every client answered by %v after %s, the pods gone after %s",
			homeZone, away, failover.Round(time.Millisecond), gone.Round(time.Millisecond))
		l.logFailures(t)
		l.stopAndCheck(t)
	})

	step("back in zone", func(t *testing.T) {
		l := startLoadIn(t, ctx, zoneNS, zoneClients)
		kubectl(t, ctx, "-n", zoneNS, "scale", "deployment/greeter-"+homeZone, "--replicas=2")
		if err := cluster.WaitReadyEndpoints(ctx, zoneNS, "greeter", "grpc", 4, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		zones := podZones(t, ctx)
		var back []string
		for _, p := range podNames(readyPods(t, ctx, zoneNS, "greeter")) {
			if zones[p] == homeZone {
				back = append(back, p)
			}
		}
		if len(back) != 2 {
			t.Fatalf("ready greeters in %s: %v, want 2", homeZone, back)
		}
		l.waitAnswered(t, ctx, back...)
		// From here on the clients stay in zone-a again.
		before, beforeBy := l.waitCalls(t, ctx, 0)
		now, nowBy := l.waitCalls(t, ctx, minCalls(before)+100)
		for _, c := range zoneClients {
			n, in := now[c]-before[c], 0
			for _, p := range back {
				in += nowBy[c][p] - beforeBy[c][p]
			}
			t.Logf("%s: back in %s, %d of the next %d calls answered there", c, homeZone, in, n)
			if float64(in) < minInZone*float64(n) {
				t.Errorf("%s: %d of %d calls in %s once its greeters were back, want ≥ %.0f%%", c, in, n, homeZone, 100*minInZone)
			}
		}
		l.logFailures(t)
		l.stopAndCheck(t)
	})
}

// podZones maps every pod in zoneNS to its topology.kubernetes.io/zone
// label, after checking that the label is its Node's zone: the API server
// set it when the Pod was bound.
func podZones(t *testing.T, ctx context.Context) map[string]string {
	t.Helper()
	nodes, err := cluster.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeZone := map[string]string{}
	for _, n := range nodes.Items {
		nodeZone[n.Name] = n.Labels[corev1.LabelTopologyZone]
	}
	pods, err := cluster.Client.CoreV1().Pods(zoneNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		zone := p.Labels[corev1.LabelTopologyZone]
		if zone == "" || zone != nodeZone[p.Spec.NodeName] {
			t.Fatalf("pod %s on Node %s (zone %q) has label %s=%q: the API server's PodTopologyLabels admission should copy the Node's",
				p.Name, p.Spec.NodeName, nodeZone[p.Spec.NodeName], corev1.LabelTopologyZone, zone)
		}
		out[p.Name] = zone
	}
	return out
}

// waitCalls waits until every client of l has made at least n calls and
// returns, at that moment, the calls per client and who answered them.
func (l *load) waitCalls(t *testing.T, ctx context.Context, n int) (map[string]int, map[string]map[string]int) {
	t.Helper()
	var calls map[string]int
	var answered map[string]map[string]int
	err := devcluster.Poll(ctx, 2*time.Minute, func(context.Context) (bool, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.spent) > 0 {
			return false, fmt.Errorf("the load reached its limits (%d calls or %s per client)", loadMaxCalls, loadFor)
		}
		for _, c := range l.calls {
			if c < n {
				return false, nil
			}
		}
		if len(l.calls) < len(l.answered) {
			return false, nil // a client has not finished its first call
		}
		calls = maps.Clone(l.calls)
		answered = map[string]map[string]int{}
		for c, by := range l.answered {
			answered[c] = maps.Clone(by)
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("waiting for %d calls per client (have %v): %v", n, calls, err)
	}
	return calls, answered
}

// logFailures logs the failed calls per client: the number the issue asks
// for, zero in every mode.
func (l *load) logFailures(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	per := map[string]int{}
	for c := range l.answered {
		per[c] = 0
	}
	for _, f := range l.failures {
		for c := range per {
			if strings.Contains(f, " "+c+": ") {
				per[c]++
			}
		}
	}
	t.Logf("failed calls per client: %v", per)
}

func minCalls(calls map[string]int) int {
	return slices.Min(slices.Collect(maps.Values(calls)))
}
