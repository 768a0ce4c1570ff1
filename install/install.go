// Package install puts Ballast on a cluster without Helm: the objects of
// charts/ballast, rendered by Helm's engine as `helm install` would, applied
// with server-side apply, after preflight checks that say what is wrong, and
// followed until the rollout is done and the API server's calls reach the
// webhook. `ballast install` / `ballast uninstall` and the dev cluster's
// InstallMesh run it.
package install

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"

	"github.com/ballast-dev/ballast/charts"
	"github.com/ballast-dev/ballast/inject"
)

// FieldManager owns the fields `ballast install` applies.
const FieldManager = "ballast-install"

// Options say what to install where.
type Options struct {
	Config *rest.Config
	// Namespace is the release's (charts.DefaultNamespace if empty).
	Namespace string
	// Values override the chart's defaults, as helm's --set and --values.
	Values map[string]any
	// Progress gets one line per step; nil discards them.
	Progress io.Writer
	// Timeout bounds the wait for the rollout and the webhook (5 minutes
	// if zero).
	Timeout time.Duration
}

type installer struct {
	Options
	client kubernetes.Interface
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newInstaller(o Options) (*installer, error) {
	if o.Config == nil {
		return nil, errors.New("install: no cluster config")
	}
	o.Namespace = cmp.Or(o.Namespace, charts.DefaultNamespace)
	o.Timeout = cmp.Or(o.Timeout, 5*time.Minute)
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	client, err := kubernetes.NewForConfig(o.Config)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(o.Config)
	if err != nil {
		return nil, err
	}
	return &installer{Options: o, client: client, dyn: dyn,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))}, nil
}

func (in *installer) printf(format string, a ...any) { fmt.Fprintf(in.Progress, format+"\n", a...) }

// values are the caller's, with the Namespace rendered: `ballast install`
// makes the namespace it installs into, as deploy/ does.
func (in *installer) values() map[string]any {
	v := map[string]any{"namespace": map[string]any{"create": true}}
	for k, x := range in.Values {
		if k == "namespace" {
			if m, ok := x.(map[string]any); ok {
				merged := map[string]any{"create": true}
				for mk, mx := range m {
					merged[mk] = mx
				}
				x = merged
			}
		}
		v[k] = x
	}
	return v
}

// Install applies the chart to the cluster: preflight (API server version,
// CRDs), the chart's CRDs where missing, every other object by server-side
// apply (again on a second run: it upgrades in place), then waits for each
// Deployment's rollout and for the API server's calls to inject pods.
func Install(ctx context.Context, o Options) error {
	in, err := newInstaller(o)
	if err != nil {
		return err
	}
	if err := in.checkVersion(ctx); err != nil {
		return err
	}
	ms, err := charts.Render(ctx, charts.Options{Namespace: in.Namespace, Values: in.values(), Config: in.Config})
	if err != nil {
		return err
	}
	var crds, objs []*unstructured.Unstructured
	for _, m := range ms {
		os, err := m.Objects()
		if err != nil {
			return err
		}
		if m.CRD() {
			crds = append(crds, os...)
		} else {
			objs = append(objs, os...)
		}
	}
	if err := in.ensureCRDs(ctx, crds); err != nil {
		return err
	}
	sortForApply(objs)
	for _, obj := range objs {
		if err := in.apply(ctx, obj); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, in.Timeout)
	defer cancel()
	for _, obj := range objs {
		if obj.GetKind() == "Deployment" {
			if err := in.waitRollout(ctx, obj.GetNamespace(), obj.GetName()); err != nil {
				return err
			}
		}
	}
	if slices.ContainsFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetKind() == "MutatingWebhookConfiguration" }) {
		if err := in.checkWebhook(ctx); err != nil {
			return err
		}
	}
	in.printf("ballast is installed in %s", in.Namespace)
	return nil
}

// checkVersion refuses an API server older than the chart's kubeVersion.
func (in *installer) checkVersion(ctx context.Context) error {
	c, err := charts.Load()
	if err != nil {
		return err
	}
	v, err := in.client.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("preflight: the API server at %s: %w", in.Config.Host, err)
	}
	if strings.HasPrefix(v.GitVersion, "v0.0.0-") {
		// Built from source without version stamping (as the dev cluster's
		// and the tests' kube-apiserver are): nothing to compare.
		in.printf("preflight: Kubernetes %s, a build without a version: not checked against %s", v.GitVersion, c.Metadata.KubeVersion)
		return nil
	}
	if !chartutil.IsCompatibleRange(c.Metadata.KubeVersion, v.GitVersion) {
		return fmt.Errorf("preflight: Kubernetes %s at %s: Ballast needs %s (injected sidecars are native sidecars)",
			v.GitVersion, in.Config.Host, c.Metadata.KubeVersion)
	}
	in.printf("preflight: Kubernetes %s", v.GitVersion)
	return nil
}

// ensureCRDs creates the chart's CRDs that are missing and keeps those a
// cluster already has (Gateway API may come from another project, at
// another version), as Helm treats crds/; an existing CRD must serve the
// version Ballast reads.
func (in *installer) ensureCRDs(ctx context.Context, crds []*unstructured.Unstructured) error {
	gvr := schemaCRD
	for _, crd := range crds {
		name := crd.GetName()
		existing, err := in.dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			if err := in.apply(ctx, crd); err != nil {
				return err
			}
			if err := in.waitEstablished(ctx, name); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("preflight: CRD %s: %w", name, err)
		default:
			want := servedVersions(crd)
			have := servedVersions(existing)
			for _, v := range want {
				if !slices.Contains(have, v) {
					return fmt.Errorf("preflight: CRD %s is installed (bundle-version %q) without version %s, which Ballast reads: upgrade it to the chart's (%s) or later",
						name, existing.GetAnnotations()["gateway.networking.k8s.io/bundle-version"], v, crd.GetAnnotations()["gateway.networking.k8s.io/bundle-version"])
				}
			}
			in.printf("CRD %s: kept the installed one (serves %v)", name, have)
		}
	}
	in.mapper.Reset()
	return nil
}

