package priority_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	_ "github.com/ballast-dev/ballast/balancer/p2c"
	"github.com/ballast-dev/ballast/balancer/priority"
	"github.com/ballast-dev/ballast/greeter/greetertest"
)

func TestParseConfig(t *testing.T) {
	parser := balancer.Get(priority.Name).(balancer.ConfigParser)
	for _, tc := range []struct {
		name, js, child, err string
	}{
		{name: "round_robin", js: `{"childPolicy":[{"round_robin":{}}]}`, child: "round_robin"},
		{name: "first registered wins", js: `{"childPolicy":[{"no_such_policy":{}},{"ballast_p2c":{}}]}`, child: "ballast_p2c"},
		{name: "none registered", js: `{"childPolicy":[{"no_such_policy":{}}]}`, err: "childPolicy names no registered policy ([no_such_policy])"},
		{name: "empty", js: `{}`, err: "childPolicy names no registered policy"},
		{name: "bad child config", js: `{"childPolicy":[{"ballast_p2c":{"choiceCount":2}}]}`, err: "childPolicy ballast_p2c"},
		{name: "not JSON", js: `[`, err: "ballast_priority config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parser.ParseConfig(json.RawMessage(tc.js))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseConfig(%s) = %v, want an error with %q", tc.js, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.(*priority.Config).ChildName; got != tc.child {
				t.Fatalf("child %s, want %s", got, tc.child)
			}
		})
	}
}

// TestFailover: a real grpc-go channel under load keeps every call on
// priority 0 while it answers, fails over to priority 1 without a failed
// call when priority 0's servers stop before the resolver says so, keeps
// going when the resolver then drops them, and returns to priority 0 when
// it has a server again.
func TestFailover(t *testing.T) {
	for _, child := range []string{`[{"round_robin":{}}]`, `[{"ballast_p2c":{}}]`} {
		t.Run(child, func(t *testing.T) { testFailover(t, child) })
	}
}

func testFailover(t *testing.T, child string) {
	a1 := greetertest.Start(t, "a1", greetertest.Options{Host: "127.0.0.2"})
	a2 := greetertest.Start(t, "a2", greetertest.Options{Host: "127.0.0.3"})
	b1 := greetertest.Start(t, "b1", greetertest.Options{Host: "127.0.0.4"})
	b2 := greetertest.Start(t, "b2", greetertest.Options{Host: "127.0.0.5"})
	state := func(prio ...[]*greetertest.Pod) resolver.State {
		var s resolver.State
		for p, pods := range prio {
			for _, pod := range pods {
				s.Endpoints = append(s.Endpoints, priority.Set(resolver.Endpoint{Addresses: []resolver.Address{{Addr: pod.Addr.String()}}}, p))
			}
		}
		return s
	}
	r := manual.NewBuilderWithScheme("priority")
	r.InitialState(state([]*greetertest.Pod{a1, a2}, []*greetertest.Pod{b1, b2}))
	conn, err := grpc.NewClient(r.Scheme()+":///greeter", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(priority.ServiceConfig(child)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	load := greetertest.StartLoad(t, conn, 4)
	greetertest.Eventually(t, 10*time.Second, func() bool { c := load.Counts(); return c["a1"] > 0 && c["a2"] > 0 }, "a1 and a2 answer")
	before := load.Counts()
	greetertest.Eventually(t, 10*time.Second, func() bool { return total(load.Counts()) >= total(before)+500 }, "500 more calls")
	inZone := load.Counts()
	if n := inZone["b1"] + inZone["b2"]; n != 0 {
		t.Fatalf("priority 1 answered %d calls while priority 0 served: %v", n, inZone)
	}

	// Priority 0 stops; the resolver has not noticed.
	a1.Stop()
	a2.Stop()
	greetertest.Eventually(t, 10*time.Second, func() bool { c := load.Counts(); return c["b1"] > before["b1"]+100 && c["b2"] > before["b2"]+100 }, "b1 and b2 take over")
	// The resolver drops them: priority 1 becomes the only one.
	r.UpdateState(state([]*greetertest.Pod{b1, b2}))
	mid := load.Counts()
	greetertest.Eventually(t, 10*time.Second, func() bool { return total(load.Counts()) >= total(mid)+200 }, "200 more calls")
	// A new server in priority 0: calls come back to it.
	a3 := greetertest.Start(t, "a3", greetertest.Options{Host: "127.0.0.6"})
	r.UpdateState(state([]*greetertest.Pod{a3}, []*greetertest.Pod{b1, b2}))
	greetertest.Eventually(t, 10*time.Second, func() bool { return load.Counts()["a3"] > 0 }, "a3 answers")
	back := load.Counts()
	greetertest.Eventually(t, 10*time.Second, func() bool { return total(load.Counts()) >= total(back)+300 }, "300 more calls")
	counts, failed := load.Stop()
	if n := counts["b1"] + counts["b2"] - back["b1"] - back["b2"]; n > 4 { // calls in flight at the switch
		t.Errorf("priority 1 answered %d calls after a3 was ready: %v then %v", n, back, counts)
	}
	if len(failed) > 0 {
		t.Fatalf("%d calls failed, first %v; answered %v", len(failed), failed[0], counts)
	}
	t.Logf("answered: %v", counts)
}

func total(c map[string]int) int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}
