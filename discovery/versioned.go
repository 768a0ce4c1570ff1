package discovery

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// versioned is an object as the registry keeps it when a bad version must
// not replace a good one (GRPCRoutes, TrafficPolicies): the version its
// source last wrote, which status describes, and the last valid version,
// which is served; the same object while it is valid.
type versioned[T metav1.Object] struct {
	current T
	// invalid is why current is not served; nil when it is valid.
	invalid error
	// served is the zero T while no version has been valid.
	served T
}

// invalidMessage says why current is not served and, when an earlier
// version is, which: "<why>; <who> generation <n>" (who is, say,
// "clients keep").
func (e *versioned[T]) invalidMessage(who string) string {
	var none T
	if any(e.served) == any(none) {
		return e.invalid.Error()
	}
	return fmt.Sprintf("%v; %s generation %d", e.invalid, who, e.served.GetGeneration())
}

// nextVersion is the entry once the source writes obj over old (nil if
// none): validate decides whether obj is served, and a bad obj leaves
// old's served version serving. changed is false when obj is the version
// old holds (same creation, generation and spec), so nothing moves.
func nextVersion[T metav1.Object](old *versioned[T], obj T, spec func(T) any, validate func(T) error) (e *versioned[T], changed bool) {
	if old != nil && sameVersion(old.current, obj) && equality.Semantic.DeepEqual(spec(old.current), spec(obj)) {
		return old, false
	}
	e = &versioned[T]{current: obj, invalid: validate(obj)}
	switch {
	case e.invalid == nil:
		e.served = obj
	case old != nil:
		e.served = old.served
	}
	return e, true
}

// sameVersion reports whether a and b are one generation of one object
// (a deleted and recreated object starts at generation 1 again).
func sameVersion(a, b metav1.Object) bool {
	ac, bc := a.GetCreationTimestamp(), b.GetCreationTimestamp()
	return a.GetGeneration() == b.GetGeneration() && ac.Equal(&bc)
}

// objectKey is the registry's key of a Kubernetes object (no namespace for
// a cluster-scoped one).
func objectKey(o metav1.Object) Key {
	return Key{Namespace: o.GetNamespace(), Name: o.GetName()}
}

// sortByKey sorts objects by their keys, the order the registry lists in.
func sortByKey[T metav1.Object](objs []T) {
	slices.SortFunc(objs, func(a, b T) int { return compareKeys(objectKey(a), objectKey(b)) })
}
