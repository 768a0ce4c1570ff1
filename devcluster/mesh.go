package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/inject"
	"github.com/ballast-dev/ballast/install"
)

// MeshNamespace is where deploy/ installs the control plane and injector.
const MeshNamespace = "ballast-system"

// InstallMesh installs Ballast's control plane and sidecar injector as
// `ballast install` does (charts/ballast by server-side apply, waiting for
// the rollout and for the API server's calls to inject pods), with the dev
// cluster's images (ballast-control:dev, ballast:dev, ballast-proxy:dev). It
// may run again: everything is applied, nothing is created twice, and the
// webhook's certificate is kept.
//
// One change of values: the kube-apiserver runs on the host and cannot
// route to a ClusterIP, so the webhook registration uses a
// clientConfig.url on 127.0.0.1 relayed to the injector's Service
// (ExposeService), and the injector's certificate also names 127.0.0.1.
func (c *Cluster) InstallMesh(ctx context.Context) error {
	return c.installMesh(ctx, false)
}

// InstallMeshProxyless is InstallMesh with the control plane serving xDS
// without authentication, in plaintext (control.insecure), as the demo's
// proxyless clients, bootstrapped without a CA or a token, need; the
// injected sidecars then dial it in plaintext too (docs/security.md).
func (c *Cluster) InstallMeshProxyless(ctx context.Context) error {
	return c.installMesh(ctx, true)
}

func (c *Cluster) installMesh(ctx context.Context, insecure bool) error {
	return c.UpgradeMesh(ctx, DevTag, insecure)
}

// UpgradeMesh installs the chart again with the images tagged tag (pushed
// to the cluster's registry before), as `ballast install --set
// image.tag=TAG` upgrades a release in place: the control plane and the
// injector roll to the new images (maxUnavailable 0), and pods created
// after it get the new sidecar; running pods keep theirs until their
// workloads roll. insecure as InstallMeshProxyless.
func (c *Cluster) UpgradeMesh(ctx context.Context, tag string, insecure bool) error {
	o, err := c.meshOptions(ctx, tag, insecure)
	if err != nil {
		return err
	}
	return install.Install(ctx, o)
}

// UninstallMesh removes what InstallMesh installed as `ballast uninstall`
// does (the CRDs stay), and waits until its namespace is gone.
func (c *Cluster) UninstallMesh(ctx context.Context) error {
	o, err := c.meshOptions(ctx, DevTag, false)
	if err != nil {
		return err
	}
	return install.Uninstall(ctx, o)
}

func (c *Cluster) meshOptions(ctx context.Context, tag string, insecure bool) (install.Options, error) {
	webhook, err := c.ExposeService(ctx, MeshNamespace, "ballast-inject", 443)
	if err != nil {
		return install.Options{}, err
	}
	return install.Options{
		Config:    c.Config,
		Namespace: MeshNamespace,
		Values: map[string]any{
			"image":   map[string]any{"registry": "", "tag": tag},
			"control": map[string]any{"insecure": insecure},
			"inject": map[string]any{
				"url":         "https://" + webhook.String() + "/inject",
				"certificate": map[string]any{"extraIPs": []any{"127.0.0.1"}},
			},
		},
		Progress: slogWriter{c.log.With("component", "install")},
		Timeout:  3 * time.Minute,
	}, nil
}

// slogWriter logs each line written to it at debug level.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

// EnableInjection labels namespace (created if missing) for sidecar
// injection and waits until the API server's calls to the webhook
// inject its pods.
func (c *Cluster) EnableInjection(ctx context.Context, namespace string) error {
	ns := fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels: {%s: %s}\n",
		namespace, inject.NamespaceLabel, inject.NamespaceEnabled)
	if err := c.Apply(ctx, ns); err != nil {
		return err
	}
	return c.WaitInjecting(ctx, namespace, true)
}

// WaitInjecting waits until a dry-run pod creation in namespace is (or is
// not) mutated by the webhook: the API server calls it on dry runs too.
func (c *Cluster) WaitInjecting(ctx context.Context, namespace string, want bool) error {
	var got bool
	err := Poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		pod, err := c.Client.CoreV1().Pods(namespace).Create(ctx, sleeperPod("dry-run"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, nil
		}
		got = Injected(pod)
		return got == want, nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s: dry-run pods injected = %v, want %v: %w", namespace, got, want, err)
	}
	return nil
}

// Injected reports whether pod has the sidecar's init container, the
// sidecar and the injector's annotation.
func Injected(pod *corev1.Pod) bool {
	var names []string
	for _, c := range pod.Spec.InitContainers {
		names = append(names, c.Name)
	}
	return slices.Contains(names, inject.InitContainerName) && slices.Contains(names, inject.ProxyContainerName) &&
		pod.Annotations[inject.InjectedAnnotation] == "true"
}

func sleeperPod(name string) *corev1.Pod {
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "app", Image: "host:sh",
				Command: []string{"sh", "-c", "while true; do sleep 1; done"}}},
		},
	}
}

// DecodeObjects reads a stream of YAML or JSON objects.
func DecodeObjects(manifests string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	var out []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		if len(u.Object) > 0 {
			out = append(out, &u)
		}
	}
}

// EncodeObjects writes objects as a YAML stream.
func EncodeObjects(objs []*unstructured.Unstructured) (string, error) {
	var b strings.Builder
	for _, o := range objs {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			return "", err
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.String(), nil
}
