package install

import (
	"context"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/ballast-dev/ballast/charts"
)

var schemaCRD = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Uninstall deletes what Install applied, the webhook registration first so
// no pod creation waits on an injector going away, the namespace last, and
// waits until the namespace is gone. CRDs stay, as Helm leaves crds/:
// deleting them would delete every GRPCRoute with them.
func Uninstall(ctx context.Context, o Options) error {
	in, err := newInstaller(o)
	if err != nil {
		return err
	}
	ms, err := charts.Render(ctx, charts.Options{Namespace: in.Namespace, Values: in.values()})
	if err != nil {
		return err
	}
	var objs []*unstructured.Unstructured
	for _, m := range ms {
		if m.CRD() {
			continue
		}
		os, err := m.Objects()
		if err != nil {
			return err
		}
		objs = append(objs, os...)
	}
	sortForApply(objs)
	slices.Reverse(objs)
	// The webhook registration goes first.
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
		return boolRank(b.GetKind() == "MutatingWebhookConfiguration") - boolRank(a.GetKind() == "MutatingWebhookConfiguration")
	})
	for _, obj := range objs {
		r, err := in.resource(obj)
		if err != nil {
			return err
		}
		switch err := r.Delete(ctx, obj.GetName(), metav1.DeleteOptions{}); {
		case apierrors.IsNotFound(err):
		case err != nil:
			return fmt.Errorf("delete %s %s: %w", obj.GetKind(), qualified(obj), err)
		default:
			in.printf("deleted %s %s", obj.GetKind(), qualified(obj))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, in.Timeout)
	defer cancel()
	err = wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := in.client.CoreV1().Namespaces().Get(ctx, in.Namespace, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s not gone within %s: %w", in.Namespace, in.Timeout, err)
	}
	in.printf("ballast is uninstalled from %s (CRDs kept)", in.Namespace)
	return nil
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}
