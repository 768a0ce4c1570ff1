package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/inject"
)

// MeshNamespace is where deploy/ installs the control plane and injector.
const MeshNamespace = "ballast-system"

// InstallMesh installs Ballast's control plane and sidecar injector from
// kustomize bases (deploy.FS: control/ and inject/), as a user applies
// them, and returns once both serve. It may run again: everything is
// applied, nothing is created twice.
//
// One change to inject/: the kube-apiserver runs on the host and cannot
// route to a ClusterIP, so the webhook registration uses a
// clientConfig.url on 127.0.0.1 relayed to the injector's Service
// (ExposeService), and the injector's self-signed certificate also names
// 127.0.0.1.
func (c *Cluster) InstallMesh(ctx context.Context, bases fs.FS) error {
	control, err := c.kustomize(ctx, bases, "control")
	if err != nil {
		return err
	}
	if err := c.applyObjects(ctx, control); err != nil {
		return fmt.Errorf("install control: %w", err)
	}
	objs, err := c.kustomize(ctx, bases, "inject")
	if err != nil {
		return err
	}
	var services, rest []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "Service" {
			services = append(services, o)
		} else {
			rest = append(rest, o)
		}
	}
	if err := c.applyObjects(ctx, services); err != nil {
		return fmt.Errorf("install inject: %w", err)
	}
	webhook, err := c.ExposeService(ctx, MeshNamespace, "ballast-inject", 443)
	if err != nil {
		return err
	}
	for _, o := range rest {
		if err := reachableFromHost(o, "https://"+webhook.String()+"/inject"); err != nil {
			return fmt.Errorf("deploy inject/: %w", err)
		}
	}
	if err := c.applyObjects(ctx, rest); err != nil {
		return fmt.Errorf("install inject: %w", err)
	}
	if err := c.WaitReadyEndpoints(ctx, MeshNamespace, "ballast-control", "grpc-xds", 2, 2*time.Minute); err != nil {
		return err
	}
	return c.WaitReadyEndpoints(ctx, MeshNamespace, "ballast-inject", "https", 1, 2*time.Minute)
}

// reachableFromHost points the webhook registration at url and adds
// 127.0.0.1 to the injector's certificate names.
func reachableFromHost(o *unstructured.Unstructured, url string) error {
	switch o.GetKind() {
	case "MutatingWebhookConfiguration":
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		if len(hooks) != 1 {
			return fmt.Errorf("%d webhooks, want 1", len(hooks))
		}
		h := hooks[0].(map[string]any)
		h["clientConfig"] = map[string]any{"url": url}
		return unstructured.SetNestedSlice(o.Object, hooks, "webhooks")
	case "Deployment":
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		c := containers[0].(map[string]any)
		args, _ := c["args"].([]any)
		found := false
		for i, a := range args {
			if s, ok := a.(string); ok && strings.HasPrefix(s, "--dns-names=") {
				args[i], found = s+",127.0.0.1", true
			}
		}
		if !found {
			return fmt.Errorf("the injector has no --dns-names: %v", args)
		}
		return unstructured.SetNestedSlice(o.Object, containers, "spec", "template", "spec", "containers")
	}
	return nil
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

// kustomize renders the base dir of bases with kubectl kustomize.
func (c *Cluster) kustomize(ctx context.Context, bases fs.FS, dir string) ([]*unstructured.Unstructured, error) {
	sub, err := fs.Sub(bases, dir)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "ballast-deploy-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.CopyFS(filepath.Join(tmp, dir), sub); err != nil {
		return nil, err
	}
	out, err := c.Kubectl(ctx, nil, "kustomize", filepath.Join(tmp, dir))
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", dir, err)
	}
	return DecodeObjects(out)
}

func (c *Cluster) applyObjects(ctx context.Context, objs []*unstructured.Unstructured) error {
	manifests, err := EncodeObjects(objs)
	if err != nil {
		return err
	}
	return c.Apply(ctx, manifests)
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
