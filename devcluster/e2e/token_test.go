package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/devcluster"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// tokenClockAhead is how far the cluster's token clock runs ahead of
// time.Now, in nanoseconds (see devcluster.Options.TokenClock).
var tokenClockAhead atomic.Int64

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// tokenApp is a pod with the automounted ServiceAccount token, a
// projected token for its own audience, and a pod that opts out of
// automount.
func tokenApp(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: Pod
metadata:
  name: tokens
  namespace: %[1]s
  labels: {app: tokens}
spec:
  terminationGracePeriodSeconds: 0
  volumes:
  - name: aud
    projected:
      sources:
      - serviceAccountToken: {audience: ballast-e2e, expirationSeconds: 600, path: token}
  containers:
  - name: main
    image: host:sh
    command: ["sh", "-c", "while true; do sleep 1; done"]
    volumeMounts: [{name: aud, mountPath: /srv/ballast-e2e/aud}]
---
apiVersion: v1
kind: Pod
metadata:
  name: notoken
  namespace: %[1]s
  labels: {app: notoken}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: host:sh
    command: ["sh", "-c", "while true; do sleep 1; done"]
`, ns)
}

// TestServiceAccountToken: the automounted token, ca.crt and namespace are
// where client-go's in-cluster config reads them, the token is the pod's
// ServiceAccount's, and a pod without automount has none.
func TestServiceAccountToken(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	const ns = "satoken"
	apply(t, ctx, tokenApp(ns))
	waitReadyPods(t, ctx, ns, "tokens", 1)
	waitReadyPods(t, ctx, ns, "notoken", 1)
	exec := func(pod string, argv ...string) string {
		return kubectl(t, ctx, append([]string{"-n", ns, "exec", pod, "--"}, argv...)...)
	}
	if got := exec("tokens", "cat", saDir+"/namespace"); got != ns {
		t.Fatalf("namespace file: %q", got)
	}
	ca, err := cluster.Client.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := exec("tokens", "cat", saDir+"/ca.crt"); got != ca.Data["ca.crt"] {
		t.Fatalf("ca.crt is not kube-root-ca.crt's:\n%s", got)
	}
	review(t, ctx, exec("tokens", "cat", saDir+"/token"), "", "system:serviceaccount:"+ns+":default")
	review(t, ctx, exec("tokens", "cat", "/srv/ballast-e2e/aud/token"), "ballast-e2e", "system:serviceaccount:"+ns+":default")
	if out, err := cluster.Kubectl(ctx, nil, "-n", ns, "exec", "notoken", "--", "cat", saDir+"/token"); err == nil {
		t.Fatalf("a pod with automountServiceAccountToken: false has a token: %s", out)
	}
}

// TestProjectedTokenRotates: once 80% of a projected token's lifetime has
// passed, the file holds a new token, which the API server accepts.
func TestProjectedTokenRotates(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	const ns = "tokenrotation"
	apply(t, ctx, tokenApp(ns))
	waitReadyPods(t, ctx, ns, "tokens", 1)
	read := func() string {
		return kubectl(t, ctx, "-n", ns, "exec", "tokens", "--", "cat", "/srv/ballast-e2e/aud/token")
	}
	first := read()
	review(t, ctx, first, "ballast-e2e", "system:serviceaccount:"+ns+":default")
	// 81% of the 600s lifetime.
	tokenClockAhead.Add(int64(486 * time.Second))
	var second string
	err := devcluster.Poll(ctx, 30*time.Second, func(context.Context) (bool, error) {
		second = read()
		return second != first && second != "", nil
	})
	if err != nil {
		t.Fatalf("the projected token was not rotated: %v", err)
	}
	review(t, ctx, second, "ballast-e2e", "system:serviceaccount:"+ns+":default")
}

// review asks the API server who token is, for audience ("" for its own).
func review(t *testing.T, ctx context.Context, token, audience, want string) {
	t.Helper()
	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: strings.TrimSpace(token)}}
	if audience != "" {
		tr.Spec.Audiences = []string{audience}
	}
	got, err := cluster.Client.AuthenticationV1().TokenReviews().Create(ctx, tr, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Status.Authenticated || got.Status.User.Username != want {
		t.Fatalf("token for audience %q: authenticated %v as %q (%s), want %s", audience, got.Status.Authenticated, got.Status.User.Username, got.Status.Error, want)
	}
}
