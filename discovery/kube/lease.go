package kube

import (
	"context"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/internal/kubeclient"
)

// The Lease's timing, client-go's leader election defaults: a holder
// renews every retryPeriod and gives up after renewDeadline without a
// renewal, well before the others may take the Lease (leaseDuration after
// they last saw it change).
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// elector holds a coordination.k8s.io/v1 Lease for one identity among
// replicas, by client-go's leader election rules and on the same fields,
// so replicas running client-go's elector and this one share a Lease.
// It is its own because client-go's leaderelection package links
// client-go's whole clientset and informers (see kubeclient).
type elector struct {
	leases    kubeclient.Resource[*coordinationv1.Lease]
	namespace string
	name      string
	identity  string
	log       *slog.Logger

	// observedVersion is the Lease's resourceVersion when last read, and
	// observedAt when it was first seen (this replica's clock): another
	// holder's Lease expires leaseDuration after it last changed as seen
	// here, so the replicas' clocks need not agree.
	observedVersion string
	observedAt      time.Time
}

// run calls lead each time this replica takes the Lease, with a context
// that ends when it stops holding it, until ctx ends; then it gives the
// Lease up so another replica need not wait for it to expire.
func (e *elector) run(ctx context.Context, lead func(context.Context)) {
	for e.acquire(ctx) {
		leading, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			lead(leading)
		}()
		e.renew(leading)
		cancel()
		<-done
		if ctx.Err() != nil {
			e.release()
			return
		}
		e.log.Info("lost the lease", "lease", e.namespace+"/"+e.name)
	}
}

// acquire tries every retryPeriod until it holds the Lease (true) or ctx
// ends (false).
func (e *elector) acquire(ctx context.Context) bool {
	t := time.NewTicker(retryPeriod)
	defer t.Stop()
	for {
		if e.tryAcquireOrRenew(ctx) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// renew renews the Lease every retryPeriod until ctx ends or no renewal
// has succeeded for renewDeadline.
func (e *elector) renew(ctx context.Context) {
	t := time.NewTicker(retryPeriod)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if e.tryAcquireOrRenew(ctx) {
			last = time.Now()
		} else if time.Since(last) > renewDeadline {
			return
		}
	}
}

// tryAcquireOrRenew takes the Lease if it is free, expired or ours, and
// reports whether this replica holds it now.
func (e *elector) tryAcquireOrRenew(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, renewDeadline)
	defer cancel()
	now := metav1.NewMicroTime(time.Now())
	seconds := int32(leaseDuration / time.Second)
	lease, err := e.leases.Get(ctx, e.namespace, e.name)
	if apierrors.IsNotFound(err) {
		zero := int32(0)
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: e.name, Namespace: e.namespace},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &e.identity, LeaseDurationSeconds: &seconds,
				AcquireTime: &now, RenewTime: &now, LeaseTransitions: &zero},
		}
		created, err := e.leases.Create(ctx, e.namespace, lease)
		if err != nil {
			e.log.Debug("lease not created", "lease", e.namespace+"/"+e.name, "err", err)
			return false
		}
		e.observe(created)
		return true
	}
	if err != nil {
		e.log.Debug("lease not read", "lease", e.namespace+"/"+e.name, "err", err)
		return false
	}
	if lease.ResourceVersion != e.observedVersion {
		e.observe(lease)
	}
	holder := deref(lease.Spec.HolderIdentity)
	held := time.Duration(deref(lease.Spec.LeaseDurationSeconds)) * time.Second
	if holder != "" && holder != e.identity && time.Since(e.observedAt) < held {
		return false // another replica's, and current
	}
	next := lease.DeepCopy()
	if holder != e.identity {
		transitions := deref(lease.Spec.LeaseTransitions) + 1
		next.Spec.AcquireTime, next.Spec.LeaseTransitions = &now, &transitions
	}
	next.Spec.HolderIdentity, next.Spec.LeaseDurationSeconds, next.Spec.RenewTime = &e.identity, &seconds, &now
	updated, err := e.leases.Update(ctx, e.namespace, e.name, next)
	if err != nil {
		// A conflict is another replica writing first: it holds the Lease.
		e.log.Debug("lease not taken", "lease", e.namespace+"/"+e.name, "err", err)
		return false
	}
	e.observe(updated)
	return true
}

func (e *elector) observe(l *coordinationv1.Lease) {
	e.observedVersion, e.observedAt = l.ResourceVersion, time.Now()
}

// release gives the Lease up, if this replica still holds it, as
// client-go's ReleaseOnCancel does: no holder, and a one-second term.
func (e *elector) release() {
	ctx, cancel := context.WithTimeout(context.Background(), renewDeadline)
	defer cancel()
	lease, err := e.leases.Get(ctx, e.namespace, e.name)
	if err != nil || deref(lease.Spec.HolderIdentity) != e.identity {
		return
	}
	now := metav1.NewMicroTime(time.Now())
	none, second := "", int32(1)
	lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds, lease.Spec.RenewTime = &none, &second, &now
	if _, err := e.leases.Update(ctx, e.namespace, e.name, lease); err != nil {
		e.log.Debug("lease not released", "lease", e.namespace+"/"+e.name, "err", err)
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
