package client

import (
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/policy"
)

// recorder keeps the last Update a watch was given.
type recorder struct {
	mu   sync.Mutex
	last *Update
	n    int
}

func (r *recorder) update(u Update) { r.mu.Lock(); r.last, r.n = &u, r.n+1; r.mu.Unlock() }

func (r *recorder) get() (Update, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		return Update{}, false
	}
	return *r.last, true
}

// has reports whether the last update sends calls to a Cluster with lb
// and these usable endpoint addresses.
func (r *recorder) has(lb policy.LB, addrs ...string) bool {
	u, ok := r.get()
	if !ok || len(u.Route.Rules) == 0 {
		return false
	}
	name := u.Route.Rules[0].Backends[0].Cluster
	usable := u.Endpoints[name].Usable()
	if u.Clusters[name].LB != lb || len(usable) != len(addrs) {
		return false
	}
	for i, e := range usable {
		if e.Address.String() != addrs[i] {
			return false
		}
	}
	return true
}

func greeterService(lb string, addrs ...string) *discovery.Service {
	svc := clusterIPService("greeter", "10.96.0.10", 50051)
	if lb != "" {
		svc.Annotations = map[string]string{policy.LBAnnotation: lb}
	}
	for _, a := range addrs {
		svc.Ports[0].Endpoints = append(svc.Ports[0].Endpoints, discovery.Endpoint{Address: netip.MustParseAddrPort(a), Ready: true, Serving: true})
	}
	return svc
}

// streamsOf counts the ADS streams the control plane's client table holds
// for node id.
func streamsOf(t *testing.T, cp *plane, id string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	cp.srv.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/clients", nil))
	var clients []struct {
		NodeID string `json:"nodeId"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &clients); err != nil {
		t.Fatalf("/debug/clients: %v: %s", err, rec.Body)
	}
	n := 0
	for _, c := range clients {
		if c.NodeID == id {
			n++
		}
	}
	return n
}

// One stream carries everything a sidecar follows: the sidecar listeners
// (wildcard) and the chain of every target, whether named by the route a
// sidecar listener gives or by a Service's dial name.
func TestOneStreamCarriesSidecarListenersAndTargets(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(greeterService("", "127.0.0.1:1001", "127.0.0.1:1002"))
	cp := servePlane(t, reg, listen(t))
	const id = "ballast~sidecar.default"
	c := runClient(t, Config{Server: cp.addr, SidecarListeners: true, Node: Node{ID: id}})

	eventually(t, "sidecar listeners", c.SidecarListenersSynced)
	target, ok := c.Target(netip.MustParseAddrPort("10.96.0.10:50051"))
	if !ok {
		t.Fatal("no target for the greeter's ClusterIP")
	}
	var byRoute, byName recorder
	defer c.Watch(target[len("xds:///"):], byRoute.update)()
	defer c.Watch("greeter.default:50051", byName.update)()
	for _, r := range []*recorder{&byRoute, &byName} {
		eventually(t, "round_robin over both endpoints", func() bool { return r.has(policy.RoundRobin, "127.0.0.1:1001", "127.0.0.1:1002") })
	}

	reg.Set(greeterService("peak_ewma", "127.0.0.1:1001", "127.0.0.1:1003"))
	for _, r := range []*recorder{&byRoute, &byName} {
		eventually(t, "the new policy and endpoints", func() bool { return r.has(policy.PeakEWMA, "127.0.0.1:1001", "127.0.0.1:1003") })
	}
	if n := streamsOf(t, cp, id); n != 1 {
		t.Fatalf("the control plane holds %d streams for the sidecar, want 1", n)
	}
}

// Without the sidecar listeners, a target is followed from its Listener,
// as a proxyless client does.
func TestWatchFollowsNamedListener(t *testing.T) {
	reg := discovery.NewRegistry()
	reg.Set(greeterService("least_request", "127.0.0.1:1001"))
	cp := servePlane(t, reg, listen(t))
	c := runClient(t, Config{Server: cp.addr})
	var r recorder
	cancel := c.Watch("greeter.default:50051", r.update)
	eventually(t, "least_request over the endpoint", func() bool { return r.has(policy.LeastRequest, "127.0.0.1:1001") })

	// A draining endpoint is listed but not usable.
	svc := greeterService("least_request", "127.0.0.1:1001", "127.0.0.1:1002")
	svc.Ports[0].Endpoints[0].Ready, svc.Ports[0].Endpoints[0].Terminating = false, true
	reg.Set(svc)
	eventually(t, "the draining endpoint left out", func() bool { return r.has(policy.LeastRequest, "127.0.0.1:1002") })
	u, _ := r.get()
	if e := u.Endpoints[u.Route.Rules[0].Backends[0].Cluster].Endpoints; len(e) != 2 || e[0].Health != policy.Draining {
		t.Fatalf("endpoints %+v, want the draining one listed as draining", e)
	}

	cancel()
	r.mu.Lock()
	before := r.n
	r.mu.Unlock()
	reg.Set(greeterService("least_request", "127.0.0.1:1003"))
	// A second watch of the same name sees the change, the cancelled one
	// does not.
	var after recorder
	defer c.Watch("greeter.default:50051", after.update)()
	eventually(t, "the new endpoint", func() bool { return after.has(policy.LeastRequest, "127.0.0.1:1003") })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n != before {
		t.Fatalf("a cancelled watch was called %d more times", r.n-before)
	}
}
