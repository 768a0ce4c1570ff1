package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Written by hand: controller-gen is not among the module's dependencies. TestDeepCopy checks that no
// pointer or slice is shared between a copy and its original.

// DeepCopyInto copies p into out.
func (p *TrafficPolicy) DeepCopyInto(out *TrafficPolicy) {
	*out = *p
	out.TypeMeta = p.TypeMeta
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	p.Spec.DeepCopyInto(&out.Spec)
	p.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a copy of p.
func (p *TrafficPolicy) DeepCopy() *TrafficPolicy {
	if p == nil {
		return nil
	}
	out := new(TrafficPolicy)
	p.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *TrafficPolicy) DeepCopyObject() runtime.Object {
	if c := p.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies l into out.
func (l *TrafficPolicyList) DeepCopyInto(out *TrafficPolicyList) {
	*out = *l
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]TrafficPolicy, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a copy of l.
func (l *TrafficPolicyList) DeepCopy() *TrafficPolicyList {
	if l == nil {
		return nil
	}
	out := new(TrafficPolicyList)
	l.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *TrafficPolicyList) DeepCopyObject() runtime.Object {
	if c := l.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies s into out.
func (s *TrafficPolicySpec) DeepCopyInto(out *TrafficPolicySpec) {
	*out = *s
	if s.TargetRefs != nil {
		out.TargetRefs = make([]gatewayv1.LocalPolicyTargetReferenceWithSectionName, len(s.TargetRefs))
		for i := range s.TargetRefs {
			s.TargetRefs[i].DeepCopyInto(&out.TargetRefs[i])
		}
	}
	if s.Timeouts != nil {
		out.Timeouts = s.Timeouts.DeepCopy()
	}
	if s.Retry != nil {
		out.Retry = s.Retry.DeepCopy()
	}
	out.CircuitBreaker = s.CircuitBreaker.DeepCopy()
	out.OutlierDetection = s.OutlierDetection.DeepCopy()
	if lb := s.LoadBalancer; lb != nil {
		out.LoadBalancer = &LoadBalancer{Policy: lb.Policy}
		if lb.HashHeader != nil {
			h := *lb.HashHeader
			out.LoadBalancer.HashHeader = &h
		}
	}
	if r := s.RateLimit; r != nil {
		out.RateLimit = &RateLimit{RequestsPerSecond: r.RequestsPerSecond, Burst: copyInt(r.Burst)}
	}
	if f := s.Fault; f != nil {
		out.Fault = &Fault{}
		if f.Delay != nil {
			d := *f.Delay
			out.Fault.Delay = &d
		}
		if f.Abort != nil {
			a := *f.Abort
			out.Fault.Abort = &a
		}
	}
}

// DeepCopy returns a copy of t.
func (t *Timeouts) DeepCopy() *Timeouts {
	if t == nil {
		return nil
	}
	out := new(Timeouts)
	out.Request = copyDuration(t.Request)
	out.BackendRequest = copyDuration(t.BackendRequest)
	return out
}

// DeepCopy returns a copy of r.
func (r *Retry) DeepCopy() *Retry {
	if r == nil {
		return nil
	}
	out := new(Retry)
	if r.Codes != nil {
		out.Codes = append([]string(nil), r.Codes...)
	}
	if r.Attempts != nil {
		a := *r.Attempts
		out.Attempts = &a
	}
	out.Backoff = copyDuration(r.Backoff)
	if b := r.Budget; b != nil {
		out.Budget = &RetryBudget{Percent: copyInt(b.Percent), Interval: copyDuration(b.Interval)}
		if m := b.MinRetryRate; m != nil {
			out.Budget.MinRetryRate = &RequestRate{Count: copyInt(m.Count), Interval: copyDuration(m.Interval)}
		}
	}
	return out
}

func copyInt(p *int32) *int32 {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

func copyDuration(d *gatewayv1.Duration) *gatewayv1.Duration {
	if d == nil {
		return nil
	}
	c := *d
	return &c
}
