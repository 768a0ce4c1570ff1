package p2c

import (
	"errors"
	"fmt"
	rand "math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"

	"github.com/ballast-dev/ballast/balancer/internal/readyset"
	"github.com/ballast-dev/ballast/internal/balancertest"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, js, wantErr string
	}{
		{name: "empty object", js: `{}`},
		{name: "empty", js: ``},
		{name: "unknown field", js: `{"choiceCount":3}`, wantErr: `unknown field "choiceCount"`},
		{name: "not an object", js: `[1]`, wantErr: "ballast_p2c: config [1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := builder{}.ParseConfig([]byte(tc.js))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("ParseConfig(%s): %v", tc.js, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("ParseConfig(%s) = %v, want error containing %q", tc.js, err, tc.wantErr)
			}
		})
	}
}

type fakeSubConn struct {
	balancer.SubConn
	id int
}

type fakeChild struct{ res balancer.PickResult }

func (f fakeChild) Pick(balancer.PickInfo) (balancer.PickResult, error) { return f.res, nil }

// testPicker builds a picker over endpoints with the given calls in flight,
// in the given order; the SubConn of endpoint i has id ids[i].
func testPicker(loads []int64, ids []int, rnd func() uint64) *picker {
	choices := make([]readyset.Choice[*endpoint], len(loads))
	for i, l := range loads {
		ep := newEndpoint()
		ep.inFlight.Store(l)
		choices[i] = readyset.Choice[*endpoint]{Picker: fakeChild{balancer.PickResult{SubConn: &fakeSubConn{id: ids[i]}}}, Stats: ep}
	}
	return &picker{choices: choices, rand: rnd}
}

// permutations returns every ordering of 0..n-1.
func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			q := append(append(append([]int{}, p[:i]...), n-1), p[i:]...)
			out = append(out, q)
		}
	}
	return out
}

// TestChooseOverEveryPairAndOrdering drives the picker through every ordered
// pair of draws, for every ordering of the endpoints, and checks which
// endpoints win how often: the less loaded of each pair, ties split evenly.
func TestChooseOverEveryPairAndOrdering(t *testing.T) {
	for _, tc := range []struct {
		name  string
		loads []int64 // by endpoint id
		wins  []int   // by endpoint id, over all n(n-1) draws of one ordering
	}{
		{name: "all tied", loads: []int64{0, 0, 0, 0}, wins: []int{3, 3, 3, 3}},
		{name: "all tied busy", loads: []int64{7, 7, 7}, wins: []int{2, 2, 2}},
		{name: "one idle", loads: []int64{2, 0, 2, 2}, wins: []int{2, 6, 2, 2}},
		{name: "strict order", loads: []int64{0, 1, 2, 3}, wins: []int{6, 4, 2, 0}},
		{name: "two", loads: []int64{1, 0}, wins: []int{0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(tc.loads)
			for _, order := range permutations(n) {
				loads := make([]int64, n)
				for i, id := range order {
					loads[i] = tc.loads[id]
				}
				wins := make([]int, n)
				for a := range n {
					for b := range n {
						if a == b {
							continue
						}
						w := readyset.Draw(uint64(a), uint64(b), uint64(n))
						p := testPicker(loads, order, func() uint64 { return w })
						res, err := p.Pick(balancer.PickInfo{})
						if err != nil {
							t.Fatal(err)
						}
						wins[res.SubConn.(*fakeSubConn).id]++
					}
				}
				if fmt.Sprint(wins) != fmt.Sprint(tc.wins) {
					t.Fatalf("ordering %v: wins by endpoint %v, want %v", order, wins, tc.wins)
				}
			}
		})
	}
}

