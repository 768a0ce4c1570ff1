package peakewma

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	rand "math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/balancer/internal/readyset"
	"github.com/ballast-dev/ballast/internal/balancertest"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, js string
		want     Config
		wantErr  string
	}{
		{name: "empty", js: ``, want: Config{Decay: 10 * time.Second, DefaultRTT: 30 * time.Millisecond}},
		{name: "defaults", js: `{}`, want: Config{Decay: 10 * time.Second, DefaultRTT: 30 * time.Millisecond}},
		{name: "both", js: `{"decay":"2s","defaultRtt":"5ms"}`, want: Config{Decay: 2 * time.Second, DefaultRTT: 5 * time.Millisecond}},
		{name: "zero default rtt", js: `{"defaultRtt":"0s"}`, want: Config{Decay: 10 * time.Second}},
		{name: "bad decay", js: `{"decay":"ten"}`, wantErr: `ballast_peak_ewma: config field "decay": time: invalid duration "ten"`},
		{name: "zero decay", js: `{"decay":"0s"}`, wantErr: `"decay" is "0s"; it must be positive`},
		{name: "negative rtt", js: `{"defaultRtt":"-1ms"}`, wantErr: `"defaultRtt" is "-1ms"; it must not be negative`},
		{name: "number not string", js: `{"decay":10}`, wantErr: `cannot unmarshal number`},
		{name: "unknown field", js: `{"tau":"1s"}`, wantErr: `unknown field "tau"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseConfig([]byte(tc.js))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseConfig(%s) = %v, want error containing %q", tc.js, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseConfig(%s): %v", tc.js, err)
			}
			if got.Decay != tc.want.Decay || got.DefaultRTT != tc.want.DefaultRTT {
				t.Fatalf("parseConfig(%s) = %+v, want %+v", tc.js, *got, tc.want)
			}
		})
	}
}

// clock is a fake nanotime.
type clock struct{ t atomic.Int64 }

func (c *clock) now() int64              { return c.t.Load() }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

const ms = float64(time.Millisecond)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

// TestEstimate walks one endpoint through samples on a fake clock: peaks
// are taken at once, lower samples weigh 1-exp(-elapsed/decay) but at least
// 1/16, and the estimate decays toward zero between samples.
func TestEstimate(t *testing.T) {
	const decay = 10 * time.Second
	e1 := math.Exp(-1)
	type step struct {
		after  time.Duration // clock advance before the step
		sample float64       // < 0: no sample, just read
		want   float64       // estimate after the step
	}
	for _, tc := range []struct {
		name       string
		defaultRTT time.Duration
		steps      []step
	}{
		{name: "default until observed", defaultRTT: 30 * time.Millisecond, steps: []step{
			{after: 0, sample: -1, want: 30 * ms},
		}},
		{name: "peak replaces at once", defaultRTT: time.Millisecond, steps: []step{
			{after: 0, sample: 20 * ms, want: 20 * ms},
			{after: 0, sample: 50 * ms, want: 50 * ms},
		}},
		{name: "lower sample weighs by elapsed time", defaultRTT: 0, steps: []step{
			{after: 0, sample: 10 * ms, want: 10 * ms},
			{after: decay, sample: 2 * ms, want: 10*ms*e1 + 2*ms*(1-e1)},
		}},
		{name: "back-to-back lower sample weighs 1/16", defaultRTT: 0, steps: []step{
			{after: 0, sample: 10 * ms, want: 10 * ms},
			{after: 0, sample: 1 * ms, want: 10*ms*15/16 + 1*ms/16},
		}},
		{name: "decays toward zero without samples", defaultRTT: 0, steps: []step{
			{after: 0, sample: 10 * ms, want: 10 * ms},
			{after: decay, sample: -1, want: 10 * ms * e1},
			{after: decay, sample: -1, want: 10 * ms * e1 * e1},
		}},
		{name: "default decays too", defaultRTT: 30 * time.Millisecond, steps: []step{
			{after: 2 * decay, sample: -1, want: 30 * ms * e1 * e1},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c clock
			var d atomic.Int64
			d.Store(int64(decay))
			ep := newEndpoint(c.now, &d, tc.defaultRTT)
			for i, s := range tc.steps {
				c.advance(s.after)
				if s.sample >= 0 {
					ep.observe(s.sample, c.now())
				}
				if got := ep.estimate(c.now()); !near(got, s.want) {
					t.Fatalf("step %d: estimate %.6fms, want %.6fms", i, got/ms, s.want/ms)
				}
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

type stat struct {
	rtt      time.Duration
	inFlight int64
}

// testPicker builds a picker over stats in order; the endpoints whose ids
// are in untried have had no call end yet.
func testPicker(c *clock, stats []stat, untried []int, order []int, rnd func() uint64) *picker {
	var d atomic.Int64
	d.Store(int64(10 * time.Second))
	p := &picker{rand: rnd, now: c.now}
	for _, id := range order {
		ep := newEndpoint(c.now, &d, stats[id].rtt)
		ep.inFlight.Store(stats[id].inFlight)
		ep.tried.Store(!slices.Contains(untried, id))
		p.choices = append(p.choices, readyset.Choice[*endpoint]{Picker: fakeChild{balancer.PickResult{SubConn: &fakeSubConn{id: id}}}, Stats: ep})
	}
	return p
}

// TestChooseCheaper drives the picker through every ordered pair of draws
// for several orderings of the endpoints and counts wins per endpoint: the
// cheaper of each pair by rtt × (in flight + 1) wins, ties split evenly.
func TestChooseCheaper(t *testing.T) {
	orders := [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}, {0, 2, 1}, {1, 2, 0}, {2, 0, 1}}
	for _, tc := range []struct {
		name    string
		stats   []stat
		untried []int // the ids of new endpoints
		wins    []int // by endpoint id over the 6 ordered pairs
	}{
		{name: "equal", stats: []stat{{10 * time.Millisecond, 0}, {10 * time.Millisecond, 0}, {10 * time.Millisecond, 0}}, wins: []int{2, 2, 2}},
		{name: "slow loses", stats: []stat{{20 * time.Millisecond, 0}, {time.Millisecond, 0}, {time.Millisecond, 0}}, wins: []int{0, 3, 3}},
		{name: "load offsets latency", stats: []stat{{4 * time.Millisecond, 0}, {time.Millisecond, 4}, {time.Millisecond, 0}}, wins: []int{2, 0, 4}},
		{name: "tie by cost", stats: []stat{{2 * time.Millisecond, 0}, {time.Millisecond, 1}, {3 * time.Millisecond, 0}}, wins: []int{3, 3, 0}},
		{name: "a new endpoint gets a call at once", stats: []stat{{time.Millisecond, 0}, {time.Millisecond, 0}, {30 * time.Millisecond, 0}}, untried: []int{2}, wins: []int{1, 1, 4}},
		{name: "then its estimate judges it", stats: []stat{{time.Millisecond, 0}, {time.Millisecond, 0}, {30 * time.Millisecond, 1}}, untried: []int{2}, wins: []int{3, 3, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range orders {
				var c clock
				wins := make([]int, 3)
				for a := range uint64(3) {
					for b := range uint64(3) {
						if a == b {
							continue
						}
						w := readyset.Draw(a, b, 3)
						p := testPicker(&c, tc.stats, tc.untried, order, func() uint64 { return w })
						res, err := p.Pick(balancer.PickInfo{})
						if err != nil {
							t.Fatal(err)
						}
						wins[res.SubConn.(*fakeSubConn).id]++
					}
				}
				if fmt.Sprint(wins) != fmt.Sprint(tc.wins) {
					t.Fatalf("ordering %v: wins %v, want %v", order, wins, tc.wins)
				}
			}
		})
	}
}

// TestDoneSamples checks what a finished call teaches the endpoint.
func TestDoneSamples(t *testing.T) {
	for _, tc := range []struct {
		name    string
		info    balancer.DoneInfo
		wantRTT float64
	}{
		{name: "answered", info: balancer.DoneInfo{BytesReceived: true}, wantRTT: 5 * ms},
		{name: "answered with an error", info: balancer.DoneInfo{BytesReceived: true, Err: status.Error(codes.NotFound, "x")}, wantRTT: 5 * ms},
		{name: "deadline exceeded", info: balancer.DoneInfo{Err: status.Error(codes.DeadlineExceeded, "x")}, wantRTT: 5 * ms},
		{name: "context deadline", info: balancer.DoneInfo{Err: fmt.Errorf("call: %w", context.DeadlineExceeded)}, wantRTT: 5 * ms},
		{name: "refused", info: balancer.DoneInfo{Err: status.Error(codes.Unavailable, "connection refused")}, wantRTT: 1 * ms},
		{name: "cancelled", info: balancer.DoneInfo{Err: context.Canceled}, wantRTT: 1 * ms},
		{name: "transport not ready, repicked", info: balancer.DoneInfo{}, wantRTT: 1 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c clock
			var childDone int
			p := testPicker(&c, []stat{{time.Millisecond, 0}}, nil, []int{0}, nil)
			p.choices[0].Picker = fakeChild{balancer.PickResult{SubConn: &fakeSubConn{}, Done: func(balancer.DoneInfo) { childDone++ }}}
			ep := p.choices[0].Stats
			res, err := p.Pick(balancer.PickInfo{})
			if err != nil {
				t.Fatal(err)
			}
			if ep.inFlight.Load() != 1 {
				t.Fatalf("in flight after pick = %d, want 1", ep.inFlight.Load())
			}
			c.advance(5 * time.Millisecond)
			res.Done(tc.info)
			res.Done(tc.info) // a second Done must change nothing
			if got := ep.inFlight.Load(); got != 0 {
				t.Fatalf("in flight after Done = %d, want 0", got)
			}
			if got := math.Float64frombits(ep.rtt.Load()); !near(got, tc.wantRTT) {
				t.Fatalf("rtt after Done = %.3fms, want %.3fms", got/ms, tc.wantRTT/ms)
			}
			if childDone != 1 {
				t.Fatalf("child Done called %d times, want 1", childDone)
			}
		})
	}
}

// TestStatisticsSurvivePickerRebuild: what an endpoint learned stays when
// another endpoint joins.
func TestStatisticsSurvivePickerRebuild(t *testing.T) {
	cc, bal := balancertest.Start(t, Name, `{"defaultRtt":"1ms"}`, "10.0.0.1:80", "10.0.0.2:80")
	first := cc.State().Picker.(*picker)
	res, err := first.Pick(balancer.PickInfo{})
	if err != nil {
		t.Fatal(err)
	}
	held := res.SubConn.(*balancertest.SubConn).Addr
	cfg, _ := parseConfig([]byte(`{"defaultRtt":"1ms"}`))
	if err := balancertest.Update(bal, cfg, "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"); err != nil {
		t.Fatal(err)
	}
	cc.MakeReady(t, "10.0.0.3:80")
	second := cc.State().Picker.(*picker)
	if second == first || len(second.choices) != 3 {
		t.Fatalf("picker after adding an endpoint has %d choices; want a new picker with 3", len(second.choices))
	}
	for _, c := range second.choices {
		r, _ := c.Picker.Pick(balancer.PickInfo{})
		want := int64(0)
		if r.SubConn.(*balancertest.SubConn).Addr == held {
			want = 1
		}
		if got := c.Stats.inFlight.Load(); got != want {
			t.Fatalf("%s: in flight %d after rebuild, want %d", r.SubConn.(*balancertest.SubConn).Addr, got, want)
		}
	}
	res.Done(balancer.DoneInfo{})
}

func TestResolverErrorWithoutEndpoints(t *testing.T) {
	const msg = "no ready endpoints for greeter.default:50051"
	cc := balancertest.NewClientConn()
	bal := builder{}.Build(cc, balancer.BuildOptions{})
	defer bal.Close()
	if err := balancertest.Update(bal, nil); !errors.Is(err, balancer.ErrBadResolverState) {
		t.Fatalf("empty update: %v, want ErrBadResolverState", err)
	}
	bal.ResolverError(errors.New(msg))
	st := cc.State()
	if st.ConnectivityState != connectivity.TransientFailure {
		t.Fatalf("state %v, want TRANSIENT_FAILURE", st.ConnectivityState)
	}
	if _, err := st.Picker.Pick(balancer.PickInfo{}); err == nil || !strings.Contains(err.Error(), msg) {
		t.Fatalf("Pick error %v, want one containing %q", err, msg)
	}
}

// TestCheaperMatchesCost checks the one-exponential comparison against the
// costs it stands for, over random statistics and ages.
func TestCheaperMatchesCost(t *testing.T) {
	var c clock
	var d atomic.Int64
	d.Store(int64(time.Second))
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 100000 {
		x, y := newEndpoint(c.now, &d, 0), newEndpoint(c.now, &d, 0)
		for _, ep := range []*endpoint{x, y} {
			ep.rtt.Store(math.Float64bits(rnd.Float64() * 50 * ms))
			ep.stamp.Store(-rnd.Int64N(int64(5 * time.Second)))
			ep.inFlight.Store(rnd.Int64N(5))
			ep.tried.Store(rnd.IntN(4) != 0)
		}
		cx, cy := x.cost(0), y.cost(0)
		if math.Abs(cx-cy) <= 1e-9*math.Max(cx, cy) {
			continue // too close to call in floating point
		}
		if got := cheaper(x, y, 0); got != (cx < cy) {
			t.Fatalf("case %d: cheaper = %v but costs are %g and %g", i, got, cx, cy)
		}
	}
}

// TestConfigRoundTrips checks that a parsed config marshals to JSON that
// parses to the same config, as grpc-go's xDS parent policies require.
func TestConfigRoundTrips(t *testing.T) {
	for _, js := range []string{`{}`, `{"decay":"3s"}`, `{"decay":"1m","defaultRtt":"5ms"}`, `{"defaultRtt":"0s"}`} {
		cfg, err := parseConfig([]byte(js))
		if err != nil {
			t.Fatalf("parse %s: %v", js, err)
		}
		out, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseConfig(out)
		if err != nil {
			t.Fatalf("parse of marshalled %s (%s): %v", js, out, err)
		}
		if again.Decay != cfg.Decay || again.DefaultRTT != cfg.DefaultRTT {
			t.Fatalf("%s → %s → %+v, want %+v", js, out, again, cfg)
		}
	}
}
