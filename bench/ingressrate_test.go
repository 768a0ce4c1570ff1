package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestDueAfter(t *testing.T) {
	for _, tc := range []struct {
		i    int64
		rate float64
		want time.Duration
	}{
		{0, 1000, 0},
		{1, 1000, time.Millisecond},
		{2500, 1000, 2500 * time.Millisecond},
		{3, 3000, time.Millisecond},
		{1, 3, 333333333},
		{7, 0.5, 14 * time.Second},
	} {
		if got := dueAfter(tc.i, tc.rate); got != tc.want {
			t.Errorf("dueAfter(%d, %g) = %v, want %v", tc.i, tc.rate, got, tc.want)
		}
	}
}

func TestPacedRate(t *testing.T) {
	for _, tc := range []struct {
		name       string
		capacities []float64
		load       float64
		want       float64
		err        string
	}{
		{"half the lowest", []float64{9000, 5600, 12000}, 0.5, 2800, ""},
		{"one path", []float64{8000}, 0.25, 2000, ""},
		{"a path that made no call is not the lowest", []float64{0, 6000}, 0.5, 3000, ""},
		{"all of it", []float64{4000, 5000}, 1, 4000, ""},
		{"no capacity", []float64{0, 0}, 0.5, 0, "no capacity"},
		{"no path", nil, 0.5, 0, "no capacity"},
		{"no load", []float64{4000}, 0, 0, "want above 0"},
		{"beyond capacity", []float64{4000}, 1.5, 0, "at most 1"},
	} {
		got, err := pacedRate(tc.capacities, tc.load)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one saying %q", tc.name, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case got != tc.want:
			t.Errorf("%s: rate %g, want %g", tc.name, got, tc.want)
		}
	}
}

// A tiny run of scenario 2c, client-side paths only: the run's rate comes
// from their capacities, and each path reports the calls it was paced to
// make, with the load generator's lag for each.
func TestIngressRateSmoke(t *testing.T) {
	b := newTestBench(t)
	s := b.ingressRate(context.Background(), ingressRateConfig{Calls: 30, Turns: 3, Warmup: 20, Concurrency: 4, Load: 0.5, InFlight: 8, Pods: 2,
		Paths: []path{direct(), clientSide("round_robin", "round_robin")}})
	if s.NotMeasured != "" {
		t.Fatal(s.NotMeasured)
	}
	wantRows(t, s, map[string]string{"direct": "", "round_robin": ""})
	var offered []float64
	for _, r := range s.Rows {
		if got := r.Values[colErrors]; len(got) != 1 || got[0] != 0 {
			t.Errorf("%s errors %v, want [0]", r.Path, got)
		}
		for _, col := range []string{colP99, colOffered, colCapacity, colLagP99} {
			if got := r.Values[col]; len(got) != 1 || got[0] < 0 || (col != colLagP99 && got[0] == 0) {
				t.Errorf("%s %s %v, want one value above 0", r.Path, col, got)
			}
		}
		offered = append(offered, r.Values[colOffered]...)
	}
	if len(offered) != 2 || offered[0] != offered[1] {
		t.Errorf("offered rates %v, want one rate for both paths", offered)
	}
}
