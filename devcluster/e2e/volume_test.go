package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/devcluster"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumesApp is a pod with one volume of each kind the dev cluster mounts,
// two containers sharing the emptyDir, and the ConfigMap and Secret it
// reads.
func volumesApp(ns string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
---
apiVersion: v1
kind: ConfigMap
metadata: {name: conf, namespace: %[1]s}
data: {greeting: hello, other: ignored}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: %[1]s}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata:
  name: vols
  namespace: %[1]s
  labels: {app: vols, tier: test}
spec:
  hostname: volhost
  subdomain: sub
  terminationGracePeriodSeconds: 0
  volumes:
  - {name: scratch, emptyDir: {}}
  - name: conf
    configMap:
      name: conf
      defaultMode: 0640
      items: [{key: greeting, path: dir/greeting.txt}]
  - {name: creds, secret: {secretName: creds}}
  - name: meta
    downwardAPI:
      items:
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
  - name: all
    projected:
      sources:
      - configMap: {name: conf, items: [{key: greeting, path: greeting}]}
      - secret: {name: creds}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
  initContainers:
  - name: seed
    image: host:sh
    command: ["sh", "-c", "echo seeded > /srv/ballast-e2e/scratch/seed"]
    volumeMounts: [{name: scratch, mountPath: /srv/ballast-e2e/scratch}]
  containers:
  - name: main
    image: host:sh
    command: ["sh", "-c", "while true; do sleep 1; done"]
    volumeMounts:
    - {name: scratch, mountPath: /srv/ballast-e2e/scratch}
    - {name: conf, mountPath: /srv/ballast-e2e/conf, readOnly: true}
    - {name: creds, mountPath: /srv/ballast-e2e/creds, readOnly: true}
    - {name: meta, mountPath: /srv/ballast-e2e/meta}
    - {name: all, mountPath: /srv/ballast-e2e/all}
    - {name: creds, mountPath: /srv/ballast-e2e/password, subPath: password}
  - name: other
    image: host:sh
    command: ["sh", "-c", "while true; do sleep 1; done"]
    volumeMounts: [{name: scratch, mountPath: /srv/ballast-e2e/shared}]
`, ns)
}

// TestVolumes: each volume kind is mounted at its mountPath in the
// container's own mount namespace (not the host's), with items, modes,
// readOnly and subPath honoured, and the pod's hostname and /etc/hosts as
// the kubelet writes them.
func TestVolumes(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	const ns = "volumes"
	apply(t, ctx, volumesApp(ns))
	waitReadyPods(t, ctx, ns, "vols", 1)
	sh := func(container, script string) (string, error) {
		return cluster.Kubectl(ctx, nil, "-n", ns, "exec", "vols", "-c", container, "--", "sh", "-c", script)
	}
	for _, tt := range []struct {
		name, container, script, want string
	}{
		{"emptyDir seeded by the init container", "main", "cat /srv/ballast-e2e/scratch/seed", "seeded"},
		{"emptyDir shared between containers", "other", "echo shared > /srv/ballast-e2e/shared/x && cat /srv/ballast-e2e/shared/seed /srv/ballast-e2e/shared/x", "seeded\nshared"},
		{"configMap item at its path", "main", "cat /srv/ballast-e2e/conf/dir/greeting.txt", "hello"},
		{"configMap defaultMode", "main", "stat -L -c %a /srv/ballast-e2e/conf/dir/greeting.txt", "640"},
		{"configMap items only", "main", "ls /srv/ballast-e2e/conf", "dir"},
		{"configMap readOnly", "main", "touch /srv/ballast-e2e/conf/x 2>/dev/null && echo writable || echo refused", "refused"},
		{"secret", "main", "cat /srv/ballast-e2e/creds/password", "s3cret"},
		{"secret via ..data", "main", "readlink /srv/ballast-e2e/creds/password", "..data/password"},
		{"secret subPath", "main", "cat /srv/ballast-e2e/password", "s3cret"},
		{"downwardAPI name", "main", "cat /srv/ballast-e2e/meta/name", "vols"},
		{"downwardAPI labels", "main", "grep -e ^app= -e ^tier= /srv/ballast-e2e/meta/labels", "app=\"vols\"\ntier=\"test\""},
		{"projected", "main", "cat /srv/ballast-e2e/all/greeting /srv/ballast-e2e/all/password /srv/ballast-e2e/all/namespace", "hellos3cretvolumes"},
		{"hostname", "main", "hostname", "volhost"},
		{"/etc/hosts", "main", "grep volhost /etc/hosts", "volhost.sub.volumes.svc.cluster.local\tvolhost"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := sh(tt.container, tt.script)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.TrimSpace(out)
			if tt.name == "/etc/hosts" {
				_, got, _ = strings.Cut(got, "\t")
			}
			if got != tt.want {
				t.Fatalf("%s: %q, want %q", tt.script, got, tt.want)
			}
		})
	}
	// The mounts live in the containers' namespaces alone.
	if out := run(t, ctx, "sh", "-c", "ls -A /srv/ballast-e2e/creds /srv/ballast-e2e/scratch"); strings.TrimSpace(strings.ReplaceAll(out, "\n", "")) != "/srv/ballast-e2e/creds:/srv/ballast-e2e/scratch:" {
		t.Fatalf("the host sees the pod's volume contents:\n%s", out)
	}
}

// TestSecretUpdateReachesFile: a Secret's new value replaces the mounted
// file within a sync period, swapped atomically through ..data.
func TestSecretUpdateReachesFile(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	const ns = "secretupdate"
	apply(t, ctx, volumesApp(ns))
	waitReadyPods(t, ctx, ns, "vols", 1)
	s, err := cluster.Client.CoreV1().Secrets(ns).Get(ctx, "creds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data["password"] = []byte("rotated")
	if _, err := cluster.Client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got string
	err = devcluster.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
		out, err := cluster.Kubectl(ctx, nil, "-n", ns, "exec", "vols", "-c", "main", "--", "cat", "/srv/ballast-e2e/creds/password", "/srv/ballast-e2e/all/password")
		got = out
		return err == nil && out == "rotatedrotated", nil
	})
	if err != nil {
		t.Fatalf("mounted secret after the update: %q: %v", got, err)
	}
}
