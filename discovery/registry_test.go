package discovery

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func snapshot(ns, name string, addrs ...string) *Service {
	p := Port{Name: "grpc", Port: 50051, Protocol: "TCP"}
	for _, a := range addrs {
		p.Endpoints = append(p.Endpoints, Endpoint{Address: netip.MustParseAddrPort(a), Ready: true, Serving: true})
	}
	return &Service{Key: Key{Namespace: ns, Name: name}, Ports: []Port{p}}
}

// pending reports whether the subscription has signalled a change.
func pending(sub *Subscription) bool {
	select {
	case <-sub.C():
		return true
	default:
		return false
	}
}

func TestRegistrySetGetDeleteList(t *testing.T) {
	r := NewRegistry()
	a := snapshot("default", "a", "10.244.0.1:50051")
	b := snapshot("default", "b", "10.244.0.2:50051")
	c := snapshot("apps", "c", "10.244.0.3:50051")
	for _, s := range []*Service{b, c, a} {
		r.Set(s)
	}
	if got, ok := r.Get(a.Key); !ok || got != a {
		t.Fatalf("Get(%s) = %v, %v; want the stored snapshot", a.Key, got, ok)
	}
	keys := func() []Key {
		var ks []Key
		for _, s := range r.List() {
			ks = append(ks, s.Key)
		}
		return ks
	}
	want := []Key{{"apps", "c"}, {"default", "a"}, {"default", "b"}}
	if diff := cmp.Diff(want, keys()); diff != "" {
		t.Fatalf("List() keys mismatch (-want +got):\n%s", diff)
	}
	a2 := snapshot("default", "a", "10.244.0.1:50051", "10.244.0.4:50051")
	r.Set(a2)
	if got, _ := r.Get(a.Key); got != a2 {
		t.Fatalf("Get after replacing Set returned the old snapshot")
	}
	r.Delete(b.Key)
	r.Delete(Key{"default", "never-set"})
	if _, ok := r.Get(b.Key); ok {
		t.Fatalf("Get(%s) found a deleted service", b.Key)
	}
	if diff := cmp.Diff([]Key{{"apps", "c"}, {"default", "a"}}, keys()); diff != "" {
		t.Fatalf("List() after Delete mismatch (-want +got):\n%s", diff)
	}
}

func TestSubscriptionNotifications(t *testing.T) {
	a := Key{"default", "a"}
	b := Key{"default", "b"}
	tests := []struct {
		name string
		// before runs ahead of Subscribe; change runs after.
		before, change func(r *Registry)
		want           []Key
	}{
		{
			name:   "new service",
			change: func(r *Registry) { r.Set(snapshot("default", "a", "10.244.0.1:50051")) },
			want:   []Key{a},
		},
		{
			name:   "equal snapshot is not a change",
			before: func(r *Registry) { r.Set(snapshot("default", "a", "10.244.0.1:50051")) },
			change: func(r *Registry) { r.Set(snapshot("default", "a", "10.244.0.1:50051")) },
		},
		{
			name:   "changed endpoint condition",
			before: func(r *Registry) { r.Set(snapshot("default", "a", "10.244.0.1:50051")) },
			change: func(r *Registry) {
				s := snapshot("default", "a", "10.244.0.1:50051")
				s.Ports[0].Endpoints[0].Ready = false
				r.Set(s)
			},
			want: []Key{a},
		},
		{
			name:   "changed cluster IP",
			before: func(r *Registry) { r.Set(snapshot("default", "a")) },
			change: func(r *Registry) {
				s := snapshot("default", "a")
				s.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.1")}
				r.Set(s)
			},
			want: []Key{a},
		},
		{
			name:   "delete of a known service",
			before: func(r *Registry) { r.Set(snapshot("default", "a")) },
			change: func(r *Registry) { r.Delete(a) },
			want:   []Key{a},
		},
		{
			name:   "delete of an unknown service is not a change",
			change: func(r *Registry) { r.Delete(a) },
		},
		{
			name: "many changes coalesce to one key each, sorted",
			change: func(r *Registry) {
				for i := range 100 {
					r.Set(snapshot("default", "b", fmt.Sprintf("10.244.0.%d:50051", i%250+1)))
					r.Set(snapshot("default", "a", fmt.Sprintf("10.244.1.%d:50051", i%250+1)))
				}
				r.Delete(b)
			},
			want: []Key{a, b},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry()
			if tt.before != nil {
				tt.before(r)
			}
			sub := r.Subscribe()
			defer sub.Close()
			tt.change(r)
			if got, want := pending(sub), len(tt.want) > 0; got != want {
				t.Errorf("signalled = %v, want %v", got, want)
			}
			if diff := cmp.Diff(tt.want, sub.Drain(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Drain() mismatch (-want +got):\n%s", diff)
			}
			if keys := sub.Drain(); len(keys) != 0 {
				t.Errorf("second Drain() = %v, want nothing", keys)
			}
		})
	}
}