func servedVersions(crd *unstructured.Unstructured) []string {
	vs, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	var out []string
	for _, v := range vs {
		m, _ := v.(map[string]any)
		if served, _ := m["served"].(bool); served {
			out = append(out, fmt.Sprint(m["name"]))
		}
	}
	return out
}

func (in *installer) waitEstablished(ctx context.Context, name string) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		crd, err := in.dyn.Resource(schemaCRD).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("CRD %s: not established: %w", name, err)
	}
	in.printf("CRD %s: created", name)
	return nil
}

// applyOrder is the order kinds are applied in: what others refer to first,
// the webhook registration before the injector (which writes its caBundle
// when self-signed), budgets last.
var applyOrder = []string{
	"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
	"Secret", "ConfigMap", "Service", "MutatingWebhookConfiguration", "Deployment", "PodDisruptionBudget",
}

func kindRank(kind string) int {
	if i := slices.Index(applyOrder, kind); i >= 0 {
		return i
	}
	return len(applyOrder)
}

func sortForApply(objs []*unstructured.Unstructured) {
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
		return kindRank(a.GetKind()) - kindRank(b.GetKind())
	})
}

func (in *installer) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := in.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s %s: the API server does not serve it: %w", gvk.Kind, obj.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return in.dyn.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
	}
	return in.dyn.Resource(m.Resource), nil
}

// apply is a server-side apply of obj, owning what it names: fields others
// set (the caBundle a self-signed injector writes) are kept.
func (in *installer) apply(ctx context.Context, obj *unstructured.Unstructured) error {
	r, err := in.resource(obj)
	if err != nil {
		return err
	}
	if _, err := r.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
		return fmt.Errorf("apply %s %s: %w", obj.GetKind(), qualified(obj), err)
	}
	in.printf("applied %s %s", obj.GetKind(), qualified(obj))
	return nil
}

func qualified(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return ns + "/" + obj.GetName()
	}
	return obj.GetName()
}

// waitRollout waits until every replica of the Deployment runs its current
// template and is available, printing each change of the counts.
func (in *installer) waitRollout(ctx context.Context, ns, name string) error {
	var last, state string
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		d, err := in.client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		done := rolledOut(d)
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		state = fmt.Sprintf("%d/%d updated, %d/%d available", d.Status.UpdatedReplicas, want, d.Status.AvailableReplicas, want)
		if state != last {
			in.printf("deployment %s/%s: %s", ns, name, state)
			last = state
		}
		return done, nil
	})
	if err != nil {
		return fmt.Errorf("deployment %s/%s not rolled out within %s (%s): %s", ns, name, in.Timeout, state, in.podProblems(ns, name))
	}
	return nil
}

func rolledOut(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
		d.Status.Replicas == want && d.Status.AvailableReplicas == want
}

// podProblems says why a Deployment's pods are not ready, from their
// container states: what a user would look up with kubectl describe.
func (in *installer) podProblems(ns, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pods, err := in.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + name})
	if err != nil || len(pods.Items) == 0 {
		return "no pods"
	}
	var out []string
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil {
				out = append(out, fmt.Sprintf("pod %s container %s: %s %s", p.Name, cs.Name, w.Reason, w.Message))
			} else if !cs.Ready {
				out = append(out, fmt.Sprintf("pod %s container %s: not ready", p.Name, cs.Name))
			}
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
				out = append(out, fmt.Sprintf("pod %s: not scheduled: %s", p.Name, c.Message))
			}
		}
	}
	if len(out) == 0 {
		return "pods exist, none ready yet"
	}
	return fmt.Sprint(out)
}

// checkWebhook proves the API server reaches the injector: in a namespace
// of its own labelled for injection, made for the check and deleted after,
// a dry-run pod must come back with the sidecar.
func (in *installer) checkWebhook(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "ballast-webhook-check-",
		Labels:       map[string]string{inject.NamespaceLabel: inject.NamespaceEnabled},
	}}
	ns, err := in.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("webhook check: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		in.client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
	}()
	grace := int64(0)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "check"},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{Name: "app", Image: "check"}}},
	}
	var lastErr error
	err = wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := in.client.CoreV1().Pods(ns.Name).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			lastErr = err
			return false, nil
		}
		lastErr = nil
		return got.Annotations[inject.InjectedAnnotation] == "true", nil
	})
	if err != nil {
		why := "pods are created without the sidecar"
		if lastErr != nil {
			why = lastErr.Error()
		}
		return fmt.Errorf("webhook check: the API server's calls to the injector (Service %s/ballast-inject:443, webhook ballast-inject) do not inject: %s; "+
			"is the injector ready, and can the API server reach the Service (a firewall between control plane and nodes)?", in.Namespace, why)
	}
	in.printf("webhook: the API server's calls inject pods in namespaces labelled %s=%s", inject.NamespaceLabel, inject.NamespaceEnabled)
	return nil
}
