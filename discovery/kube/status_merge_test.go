package kube

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
)

// Other controllers' parent entries stay as they are; Ballast's are
// replaced, each condition keeping its transition time while its status
// stays the same.
func TestMergeParents(t *testing.T) {
	then, now := metav1.NewTime(time.Unix(1000, 0)), metav1.NewTime(time.Unix(2000, 0))
	svc := gatewayv1.ParentReference{Name: "greeter"}
	other := gatewayv1.RouteParentStatus{ParentRef: gatewayv1.ParentReference{Name: "gw"}, ControllerName: "example.com/gateway",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", LastTransitionTime: then}}}
	old := []gatewayv1.RouteParentStatus{other, {ParentRef: svc, ControllerName: discovery.ControllerName, Conditions: []metav1.Condition{
		{Type: "Accepted", Status: "True", Reason: "Accepted", LastTransitionTime: then, ObservedGeneration: 1},
		{Type: "ResolvedRefs", Status: "True", Reason: "ResolvedRefs", LastTransitionTime: then, ObservedGeneration: 1},
	}}}
	ours := []gatewayv1.RouteParentStatus{{ParentRef: svc, ControllerName: discovery.ControllerName, Conditions: []metav1.Condition{
		{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 2},
		{Type: "ResolvedRefs", Status: "False", Reason: "BackendNotFound", ObservedGeneration: 2},
	}}}
	got := mergeParents(old, ours, now)
	if len(got) != 2 || got[0].ControllerName != other.ControllerName || !got[0].Conditions[0].LastTransitionTime.Equal(&then) {
		t.Fatalf("merged %+v: want the other controller's entry first, unchanged", got)
	}
	acc, res := got[1].Conditions[0], got[1].Conditions[1]
	if !acc.LastTransitionTime.Equal(&then) || acc.ObservedGeneration != 2 {
		t.Errorf("Accepted %+v: want generation 2, transition time kept (status unchanged)", acc)
	}
	if !res.LastTransitionTime.Equal(&now) || res.Status != "False" {
		t.Errorf("ResolvedRefs %+v: want False since now", res)
	}
}