// TestSlowSubscriberDoesNotBlock checks that a subscriber that never drains
// neither blocks writers nor hides changes from a subscriber that does.
func TestSlowSubscriberDoesNotBlock(t *testing.T) {
	r := NewRegistry()
	slow := r.Subscribe()
	defer slow.Close()
	fast := r.Subscribe()
	defer fast.Close()

	const changes = 10000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range changes {
			r.Set(snapshot("default", fmt.Sprintf("svc-%d", i%10), fmt.Sprintf("10.244.%d.%d:50051", i/250%250, i%250+1)))
		}
	}()
	seen := map[Key]bool{}
	deadline := time.After(30 * time.Second)
	for finished := false; !finished; {
		select {
		case <-fast.C():
			for _, k := range fast.Drain() {
				seen[k] = true
			}
		case <-done:
			finished = true
		case <-deadline:
			t.Fatalf("writers blocked: %d changes not applied within the deadline", changes)
		}
	}
	for _, k := range fast.Drain() {
		seen[k] = true
	}
	if len(seen) != 10 {
		t.Errorf("fast subscriber saw %d services, want 10", len(seen))
	}
	if keys := slow.Drain(); len(keys) != 10 {
		t.Errorf("slow subscriber drained %d keys after %d changes, want 10 (coalesced)", len(keys), changes)
	}
}

func TestSubscriptionClose(t *testing.T) {
	r := NewRegistry()
	sub := r.Subscribe()
	sub.Close()
	r.Set(snapshot("default", "a"))
	if pending(sub) {
		t.Errorf("closed subscription was signalled")
	}
	if keys := sub.Drain(); len(keys) != 0 {
		t.Errorf("closed subscription collected %v", keys)
	}
}

func TestServicePort(t *testing.T) {
	multi := &Service{Key: Key{"default", "greeter"}, Ports: []Port{
		{Name: "grpc", Port: 50051, Protocol: "TCP"},
		{Name: "metrics", Port: 9090, Protocol: "TCP"},
	}}
	single := &Service{Key: Key{"default", "greeter"}, Ports: []Port{{Port: 50051, Protocol: "TCP"}}}
	none := &Service{Key: Key{"default", "greeter"}}
	tests := []struct {
		name     string
		svc      *Service
		ref      string
		wantPort int32
		wantErr  string
	}{
		{name: "by name", svc: multi, ref: "metrics", wantPort: 9090},
		{name: "by number", svc: multi, ref: "50051", wantPort: 50051},
		{name: "empty ref on single-port service", svc: single, ref: "", wantPort: 50051},
		{name: "number on unnamed port", svc: single, ref: "50051", wantPort: 50051},
		{name: "empty ref on multi-port service", svc: multi, ref: "",
			wantErr: "service default/greeter has 2 ports; name one (grpc=50051, metrics=9090)"},
		{name: "unknown name", svc: multi, ref: "http",
			wantErr: `service default/greeter has no port "http" (ports: grpc=50051, metrics=9090)`},
		{name: "unknown number", svc: single, ref: "8080",
			wantErr: `service default/greeter has no port "8080" (ports: 50051)`},
		{name: "no ports at all", svc: none, ref: "grpc",
			wantErr: "service default/greeter has no ports"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.svc.Port(tt.ref)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Port(%q) error = %v, want %q", tt.ref, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Port(%q): %v", tt.ref, err)
			}
			if p.Port != tt.wantPort {
				t.Errorf("Port(%q) = %d, want %d", tt.ref, p.Port, tt.wantPort)
			}
		})
	}
}

// TestRoutable: the endpoints that take new calls.
func TestRoutable(t *testing.T) {
	ep := func(addr string, ready, serving, terminating bool) Endpoint {
		return Endpoint{Address: ap(addr), Ready: ready, Serving: serving, Terminating: terminating}
	}
	var (
		ready      = ep("10.0.0.1:80", true, true, false)
		notReady   = ep("10.0.0.2:80", false, false, false)
		draining   = ep("10.0.0.3:80", false, true, true)
		terminated = ep("10.0.0.4:80", false, false, true)
	)
	for _, tc := range []struct {
		name string
		eps  []Endpoint
		want []Endpoint
	}{
		{"ready ones only while any is ready", []Endpoint{ready, notReady, draining, terminated}, []Endpoint{ready}},
		{"none ready: every one not terminating (panic routing)", []Endpoint{notReady, draining, terminated, ep("10.0.0.5:80", false, true, false)},
			[]Endpoint{notReady, ep("10.0.0.5:80", false, true, false)}},
		{"only terminating: none", []Endpoint{draining, terminated}, nil},
		{"no endpoints", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, Routable(tc.eps), addrComparers); diff != "" {
				t.Errorf("Routable mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// BenchmarkRegistrySetUnchanged measures the common case of a recomputed
// snapshot equal to the stored one (300 endpoints): compared, not stored,
// nobody notified.
func BenchmarkRegistrySetUnchanged(b *testing.B) {
	var addrs []string
	for i := range 300 {
		addrs = append(addrs, fmt.Sprintf("10.244.%d.%d:50051", i/250, i%250+1))
	}
	r := NewRegistry()
	sub := r.Subscribe()
	defer sub.Close()
	r.Set(snapshot("default", "greeter", addrs...))
	next := snapshot("default", "greeter", addrs...)
	b.ReportAllocs()
	for b.Loop() {
		r.Set(next)
	}
}
