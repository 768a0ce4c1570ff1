package devcluster

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// TestStatusSyncRepairsALostStatus: a pod whose Ready status never reached
// the API server gets it written on the second tick that sees the
// difference, and only then; pods that agree, another pod by the same name,
// and a pod in a terminal phase are left alone.
func TestStatusSyncRepairsALostStatus(t *testing.T) {
	ready := func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	}
	tests := []struct {
		name string
		// api changes the pod as the API server has it, from the agent's
		// own view of a running, ready pod.
		api        func(p *corev1.Pod)
		wantWrites []int // per tick
		wantReady  bool  // in the API server after the ticks
	}{
		{"lost Ready is written on the second tick", func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodRunning
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		}, []int{0, 1, 0}, true},
		{"status never written at all", func(p *corev1.Pod) { p.Status = corev1.PodStatus{} }, []int{0, 1, 0}, true},
		{"statuses agree", func(*corev1.Pod) {}, []int{0, 0, 0}, true},
		{"another pod by the same name", func(p *corev1.Pod) {
			p.UID = "new"
			p.Status = corev1.PodStatus{Phase: corev1.PodPending}
		}, []int{0, 0, 0}, false},
		{"a terminal phase is final", func(p *corev1.Pod) {
			p.Status = corev1.PodStatus{Phase: corev1.PodFailed}
		}, []int{0, 0, 0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			n := &nodeAgent{running: map[string]*podRuntime{}}
			p := runningPod(n)
			n.running[podKey(p.pod.Namespace, p.pod.Name)] = p

			api := p.snapshot()
			tt.api(api)
			client := fake.NewSimpleClientset(api)
			indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
			n.pods = corev1listers.NewPodLister(indexer)
			s := newStatusSync(n, client)
			var notified int
			n.notifyFn = func(*corev1.Pod) { notified++ }

			for tick, want := range tt.wantWrites {
				// The informer cache follows the API server.
				cur, err := client.CoreV1().Pods(api.Namespace).Get(ctx, api.Name, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if err := indexer.Update(cur); err != nil {
					t.Fatal(err)
				}
				if got := s.once(ctx); got != want {
					t.Fatalf("tick %d: %d writes, want %d", tick+1, got, want)
				}
			}
			got, err := client.CoreV1().Pods(api.Namespace).Get(ctx, api.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if ready(got) != tt.wantReady {
				t.Fatalf("Ready in the API server = %v, want %v (status %s)", ready(got), tt.wantReady, statusSummary(got.Status))
			}
			if writes := sum(tt.wantWrites); notified != writes {
				t.Fatalf("virtual-kubelet notified %d times, want %d (once per write)", notified, writes)
			}
		})
	}
}

// runningPod is a pod runtime whose one container runs and is ready.
func runningPod(n *nodeAgent) *podRuntime {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "same", Namespace: "reuse", UID: types.UID("old")},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyAlways,
			Containers:    []corev1.Container{{Name: "c", Image: "host:sh"}},
		},
	}
	c := newContainerRuntime("/nonexistent", pod.Spec.Containers[0])
	c.proc, c.ready, c.waiting = &process{}, true, ""
	return &podRuntime{
		node: n, log: slog.New(slog.DiscardHandler), dir: "/nonexistent",
		net: &podNet{netns: "test", ip: netip.MustParseAddr("10.64.1.2")}, start: metav1.Now(),
		pod: pod, containers: []*containerRuntime{c}, initsDone: true, finishedCh: make(chan struct{}),
	}
}

func sum(xs []int) int {
	t := 0
	for _, x := range xs {
		t += x
	}
	return t
}

func TestStatusSummaryIgnoresTimesAndOrder(t *testing.T) {
	a := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.64.1.2", Conditions: []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()},
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
	}}
	b := *a.DeepCopy()
	b.Conditions[0], b.Conditions[1] = b.Conditions[1], b.Conditions[0]
	b.Conditions[1].LastTransitionTime = metav1.Time{}
	if statusSummary(a) != statusSummary(b) {
		t.Fatalf("summaries differ:\n%s\n%s", statusSummary(a), statusSummary(b))
	}
	b.Conditions[1].Status = corev1.ConditionFalse
	if statusSummary(a) == statusSummary(b) {
		t.Fatal("a Ready flip does not change the summary")
	}
}

// TestSnapshotKeepsQOSClass: the API server computes a pod's QoS class at
// creation and rejects any status that changes it, so a pod with requests
// (Burstable) must not be reported BestEffort, or none of its statuses is
// ever written.
func TestSnapshotKeepsQOSClass(t *testing.T) {
	for _, qos := range []corev1.PodQOSClass{corev1.PodQOSBurstable, corev1.PodQOSGuaranteed, corev1.PodQOSBestEffort} {
		p := runningPod(&nodeAgent{})
		p.pod.Status.QOSClass = qos
		if got := p.snapshot().Status.QOSClass; got != qos {
			t.Errorf("snapshot of a %s pod says %s", qos, got)
		}
	}
	if got := runningPod(&nodeAgent{}).snapshot().Status.QOSClass; got != corev1.PodQOSBestEffort {
		t.Errorf("snapshot of a pod with no class yet says %q, want BestEffort", got)
	}
}

// TestNotificationsArriveInOrder: however the pod's goroutines interleave
// their changes, the status virtual-kubelet is told last is the pod's
// current one: a Pending snapshot taken at creation never overtakes the
// container's Running and Ready, which would leave the pod unready.
func TestNotificationsArriveInOrder(t *testing.T) {
	for i := range 200 {
		n := &nodeAgent{running: map[string]*podRuntime{}}
		p := runningPod(n)
		c := p.containers[0]
		p.mu.Lock()
		c.proc, c.ready, c.waiting, p.initsDone = nil, false, "ContainerCreating", false
		p.mu.Unlock()
		var mu sync.Mutex
		var last string
		n.notifyFn = func(pod *corev1.Pod) {
			mu.Lock()
			last = statusSummary(pod.Status)
			mu.Unlock()
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); p.changed() }() // CreatePod's
		go func() {                                  // the pod's run: inits done, container up and ready
			defer wg.Done()
			p.mu.Lock()
			p.initsDone = true
			p.mu.Unlock()
			p.changed()
			p.mu.Lock()
			c.proc, c.ready, c.waiting = &process{}, true, ""
			p.mu.Unlock()
			p.changed()
		}()
		wg.Wait()
		if want := statusSummary(p.snapshot().Status); last != want {
			t.Fatalf("run %d: last notified %s, want the current %s", i, last, want)
		}
	}
}