func TestPickCountsUntilDone(t *testing.T) {
	var childDone int
	p := testPicker([]int64{0}, []int{0}, rand.Uint64)
	p.choices[0].Picker = fakeChild{balancer.PickResult{
		SubConn: &fakeSubConn{},
		Done:    func(balancer.DoneInfo) { childDone++ },
	}}
	ep := p.choices[0].Stats
	var dones []func(balancer.DoneInfo)
	for range 3 {
		res, err := p.Pick(balancer.PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		dones = append(dones, res.Done)
	}
	if got := ep.inFlight.Load(); got != 3 {
		t.Fatalf("in flight after 3 picks = %d, want 3", got)
	}
	for _, d := range dones {
		d(balancer.DoneInfo{Err: errors.New("failed calls count down too")})
	}
	if got := ep.inFlight.Load(); got != 0 || childDone != 3 {
		t.Fatalf("after Done: in flight %d, child Done called %d times; want 0 and 3", got, childDone)
	}
}

// TestSpreadWithRealRandom checks the shape over many random picks: calls
// that end at once spread evenly; calls that stay in flight stay level.
func TestSpreadWithRealRandom(t *testing.T) {
	const n, picks = 5, 50000
	t.Run("done at once", func(t *testing.T) {
		p := testPicker(make([]int64, n), []int{0, 1, 2, 3, 4}, rand.Uint64)
		wins := make([]int, n)
		for range picks {
			res, _ := p.Pick(balancer.PickInfo{})
			wins[res.SubConn.(*fakeSubConn).id]++
			res.Done(balancer.DoneInfo{})
		}
		for id, w := range wins {
			if w < picks/n*9/10 || w > picks/n*11/10 {
				t.Fatalf("endpoint %d won %d of %d picks; want within 10%% of %d (%v)", id, w, picks, picks/n, wins)
			}
		}
	})
	t.Run("held", func(t *testing.T) {
		// Seeded sources, so the bound below is checked against real
		// random sequences without making the test a lottery: with two
		// choices the gap stays O(log log n), but across unseeded runs it
		// occasionally reaches 4 on 5 endpoints. These 20 seeds stay within 3.
		for seed := range uint64(20) {
			src := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
			p := testPicker(make([]int64, n), []int{0, 1, 2, 3, 4}, src.Uint64)
			for range picks {
				p.Pick(balancer.PickInfo{})
			}
			lo, hi := int64(picks), int64(0)
			for _, c := range p.choices {
				lo, hi = min(lo, c.Stats.inFlight.Load()), max(hi, c.Stats.inFlight.Load())
			}
			if hi-lo > 3 {
				t.Fatalf("seed %d: in flight ranges %d..%d after %d held picks; want a gap of at most 3", seed, lo, hi, picks)
			}
		}
	})
}

// TestCountsSurvivePickerRebuild holds calls on an endpoint, adds another
// endpoint (a new picker), and checks the new picker still sees the load.
func TestCountsSurvivePickerRebuild(t *testing.T) {
	cc, bal := balancertest.Start(t, Name, `{}`, "10.0.0.1:80", "10.0.0.2:80")
	first := cc.State().Picker.(*picker)
	res, err := first.Pick(balancer.PickInfo{})
	if err != nil {
		t.Fatal(err)
	}
	held := res.SubConn.(*balancertest.SubConn).Addr

	if err := balancertest.Update(bal, &Config{}, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"); err != nil {
		t.Fatal(err)
	}
	cc.MakeReady(t, "10.0.0.3:80")
	second := cc.State().Picker.(*picker)
	if second == first || len(second.choices) != 3 {
		t.Fatalf("picker after adding an endpoint has %d choices; want a new picker with 3", len(second.choices))
	}
	loads := map[string]int64{}
	for _, c := range second.choices {
		r, _ := c.Picker.Pick(balancer.PickInfo{})
		loads[r.SubConn.(*balancertest.SubConn).Addr] = c.Stats.inFlight.Load()
	}
	if loads[held] != 1 {
		t.Fatalf("in flight by endpoint after rebuild %v; want 1 on %s", loads, held)
	}
	res.Done(balancer.DoneInfo{})
	for _, c := range second.choices {
		if c.Stats.inFlight.Load() != 0 {
			t.Fatalf("Done through the old picker did not reach the new one's counts")
		}
	}
}

func TestResolverErrorWithoutEndpoints(t *testing.T) {
	const msg = "service default/nope not found"
	for _, tc := range []struct {
		name   string
		update bool // an empty update before the error, as the resolver sends after a good state
	}{
		{name: "error first"},
		{name: "after empty update", update: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := balancertest.NewClientConn()
			bal := builder{}.Build(cc, balancer.BuildOptions{})
			defer bal.Close()
			if tc.update {
				if err := balancertest.Update(bal, &Config{}); !errors.Is(err, balancer.ErrBadResolverState) {
					t.Fatalf("empty update: %v, want ErrBadResolverState", err)
				}
			}
			bal.ResolverError(errors.New(msg))
			st := cc.State()
			if st.ConnectivityState != connectivity.TransientFailure {
				t.Fatalf("state %v, want TRANSIENT_FAILURE", st.ConnectivityState)
			}
			if _, err := st.Picker.Pick(balancer.PickInfo{}); err == nil || !strings.Contains(err.Error(), msg) {
				t.Fatalf("Pick error %v, want one containing %q", err, msg)
			}
		})
	}
}
