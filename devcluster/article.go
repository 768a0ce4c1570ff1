package devcluster

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/greeter"
)

// ArticleNamespace is where the article's objects live.
const ArticleNamespace = "default"

// ArticleManifests are the article's objects: the Service native-tools-2
// (http 8081, grpc 50051), a Deployment of greeters behind it, and the
// client pod native-tools that serves /grpc_client on 8081. image is the
// image that maps to the ballast binary (e.g. "ballast:dev"); clientArgs
// are extra arguments of `ballast greeter client`.
func ArticleManifests(image string, replicas int, clientArgs ...string) string {
	return ArticleManifestsIn(ArticleNamespace, image, replicas, clientArgs...)
}

// ArticleManifestsIn is ArticleManifests in another namespace (which must
// exist): the same objects, say for a namespace labelled for sidecar
// injection while default stays plain.
func ArticleManifestsIn(namespace, image string, replicas int, clientArgs ...string) string {
	return ArticleServers(namespace, image, replicas) + "---\n" + ArticleClient(namespace, image, ClientPlain, clientArgs...)
}

// ArticleServers is the article's Service native-tools-2 and the
// Deployment of greeters behind it.
func ArticleServers(namespace, image string, replicas int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: native-tools-2
  namespace: %[3]s
spec:
  selector:
    app: native-tools-2
  ports:
  - name: http
    port: 8081
    targetPort: 8081
  - name: grpc
    port: 50051
    targetPort: 50051
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: native-tools-2
  namespace: %[3]s
spec:
  replicas: %[2]d
  selector:
    matchLabels:
      app: native-tools-2
  template:
    metadata:
      labels:
        app: native-tools-2
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: greeter
        image: %[1]s
        command: ["ballast", "greeter", "serve", "--address", ":50051"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        ports:
        - {name: grpc, containerPort: 50051}
        readinessProbe:
          grpc: {port: 50051}
          periodSeconds: 1
`, image, replicas, namespace)
}

// ClientKind is how the article's client pod reaches Services.
type ClientKind int

const (
	// ClientPlain is the article's client as written.
	ClientPlain ClientKind = iota
	// ClientKubernetes may read Services and EndpointSlices (a
	// ClusterRole bound to the namespace's default ServiceAccount), for
	// kubernetes:/// targets.
	ClientKubernetes
	// ClientXDS has an xDS bootstrap from `ballast bootstrap` (an init
	// container writes it into an emptyDir), for xds:/// targets.
	ClientXDS
)

// ArticleClient is the client pod native-tools, serving /grpc_client on
// 8081; clientArgs are extra arguments of `ballast greeter client`.
func ArticleClient(namespace, image string, kind ClientKind, clientArgs ...string) string {
	args := ""
	for _, a := range clientArgs {
		args += fmt.Sprintf(", %q", a)
	}
	var rbac, initContainers, env, mounts, volumes string
	switch kind {
	case ClientKubernetes:
		// The resolver reads every namespace: a target may name any.
		rbac = fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kubernetes-resolver}
rules:
- {apiGroups: [""], resources: [services], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kubernetes-resolver-%[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kubernetes-resolver}
subjects:
- {kind: ServiceAccount, name: default, namespace: %[1]s}
---
`, namespace)
	case ClientXDS:
		initContainers = fmt.Sprintf(`  initContainers:
  - name: xds-bootstrap
    image: %s
    command: ["ballast", "bootstrap", "--out", "/etc/ballast/bootstrap.json"]
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    volumeMounts: [{name: xds, mountPath: /etc/ballast}]
`, image)
		env = "    - {name: GRPC_XDS_BOOTSTRAP, value: /etc/ballast/bootstrap.json}\n"
		mounts = "    volumeMounts: [{name: xds, mountPath: /etc/ballast}]\n"
		volumes = "  volumes: [{name: xds, emptyDir: {}}]\n"
	}
	return fmt.Sprintf(`%[4]sapiVersion: v1
kind: Pod
metadata:
  name: native-tools
  namespace: %[3]s
  labels:
    app: native-tools
spec:
  terminationGracePeriodSeconds: 5
%[5]s  containers:
  - name: client
    image: %[1]s
    command: ["ballast", "greeter", "client", "--listen", ":8081"%[2]s]
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
%[6]s    ports:
    - {name: http, containerPort: 8081}
%[7]s    readinessProbe:
      tcpSocket: {port: 8081}
      periodSeconds: 1
%[8]s`, image, args, namespace, rbac, initContainers, env, mounts, volumes)
}

// ArticleCalls makes n calls through the client pod's
// /grpc_client?name=native-tools-2, from inside its network namespace,
// and counts the pod that answered each: the article's experiment.
func (c *Cluster) ArticleCalls(ctx context.Context, n int) (map[string]int, error) {
	return c.ArticleCallsIn(ctx, ArticleNamespace, n)
}

