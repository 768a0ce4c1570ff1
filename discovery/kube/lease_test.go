package kube_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/discovery/kube"
)

// TestLeaseHandover: of two replicas on one Lease, one leads; the other
// does not while the first renews it, and takes over when the first
// stops. A replica that stops gives the Lease up (no holder), so the next
// need not wait out its term.
func TestLeaseHandover(t *testing.T) {
	ns := env.Namespace(t, "lease")
	log := slog.New(slog.DiscardHandler)
	const lease = "handover"
	type replica struct {
		leading chan struct{} // closed when it starts leading
		stop    context.CancelFunc
		done    chan struct{}
	}
	var mu sync.Mutex
	leaders := map[string]int{} // identity → times it started leading
	start := func(identity string) *replica {
		ctx, cancel := context.WithCancel(context.Background())
		r := &replica{leading: make(chan struct{}), stop: cancel, done: make(chan struct{})}
		var once sync.Once
		go func() {
			defer close(r.done)
			err := kube.RunElector(ctx, env.Config, ns, lease, identity, log, func(ctx context.Context) {
				mu.Lock()
				leaders[identity]++
				mu.Unlock()
				once.Do(func() { close(r.leading) })
				<-ctx.Done()
			})
			if err != nil {
				t.Error(err)
			}
		}()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	waitLeading := func(r *replica, who string) {
		t.Helper()
		select {
		case <-r.leading:
		case <-time.After(waitTimeout):
			t.Fatalf("%s never led", who)
		}
	}
	holder := func() (string, *metav1.MicroTime, int32) {
		t.Helper()
		l, err := env.Client.CoordinationV1().Leases(ns).Get(context.Background(), lease, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return *l.Spec.HolderIdentity, l.Spec.RenewTime, *l.Spec.LeaseTransitions
	}

	a := start("a")
	waitLeading(a, "a")
	_, firstRenew, _ := holder()
	b := start("b")
	// Two renewals by a after b started: b has tried and been refused.
	renewals := 0
	last := firstRenew
	for deadline := time.Now().Add(waitTimeout); renewals < 2; {
		if time.Now().After(deadline) {
			t.Fatal("a stopped renewing the Lease")
		}
		who, renewed, _ := holder()
		if who != "a" {
			t.Fatalf("the Lease is %q's while a renews it", who)
		}
		if !renewed.Equal(last) {
			renewals++
			last = renewed
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
	mu.Lock()
	if leaders["b"] != 0 {
		t.Fatal("b led while a held the Lease")
	}
	mu.Unlock()

	a.stop()
	<-a.done
	waitLeading(b, "b")
	if who, _, transitions := holder(); who != "b" || transitions != 1 {
		t.Errorf("Lease holder %q, transitions %d; want b, 1", who, transitions)
	}
	b.stop()
	<-b.done
	if who, _, _ := holder(); who != "" {
		t.Errorf("Lease holder %q after its last replica stopped; want none (given up)", who)
	}
}
