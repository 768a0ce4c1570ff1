package demo

import (
	"context"
	"testing"
	"time"
)

// TestReplayShowsTheArticlesImbalanceAndItsFix is the article end to end on
// loopback: through the plain Service one pod answers every call; with
// per-call balancing the calls spread evenly.
func TestReplayShowsTheArticlesImbalanceAndItsFix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{Calls: 300})
	if err != nil {
		t.Fatal(err)
	}
	byMode := map[string]ModeResult{}
	for _, m := range res.Modes {
		byMode[m.Mode] = m
		if m.Calls != 300 || m.Errors != 0 {
			t.Errorf("%s: %d calls, %d errors (last: %s); want 300 calls, 0 errors", m.Mode, m.Calls, m.Errors, m.LastError)
		}
		if len(m.Pods) != 3 {
			t.Errorf("%s: pods %v, want all 3 listed", m.Mode, m.Pods)
		}
	}
	if got := byMode["plain-service"].MaxMean; got != 3 {
		t.Errorf("plain-service max/mean = %.2f, want 3 (every call on one pod): %v", got, byMode["plain-service"].Pods)
	}
	for _, mode := range []string{"client-side", "proxyless", "sidecar"} {
		m, ok := byMode[mode]
		if !ok {
			t.Errorf("no %s row in %+v", mode, res.Modes)
			continue
		}
		if m.MaxMean > 1.05 {
			t.Errorf("%s max/mean = %.2f, want ≤ 1.05: %v", mode, m.MaxMean, m.Pods)
		}
	}
}

func TestMaxMean(t *testing.T) {
	for _, tc := range []struct {
		counts map[string]int
		want   float64
	}{
		{map[string]int{"a": 300, "b": 0, "c": 0}, 3},
		{map[string]int{"a": 100, "b": 100, "c": 100}, 1},
		{map[string]int{"a": 105, "b": 100, "c": 95}, 1.05},
		{map[string]int{"a": 0, "b": 0}, 0},
		{nil, 0},
	} {
		if got := MaxMean(tc.counts); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("MaxMean(%v) = %v, want %v", tc.counts, got, tc.want)
		}
	}
}