// ArticleCallsIn is ArticleCalls for the client pod in namespace.
func (c *Cluster) ArticleCallsIn(ctx context.Context, namespace string, n int) (map[string]int, error) {
	client, err := c.PodHTTPClient(namespace, "native-tools")
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for i := range n {
		pod, err := Greet(ctx, client)
		if err != nil {
			return counts, fmt.Errorf("call %d: %w", i+1, err)
		}
		counts[pod]++
	}
	return counts, nil
}

// Greet makes one call through a greeter client pod's
// /grpc_client?name=native-tools-2 with client (from PodHTTPClient of that
// pod) and returns the name of the pod that answered.
func Greet(ctx context.Context, client *http.Client) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:8081/grpc_client?name=native-tools-2", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	msg, ok := strings.CutPrefix(string(body), "Greeting: ")
	if !ok {
		return "", fmt.Errorf("unexpected answer %q", body)
	}
	return greeter.PodOf(msg), nil
}

// RunArticle applies the article's objects with the given greeter
// replicas, waits until they serve, and returns the per-pod counts of n
// calls. It is what `ballast demo --kube` replays.
func (c *Cluster) RunArticle(ctx context.Context, image string, replicas, n int, clientArgs ...string) (map[string]int, error) {
	if err := c.Apply(ctx, ArticleManifests(image, replicas, clientArgs...)); err != nil {
		return nil, err
	}
	if err := c.WaitReadyEndpoints(ctx, ArticleNamespace, "native-tools-2", "grpc", replicas, 2*time.Minute); err != nil {
		return nil, err
	}
	if err := c.WaitClusterIPEndpoints(ctx, ArticleNamespace, "native-tools-2", "grpc", replicas, 2*time.Minute); err != nil {
		return nil, err
	}
	if err := c.WaitPodReady(ctx, ArticleNamespace, "native-tools", 2*time.Minute); err != nil {
		return nil, err
	}
	return c.ArticleCalls(ctx, n)
}

// WaitClusterIPEndpoints waits until connections to a Service port's
// ClusterIP reach want endpoints: its EndpointSlices are written before the
// dev cluster's kube-proxy applies them, as in a real cluster.
func (c *Cluster) WaitClusterIPEndpoints(ctx context.Context, namespace, service, port string, want int, timeout time.Duration) error {
	var got int
	err := Poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		svc, err := c.Client.CoreV1().Services(namespace).Get(ctx, service, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil {
			return false, fmt.Errorf("service %s/%s has no ClusterIP (%q)", namespace, service, svc.Spec.ClusterIP)
		}
		for _, p := range svc.Spec.Ports {
			if p.Name == port {
				got = c.proxy.endpointsProgrammed(ip, p.Port)
				return got == want, nil
			}
		}
		return false, fmt.Errorf("service %s/%s has no port %q", namespace, service, port)
	})
	if err != nil {
		return fmt.Errorf("%s/%s port %s: %d endpoints behind its ClusterIP, want %d: %w", namespace, service, port, got, want, err)
	}
	return nil
}

// WaitPodReady waits for the pod's Ready condition.
func (c *Cluster) WaitPodReady(ctx context.Context, namespace, name string, timeout time.Duration) error {
	err := Poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		pod, err := c.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == "Ready" && cond.Status == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("pod %s/%s ready: %w", namespace, name, err)
	}
	return nil
}

// ReadyEndpoints counts the ready endpoints of a Service port across its
// EndpointSlices, as the endpointslice controller wrote them.
func (c *Cluster) ReadyEndpoints(ctx context.Context, namespace, service, port string) (ready, terminating int, err error) {
	slices, err := c.Client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + service})
	if err != nil {
		return 0, 0, err
	}
	for _, s := range slices.Items {
		has := false
		for _, p := range s.Ports {
			if p.Name != nil && *p.Name == port {
				has = true
			}
		}
		if !has {
			continue
		}
		for _, e := range s.Endpoints {
			switch {
			case e.Conditions.Terminating != nil && *e.Conditions.Terminating:
				terminating++
			case e.Conditions.Ready == nil || *e.Conditions.Ready:
				ready++
			}
		}
	}
	return ready, terminating, nil
}

// WaitReadyEndpoints waits until a Service port has exactly want ready
// endpoints.
func (c *Cluster) WaitReadyEndpoints(ctx context.Context, namespace, service, port string, want int, timeout time.Duration) error {
	var got int
	err := Poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		r, _, err := c.ReadyEndpoints(ctx, namespace, service, port)
		got = r
		return err == nil && r == want, nil
	})
	if err != nil {
		return fmt.Errorf("service %s/%s port %s: want %d ready endpoints, have %d: %w", namespace, service, port, want, got, err)
	}
	return nil
}
