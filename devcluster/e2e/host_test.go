package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPodReachesAPIServer: a process in a pod reaches the API server at
// the kubernetes Service's ClusterIP with in-cluster config (the mounted
// ServiceAccount token and CA, KUBERNETES_SERVICE_HOST/PORT; no
// $KUBECONFIG), as controllers running in pods do; the Service's endpoint
// is the address the API server advertises, reconciled by it.
func TestPodReachesAPIServer(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	const ns = "apiaccess"
	apply(t, ctx, sleeperApp(ns))
	pod := waitReadyPods(t, ctx, ns, "sleeper", 1)[0]
	out := kubectl(t, ctx, "-n", ns, "exec", pod.Name, "--", filepath.Join(cluster.Bin, "kubectl"), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
	if out != "system:serviceaccount:"+ns+":default" {
		t.Fatalf("kubectl inside the pod is %q", out)
	}
	if env := kubectl(t, ctx, "-n", ns, "exec", pod.Name, "--", "sh", "-c", "echo ${KUBECONFIG-unset}"); strings.TrimSpace(env) != "unset" {
		t.Fatalf("KUBECONFIG in a pod: %q", env)
	}
	eps, err := cluster.Client.DiscoveryV1().EndpointSlices("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(eps.Endpoints) != 1 || len(eps.Endpoints[0].Addresses) != 1 || !cluster.PodCIDR.Contains(netip.MustParseAddr(eps.Endpoints[0].Addresses[0])) {
		t.Fatalf("the kubernetes Service's endpoints: %+v, want the router's address in %s", eps.Endpoints, cluster.PodCIDR)
	}
	env := kubectl(t, ctx, "-n", ns, "exec", pod.Name, "--", "sh", "-c", "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT")
	if want := clusterIP(t, ctx, "default", "kubernetes") + ":443"; strings.TrimSpace(env) != want {
		t.Fatalf("KUBERNETES_SERVICE_HOST:PORT = %q, want %s", env, want)
	}
}

// TestForwardToHost: a server on host loopback (as a test's in-process
// control plane would be) answers a pod through ForwardToHost.
func TestForwardToHost(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "host says hi") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	addr, err := cluster.ForwardToHost(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.ForwardToHost("192.0.2.1:80"); err == nil {
		t.Fatal("ForwardToHost accepted a non-loopback address")
	}
	const ns = "forward"
	apply(t, ctx, sleeperApp(ns))
	pod := waitReadyPods(t, ctx, ns, "sleeper", 1)[0]
	client, err := cluster.PodHTTPClient(ns, pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "host says hi" {
		t.Fatalf("through %s: %q", addr, body)
	}
}
